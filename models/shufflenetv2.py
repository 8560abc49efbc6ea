"""ShuffleNet V2 for CIFAR-100, after "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design" (Ma et al., 2018).

Reference: RepDistiller ``models/ShuffleNetv2.py`` and SimKD ``models/ShuffleNetv2.py``
(kuangliu's pytorch-cifar with a 1x1 stem). SimKD's file is RepDistiller's plus constructors for
other net sizes; we register ``ShuffleV2`` (net size 1) and SimKD's ``ShuffleV2_1_5``
(net size 1.5). Init: PyTorch's defaults (the reference has no custom init).

State-dict keys: ``conv1``, ``bn1``, ``layer<k>.0.{conv1..conv5,bn1..bn5}`` (DownBlock),
``layer<k>.<i>.{conv1,bn1,conv2,bn2,conv3,bn3}`` (BasicBlock, i >= 1), ``conv2``, ``bn2``,
``linear``.

Quirk kept from the reference: a stage's ``preact`` feature is ``cat([x1, bn3(...)])`` taken
*before* the channel shuffle, while its post-ReLU feature is taken after it, so the two have
their channels in a different order.

``get_bn_before_relu`` raises NotImplementedError, as in both references: a BasicBlock's last
ReLU only sees the half of the channels that went through its branch, and the output is then
shuffled, so no BatchNorm matches the stage output channel for channel.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model
from .shufflenetv1 import ShuffleBlock


class SplitBlock(nn.Module):
    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        c = int(x.size(1) * self.ratio)
        return x[:, :c], x[:, c:]


class BasicBlock(nn.Module):
    """Split the channels; pass one half through 1x1 -> 3x3 depthwise -> 1x1; concatenate and
    shuffle. With ``is_last`` it also returns the (unshuffled) tensor before the last ReLU."""

    def __init__(self, in_channels, split_ratio=0.5, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.split = SplitBlock(split_ratio)
        c = int(in_channels * split_ratio)
        self.conv1 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, kernel_size=3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x):
        x1, x2 = self.split(x)
        out = F.relu(self.bn1(self.conv1(x2)))
        out = self.bn2(self.conv2(out))
        pre = self.bn3(self.conv3(out))
        out = self.shuffle(torch.cat([x1, F.relu(pre)], 1))
        return (out, torch.cat([x1, pre], 1)) if self.is_last else out


class DownBlock(nn.Module):
    """Stride-2 unit: left = 3x3 dw (s2) -> 1x1; right = 1x1 -> 3x3 dw (s2) -> 1x1; concat,
    shuffle."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        mid = out_channels // 2
        # left
        self.conv1 = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=1,
                               groups=in_channels, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        # right
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid,
                               bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)
        self.shuffle = ShuffleBlock(groups=2)

    def forward(self, x):
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return self.shuffle(torch.cat([left, right], 1))


# net size -> stage widths (+ the final 1x1 conv's) and BasicBlocks per stage (reference table)
CONFIGS = {
    0.2: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 3, 3)},
    0.3: {"out_channels": (40, 80, 160, 512), "num_blocks": (3, 7, 3)},
    0.5: {"out_channels": (48, 96, 192, 1024), "num_blocks": (3, 7, 3)},
    1: {"out_channels": (116, 232, 464, 1024), "num_blocks": (3, 7, 3)},
    1.5: {"out_channels": (176, 352, 704, 1024), "num_blocks": (3, 7, 3)},
    2: {"out_channels": (224, 488, 976, 2048), "num_blocks": (3, 7, 3)},
}


class ShuffleNetV2(FeatureModel):
    """feats = [relu(bn1(conv1)) 24x32x32, layer1 Cx16x16, layer2 2Cx8x8, layer3 4Cx4x4,
    pooled (after conv2/bn2/ReLU)] for 32x32 inputs; C = 116 at net size 1, 176 at 1.5."""

    def __init__(self, net_size=1, num_classes=100):
        super().__init__()
        out_channels = CONFIGS[net_size]["out_channels"]
        num_blocks = CONFIGS[net_size]["num_blocks"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_channels = 24
        self.layer1 = self._make_layer(out_channels[0], num_blocks[0])
        self.layer2 = self._make_layer(out_channels[1], num_blocks[1])
        self.layer3 = self._make_layer(out_channels[2], num_blocks[2])
        self.conv2 = nn.Conv2d(out_channels[2], out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.avgpool = nn.AvgPool2d(4)
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _make_layer(self, out_channels, num_blocks):
        layers = [DownBlock(self.in_channels, out_channels)]
        layers += [BasicBlock(out_channels, is_last=(i == num_blocks - 1))
                   for i in range(num_blocks)]
        self.in_channels = out_channels
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        raise NotImplementedError(
            "ShuffleNetV2 has no single BN before its stage ReLUs (as in RepDistiller); "
            "choose another teacher for OFD/MGD margins")

    def get_classifier(self):
        return self.linear

    def forward(self, x, is_feat=False, preact=False):
        x = F.relu(self.bn1(self.conv1(x)))
        feats, pre_feats = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = layer(x)
            feats.append(x)
            pre_feats.append(pre)
        x = F.relu(self.bn2(self.conv2(x)))
        x = self.avgpool(x).flatten(1)
        feats.append(x)
        pre_feats.append(x)
        logits = self.linear(x)
        if is_feat:
            return (pre_feats if preact else feats), logits
        return logits


@register_model
def ShuffleV2(num_classes=100, **kwargs):
    """ShuffleNet V2, net size 1 (RepDistiller/SimKD ``ShuffleV2``)."""
    return ShuffleNetV2(net_size=1, num_classes=num_classes, **kwargs)


@register_model
def ShuffleV2_1_5(num_classes=100, **kwargs):
    """ShuffleNet V2, net size 1.5 (SimKD ``ShuffleV2_1_5``)."""
    return ShuffleNetV2(net_size=1.5, num_classes=num_classes, **kwargs)

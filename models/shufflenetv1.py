"""ShuffleNet V1 (groups 3) for CIFAR-100, after "ShuffleNet: An Extremely Efficient
Convolutional Neural Network for Mobile Devices" (Zhang et al., 2018).

Reference: RepDistiller ``models/ShuffleNetv1.py`` (kuangliu's pytorch-cifar with a 1x1 stem and
``is_last`` blocks that also return their pre-ReLU output). SimKD registers the same
``ShuffleV1``; its ``ShuffleNetv1.py`` source is not in the index we could read (only ``.pyc``),
so SemCKD's file by the same author (DefangChen/SemCKD, the code base SimKD grew from) stands in:
same modules, same forward, same features.

State-dict keys: ``conv1``, ``bn1``, ``layer<k>.<i>.{conv1,bn1,conv2,bn2,conv3,bn3}``, ``linear``.
Init: PyTorch's defaults (the reference has no custom init).

``get_bn_before_relu``: RepDistiller raises NotImplementedError and SemCKD returns
``layer1[-1].bn3`` three times (a copy-paste slip). We return ``layer<k>[-1].bn3`` for k = 1..3:
the BN whose output, plus the identity shortcut, enters the stage's last ReLU (the same
convention as RepDistiller's ResNets, whose BN also sits before the residual add).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model


class ShuffleBlock(nn.Module):
    """Channel shuffle: [N, g*C', H, W] -> view [N, g, C', H, W] -> swap g, C' -> flatten."""

    def __init__(self, groups):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        n, c, h, w = x.shape
        g = self.groups
        return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
    """Grouped 1x1 -> shuffle -> 3x3 depthwise -> grouped 1x1; the shortcut is added
    (stride 1) or concatenated after a 3x3 average pool (stride 2). With ``is_last`` it also
    returns the tensor before the final ReLU."""

    def __init__(self, in_planes, out_planes, stride, groups, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.stride = stride
        mid_planes = out_planes // 4
        g = 1 if in_planes == 24 else groups  # the first block after the stem is not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, 1, groups=g, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.shuffle1 = ShuffleBlock(groups=g)
        self.conv2 = nn.Conv2d(mid_planes, mid_planes, 3, stride=stride, padding=1,
                               groups=mid_planes, bias=False)
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 2:
            self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1))

    def forward(self, x):
        out = self.shuffle1(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        preact = torch.cat([out, res], 1) if self.stride == 2 else out + res
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ShuffleNet(FeatureModel):
    """feats = [relu(bn1(conv1)) 24x32x32, layer1 240x16x16, layer2 480x8x8, layer3 960x4x4,
    pooled 960-d] for 32x32 inputs (groups 3); ``preact`` gives the layers' pre-ReLU outputs."""

    def __init__(self, cfg, num_classes=100):
        super().__init__()
        out_planes, num_blocks, groups = cfg["out_planes"], cfg["num_blocks"], cfg["groups"]
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        self.in_planes = 24
        self.layer1 = self._make_layer(out_planes[0], num_blocks[0], groups)
        self.layer2 = self._make_layer(out_planes[1], num_blocks[1], groups)
        self.layer3 = self._make_layer(out_planes[2], num_blocks[2], groups)
        self.avgpool = nn.AvgPool2d(4)
        self.linear = nn.Linear(out_planes[2], num_classes)

    def _make_layer(self, out_planes, num_blocks, groups):
        layers = []
        for i in range(num_blocks):
            # The stride-2 first block concatenates its input, so it only adds the difference.
            cat_planes = self.in_planes if i == 0 else 0
            layers.append(Bottleneck(self.in_planes, out_planes - cat_planes,
                                     stride=2 if i == 0 else 1, groups=groups,
                                     is_last=(i == num_blocks - 1)))
            self.in_planes = out_planes
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        return [self.layer1[-1].bn3, self.layer2[-1].bn3, self.layer3[-1].bn3]

    def get_classifier(self):
        return self.linear

    def forward(self, x, is_feat=False, preact=False):
        x = F.relu(self.bn1(self.conv1(x)))
        feats, pre_feats = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):
            x, pre = layer(x)
            feats.append(x)
            pre_feats.append(pre)
        x = self.avgpool(x).flatten(1)
        feats.append(x)
        pre_feats.append(x)
        logits = self.linear(x)
        if is_feat:
            return (pre_feats if preact else feats), logits
        return logits


@register_model
def ShuffleV1(num_classes=100, **kwargs):
    """ShuffleNet V1, groups 3, widths 240/480/960, 4/8/4 blocks (RepDistiller ``ShuffleV1``)."""
    cfg = {"out_planes": [240, 480, 960], "num_blocks": [4, 8, 4], "groups": 3}
    return ShuffleNet(cfg, num_classes=num_classes, **kwargs)

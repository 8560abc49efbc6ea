"""ImageNet-style ResNets (He et al., CVPR 2016) adapted to 32x32 inputs (3x3 stem, no max-pool).

Reference: HobbitLong/RepDistiller ``models/resnetv2.py`` (modules ``conv1``, ``bn1``,
``layer1..4``, ``linear``; blocks with a ``shortcut`` Sequential that is empty for the
identity). A RepDistiller checkpoint ``{'model': state_dict}`` loads here with ``strict=True``.
Despite the file name this is the original post-activation ResNet, not the pre-activation
"ResNet v2". RepDistiller registers only ResNet50; ResNet18 and ResNet34 come from the same
file. (SimKD's ``ResNet18/34/50`` are torchvision's ImageNet models, a different thing.)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model


def _shortcut(in_planes, out_planes, stride):
    if stride == 1 and in_planes == out_planes:
        return nn.Sequential()  # identity, no parameters
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs. The last block of a stage returns ``(out, preact)``."""
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = self.make_shortcut(in_planes, self.expansion * planes, stride)

    @staticmethod
    def make_shortcut(in_planes, out_planes, stride):
        return _shortcut(in_planes, out_planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class Bottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convs, expansion 4. The last block of a stage returns
    ``(out, preact)``."""
    expansion = 4

    def __init__(self, in_planes, planes, stride=1, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, self.expansion * planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.expansion * planes)
        self.shortcut = _shortcut(in_planes, self.expansion * planes, stride)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        preact = self.bn3(self.conv3(out)) + self.shortcut(x)
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ResNet(FeatureModel):
    """Four stages (64, 128, 256, 512 planes; strides 1, 2, 2, 2) and a ``linear`` classifier.

    ``feats = [stem, layer1, layer2, layer3, layer4, pooled]``; ``preact=True`` takes the four
    stage outputs before their final ReLU.
    """

    def __init__(self, block, num_blocks, num_classes=100, zero_init_residual=False):
        super().__init__()
        self.in_planes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.layer1 = self._make_layer(block, 64, num_blocks[0], stride=1)
        self.layer2 = self._make_layer(block, 128, num_blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, num_blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, num_blocks[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        # Zero-init the last BN of each residual branch (Goyal et al. 2017), off by default.
        if zero_init_residual:
            for bn in self._last_bns(every_block=True):
                nn.init.constant_(bn.weight, 0)

    def _make_layer(self, block, planes, num_blocks, stride):
        layers = []
        for i in range(num_blocks):
            layers.append(block(self.in_planes, planes, stride if i == 0 else 1,
                                i == num_blocks - 1))
            self.in_planes = planes * block.expansion
        return nn.Sequential(*layers)

    def _last_bns(self, every_block=False):
        stages = (self.layer1, self.layer2, self.layer3, self.layer4)
        blocks = [b for s in stages for b in s] if every_block else [s[-1] for s in stages]
        return [b.bn3 if isinstance(b, Bottleneck) else b.bn2 for b in blocks]

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1,
                              self.layer1, self.layer2, self.layer3, self.layer4])

    def get_bn_before_relu(self):
        return self._last_bns()

    def get_classifier(self):
        return self.linear

    def forward(self, x, is_feat=False, preact=False):
        x = F.relu(self.bn1(self.conv1(x)))
        feats, preacts = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x, pre = layer(x)
            feats.append(x)
            preacts.append(pre)
        x = torch.flatten(self.avgpool(x), 1)
        logits = self.linear(x)
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [x], logits


@register_model
def ResNet18(num_classes=100, **kwargs):
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, **kwargs)


@register_model
def ResNet34(num_classes=100, **kwargs):
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes=num_classes, **kwargs)


@register_model
def ResNet50(num_classes=100, **kwargs):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes, **kwargs)

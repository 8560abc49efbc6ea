"""CIFAR ResNets (He et al., CVPR 2016) with RepDistiller's and SimKD's names and state-dict keys.

Reference: HobbitLong/RepDistiller ``models/resnet.py`` (features and ``preact``) and
DefangChen/SimKD ``models/resnet.py`` (the same modules and keys, plus the extra depths and
widths registered at the end of this file). A checkpoint ``{'model': state_dict}`` written by
either loads here with ``strict=True``.

Differences from the reference code, none of which changes a key or a value at 32x32:
- global pooling is ``AdaptiveAvgPool2d(1)`` (as SimKD) instead of RepDistiller's
  ``AvgPool2d(8)``, so other input sizes work too;
- only the BasicBlock variant is kept: no registered model uses the Bottleneck one.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model


def conv3x3(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU.

    The last block of a stage (``is_last``) returns ``(out, preact)``, ``preact`` being the
    sum before the final ReLU, as in RepDistiller.
    """
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, is_last=False):
        super().__init__()
        self.is_last = is_last
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        preact = self.bn2(self.conv2(out)) + identity
        out = F.relu(preact)
        return (out, preact) if self.is_last else out


class ResNet(FeatureModel):
    """Three stages of ``(depth - 2) / 6`` BasicBlocks with ``num_filters[1:]`` channels.

    ``feats = [stem, layer1, layer2, layer3, pooled]``; with ``preact=True`` the three stage
    outputs are taken before their final ReLU (the stem stays post-ReLU, as RepDistiller).
    """

    def __init__(self, depth, num_filters, num_classes=100):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth should be 6n+2 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.inplanes = num_filters[0]
        self.conv1 = nn.Conv2d(3, num_filters[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(num_filters[0])
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(num_filters[1], n)
        self.layer2 = self._make_layer(num_filters[2], n, stride=2)
        self.layer3 = self._make_layer(num_filters[3], n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(num_filters[3] * BasicBlock.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * BasicBlock.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * BasicBlock.expansion, kernel_size=1,
                          stride=stride, bias=False),
                nn.BatchNorm2d(planes * BasicBlock.expansion),
            )
        layers = [BasicBlock(self.inplanes, planes, stride, downsample, is_last=(blocks == 1))]
        self.inplanes = planes * BasicBlock.expansion
        for i in range(1, blocks):
            layers.append(BasicBlock(self.inplanes, planes, is_last=(i == blocks - 1)))
        return nn.Sequential(*layers)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu,
                              self.layer1, self.layer2, self.layer3])

    def get_bn_before_relu(self):
        return [self.layer1[-1].bn2, self.layer2[-1].bn2, self.layer3[-1].bn2]

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        x = self.relu(self.bn1(self.conv1(x)))  # 32x32
        feats, preacts = [x], [x]
        for layer in (self.layer1, self.layer2, self.layer3):  # 32x32, 16x16, 8x8
            x, pre = layer(x)
            feats.append(x)
            preacts.append(pre)
        x = torch.flatten(self.avgpool(x), 1)
        logits = self.get_classifier()(x)  # fc here; akamaster's family calls it linear
        if not is_feat:
            return logits
        return (preacts if preact else feats) + [x], logits


# name: (depth, num_filters). The first nine are RepDistiller's; the rest are SimKD's
# additions (SimKD trains "wrn_40_2" as resnet38x2, "wrn_16_2" as resnet14x2, and so on).
_CONFIGS = {
    'resnet8': (8, [16, 16, 32, 64]),
    'resnet14': (14, [16, 16, 32, 64]),
    'resnet20': (20, [16, 16, 32, 64]),
    'resnet32': (32, [16, 16, 32, 64]),
    'resnet44': (44, [16, 16, 32, 64]),
    'resnet56': (56, [16, 16, 32, 64]),
    'resnet110': (110, [16, 16, 32, 64]),
    'resnet8x4': (8, [32, 64, 128, 256]),
    'resnet32x4': (32, [32, 64, 128, 256]),
    # SimKD only
    'resnet38': (38, [16, 16, 32, 64]),
    'resnet116': (116, [16, 16, 32, 64]),
    'resnet200': (200, [16, 16, 32, 64]),
    'resnet14x2': (14, [16, 32, 64, 128]),
    'resnet38x2': (38, [16, 32, 64, 128]),
    'resnet110x2': (110, [16, 32, 64, 128]),
    'resnet14x4': (14, [32, 64, 128, 256]),
    'resnet20x4': (20, [32, 64, 128, 256]),
    'resnet26x4': (26, [32, 64, 128, 256]),
    'resnet38x4': (38, [32, 64, 128, 256]),
    'resnet44x4': (44, [32, 64, 128, 256]),
    'resnet56x4': (56, [32, 64, 128, 256]),
    'resnet110x4': (110, [32, 64, 128, 256]),
}


def _constructor(name, depth, num_filters):
    def build(num_classes=100, **kwargs):
        return ResNet(depth, num_filters, num_classes=num_classes, **kwargs)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet-{depth}, filters {num_filters} (RepDistiller/SimKD {name})."
    return register_model(build)


for _name, (_depth, _filters) in _CONFIGS.items():
    globals()[_name] = _constructor(_name, _depth, _filters)

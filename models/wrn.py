"""Wide ResNets (Zagoruyko & Komodakis, BMVC 2016) with RepDistiller's names and state-dict keys.

Reference: HobbitLong/RepDistiller ``models/wrn.py`` (modules ``conv1``, ``block1..3.layer.<i>``
with ``bn1/conv1/bn2/conv2/convShortcut``, then ``bn1`` and ``fc``). A RepDistiller checkpoint
``{'model': state_dict}`` loads here with ``strict=True``. (SimKD has no wrn.py: its "WRN"
teachers are ``resnet38x2`` etc. in ``models/resnet.py``, with different keys.)

The blocks are pre-activation (BN-ReLU-conv), so the stage outputs in ``feats`` are sums that
no ReLU has touched; ``preact=True`` gives them after the BN that follows (the first ``bn1`` of
the next stage, or the final ``bn1``), i.e. just before that ReLU, as RepDistiller does.
Differences from the reference code, none of which changes a key or a value:
- RepDistiller applies those BNs a second time to build the preact features, which updates
  their running statistics twice per step in training mode; here the forward pass hands the
  BN output it computes anyway to the next stage, so each BN runs once.
- pooling is adaptive (RepDistiller: ``avg_pool2d(out, 8)``), the same at 32x32.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3 plus the shortcut.

    When the channel count changes, the 1x1 ``convShortcut`` takes the pre-activated input;
    otherwise the shortcut is the raw input (exactly as the reference).
    """

    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()  # not in place: the caller may keep bn1's output as a feature
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride,
                               padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1,
                               padding=1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(
            in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)

    def forward(self, x, bn1_out=None):
        """``bn1_out``: ``self.bn1(x)`` if the caller has computed it already."""
        act = self.relu1(self.bn1(x) if bn1_out is None else bn1_out)
        shortcut = x if self.equalInOut else self.convShortcut(act)
        out = self.relu2(self.bn2(self.conv1(act)))
        if self.droprate > 0:
            out = F.dropout(out, p=self.droprate, training=self.training)
        return shortcut + self.conv2(out)


class NetworkBlock(nn.Module):
    """One stage: ``nb_layers`` blocks in ``self.layer``, the first one strided."""

    def __init__(self, nb_layers, in_planes, out_planes, block, stride, dropRate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[
            block(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                  dropRate)
            for i in range(nb_layers)])

    def forward(self, x, bn1_out=None):
        x = self.layer[0](x, bn1_out)
        for block in self.layer[1:]:
            x = block(x)
        return x


class WideResNet(FeatureModel):
    """WRN-depth-k: conv, three stages of ``(depth - 4) / 6`` blocks, BN-ReLU, pool, ``fc``.

    ``feats = [conv1, block1, block2, block3, pooled]``.
    """

    def __init__(self, depth, num_classes=100, widen_factor=1, dropRate=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"depth should be 6n+4 (16, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.block1 = NetworkBlock(n, channels[0], channels[1], BasicBlock, 1, dropRate)
        self.block2 = NetworkBlock(n, channels[1], channels[2], BasicBlock, 2, dropRate)
        self.block3 = NetworkBlock(n, channels[2], channels[3], BasicBlock, 2, dropRate)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.relu = nn.ReLU()  # not in place, see BasicBlock.relu1
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels[3], num_classes)
        self.nChannels = channels[3]

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.data.normal_(0, math.sqrt(2. / fan_out))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(1)
                m.bias.data.zero_()
            elif isinstance(m, nn.Linear):
                m.bias.data.zero_()

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.block1, self.block2, self.block3])

    def get_bn_before_relu(self):
        return [self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1]

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        f0 = self.conv1(x)
        f1 = self.block1(f0)
        p1 = self.block2.layer[0].bn1(f1)
        f2 = self.block2(f1, bn1_out=p1)
        p2 = self.block3.layer[0].bn1(f2)
        f3 = self.block3(f2, bn1_out=p2)
        p3 = self.bn1(f3)
        pooled = torch.flatten(self.avgpool(self.relu(p3)), 1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        stages = [p1, p2, p3] if preact else [f1, f2, f3]
        return [f0] + stages + [pooled], logits


@register_model
def wrn_16_1(num_classes=100, **kwargs):
    return WideResNet(depth=16, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model
def wrn_16_2(num_classes=100, **kwargs):
    return WideResNet(depth=16, widen_factor=2, num_classes=num_classes, **kwargs)


@register_model
def wrn_40_1(num_classes=100, **kwargs):
    return WideResNet(depth=40, widen_factor=1, num_classes=num_classes, **kwargs)


@register_model
def wrn_40_2(num_classes=100, **kwargs):
    return WideResNet(depth=40, widen_factor=2, num_classes=num_classes, **kwargs)

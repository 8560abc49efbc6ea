"""VGG with BatchNorm for CIFAR-100.

Reference: RepDistiller ``models/vgg.py`` (HobbitLong/RepDistiller) and SimKD ``models/vgg.py``
(DefangChen/SimKD), both from Wei Yang's CIFAR VGG. The three ImageNet FC layers are replaced by
one Linear, so "vgg8" has 6 conv layers + 1 FC. Both repositories map the names ``vgg8`` ..
``vgg19`` to the BN variants (``vgg8_bn`` ..); we register both spellings for the same model.

State-dict keys are the reference's (``block0.0.weight``, ``block0.1.running_mean``, ...,
``classifier.weight``): each ``block<i>`` is a Sequential of (Conv, BN, ReLU) triples whose last
ReLU is dropped and applied in ``forward`` instead, so the stage's last BN is ``block<i>[-1]``.

RepDistiller vs SimKD:
- SimKD's ``forward(x, is_feat=False)`` has no ``preact``; RepDistiller returns the outputs of
  ``block1..block4`` before their ReLU. We keep RepDistiller's (a superset; same values).
- SimKD's ``get_feat_modules()`` appends ``classifier`` (its SimKD/SRRL code takes the teacher
  classifier as ``get_feat_modules()[-1]``); we keep RepDistiller's list without it and expose
  the classifier through ``get_classifier()``.
- SimKD has no ``get_bn_before_relu``; we keep RepDistiller's.
None of these touch parameters: checkpoints of either load with ``strict=True``.
"""
import math

import torch.nn as nn
import torch.nn.functional as F

from .base import FeatureModel
from .registry import register_model

# Conv widths of block0..block4 (RepDistiller's cfg 'S', 'A', 'B', 'D', 'E').
CFGS = {
    8: [[64], [128], [256], [512], [512]],
    11: [[64], [128], [256, 256], [512, 512], [512, 512]],
    13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    16: [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4],
}


def _make_block(widths, in_channels, batch_norm):
    layers = []
    for width in widths:
        layers.append(nn.Conv2d(in_channels, width, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU(inplace=True))
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the last ReLU is applied in forward()


def init_weights(model):
    """RepDistiller's init: He-normal conv (fan-out), BN 1/0, Linear N(0, 0.01), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class VGG(FeatureModel):
    """CIFAR VGG: feats = [relu(block0), stage1..stage4 (after ReLU, or before with preact),
    pooled 512-d]. For 32x32 inputs the stages are 128x16x16, 256x8x8, 512x4x4, 512x4x4
    (``pool3`` is only used for 64x64 inputs, as in the reference)."""

    def __init__(self, cfg, batch_norm=True, num_classes=100):
        super().__init__()
        self.batch_norm = batch_norm
        in_channels = 3
        for i, widths in enumerate(cfg):
            setattr(self, f"block{i}", _make_block(widths, in_channels, batch_norm))
            in_channels = widths[-1]
        for i in range(4):
            setattr(self, f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.pool4 = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(512, num_classes)
        init_weights(self)

    def _blocks(self):
        return [getattr(self, f"block{i}") for i in range(5)]

    def get_feat_modules(self):
        pools = [self.pool0, self.pool1, self.pool2, self.pool3, self.pool4]
        return nn.ModuleList([m for pair in zip(self._blocks(), pools) for m in pair])

    def get_bn_before_relu(self):
        if not self.batch_norm:
            raise NotImplementedError("VGG without BatchNorm has no BN before its stage ReLUs")
        return [block[-1] for block in self._blocks()[1:]]

    def get_classifier(self):
        return self.classifier

    def get_global_pool(self):
        return self.pool4

    def forward(self, x, is_feat=False, preact=False):
        h = x.shape[2]
        x = F.relu(self.block0(x))
        feats, pre_feats = [x], [x]
        pools = [self.pool0, self.pool1, self.pool2, self.pool3]
        for i, block in enumerate(self._blocks()[1:]):
            if i < 3 or h == 64:
                x = pools[i](x)
            x = block(x)
            pre_feats.append(x)
            x = F.relu(x)
            feats.append(x)
        x = self.pool4(x).flatten(1)
        feats.append(x)
        pre_feats.append(x)
        logits = self.classifier(x)
        if is_feat:
            return (pre_feats if preact else feats), logits
        return logits


def _register(name, depth):
    def build(num_classes=100, **kwargs):
        return VGG(CFGS[depth], num_classes=num_classes, **kwargs)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"VGG-{depth} with BatchNorm (RepDistiller's vgg{depth}_bn)."
    return register_model(build)


for _depth in CFGS:  # vgg8 .. vgg19, and RepDistiller's spelling vgg8_bn .. vgg19_bn
    for _name in (f"vgg{_depth}", f"vgg{_depth}_bn"):
        globals()[_name] = _register(_name, _depth)

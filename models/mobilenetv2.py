"""MobileNetV2 for CIFAR-100 (the variant of "Knowledge Distillation via Route Constrained
Optimization" used by CRD).

Reference: RepDistiller ``models/mobilenetv2.py`` and SimKD ``models/mobilenetv2.py``.
Names: RepDistiller's ``mobile_half`` (expansion 6, width 0.5) is what SimKD's model_dict calls
``MobileNetV2``; SimKD's ``MobileNetV2_1_0`` is its ``mobile_half_double`` (width 1.0).

State-dict keys are the reference's: ``conv1.{0,1}``, ``blocks.<stage>.<block>.conv.<0..7>``,
``conv2.{0,1}``, ``classifier.0`` (a Sequential holding the Linear).

``preact``: neither reference has a pre-activation variant (it accepts and ignores the flag).
The stage outputs end with a BN (and the residual add), never with a ReLU, so they are already
pre-activation; ``preact=True`` returns the same list as ``preact=False``.

RepDistiller vs SimKD: identical architecture and forward; SimKD drops ``get_bn_before_relu``
(we keep RepDistiller's) and both ``print(T, width_mult)`` in the constructor (we don't).
"""
import torch.nn as nn

from .base import FeatureModel
from .registry import register_model
from .vgg import init_weights

# Stages end after these entries of ``blocks``: feats are taken there (RepDistiller).
STAGE_ENDS = (1, 2, 4, 6)


def _conv_bn_relu(inp, oup, kernel_size, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel_size, stride, kernel_size // 2, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 linear projection, with identity shortcut when the
    shape is kept."""

    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        assert stride in (1, 2)
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(FeatureModel):
    """feats = [conv1 (stem), blocks[1], blocks[2], blocks[4], blocks[6], pooled 1280-d].

    For 32x32 inputs and width 0.5 the shapes are 16x16x16, 12x16x16, 16x8x8, 48x4x4, 160x2x2.
    """

    # t (expansion; None = the model's), c (channels at width 1), n (blocks), s (first stride)
    SETTING = [(1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
               (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1)]

    def __init__(self, expansion=6, width_mult=1.0, num_classes=100, input_size=32,
                 remove_avg=False):
        super().__init__()
        assert input_size % 32 == 0
        self.remove_avg = remove_avg
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTING:
            out = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out, s if i == 0 else 1, t or expansion))
                channels = out
            self.blocks.append(nn.Sequential(*layers))
        self.last_channel = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, self.last_channel, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        self.avgpool = nn.AvgPool2d(input_size // 16, ceil_mode=True)
        init_weights(self)

    def get_bn_before_relu(self):
        return [self.blocks[i][-1].conv[-1] for i in STAGE_ENDS]

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.blocks])

    def get_classifier(self):
        return self.classifier[0]

    def forward(self, x, is_feat=False, preact=False):
        x = self.conv1(x)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in STAGE_ENDS:
                feats.append(x)
        x = self.conv2(x)
        if not self.remove_avg:
            x = self.avgpool(x)
        x = x.flatten(1)
        feats.append(x)
        logits = self.classifier(x)
        return (feats, logits) if is_feat else logits


@register_model
def mobile_half(num_classes=100, **kwargs):
    """MobileNetV2, expansion 6, width 0.5 (RepDistiller/SimKD ``mobile_half``)."""
    return MobileNetV2(6, 0.5, num_classes=num_classes, **kwargs)


def mobile_half_simkd(num_classes=100, **kwargs):
    """SimKD's ``MobileNetV2``: the same model as ``mobile_half``."""
    return mobile_half(num_classes, **kwargs)


def mobile_half_double(num_classes=100, **kwargs):
    """SimKD's ``MobileNetV2_1_0`` (``mobile_half_double``): expansion 6, width 1.0."""
    return MobileNetV2(6, 1.0, num_classes=num_classes, **kwargs)


# SimKD's names would shadow the class, so they are set here rather than by ``def``.
for _fn, _name in [(mobile_half_simkd, "MobileNetV2"), (mobile_half_double, "MobileNetV2_1_0")]:
    _fn.__name__ = _name
    register_model(_fn)

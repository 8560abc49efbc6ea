"""The CIFAR-10 ResNets of Yerlan Idelbayev's pytorch_resnet_cifar10 ("akamaster"), He et al.'s
original CIFAR design: option-A shortcuts (stride-2 subsampling and zero-padded channels, no
parameters), 16/32/64 channels, ResNet-20/32/44/56/110/1202 with 0.27M/0.46M/0.66M/0.85M/
1.7M/19.4M parameters.

Reference: akamaster/pytorch_resnet_cifar10 ``resnet.py``; our own code with its module names,
so its state-dict keys (``conv1``, ``bn1``, ``layer1-3.<i>.conv1/bn1/conv2/bn2``, ``linear``)
load with ``strict=True``. Its published ``.th`` files are ``{'state_dict': ..., 'best_prec1':
...}`` saved through ``DataParallel`` (every key prefixed ``module.``):
``helper.core.files.state_dict_of`` takes the weights out of one.

Registered as ``resnet20_akamaster`` ... ``resnet1202_akamaster``: RepDistiller's ``resnet20``
etc. are another design (1x1-convolution shortcuts, ``fc``), with other keys and counts.

Preprocessing differs from ours: akamaster's trainer.py normalises CIFAR-10 with ImageNet's
mean and std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225) (``AKAMASTER_MEAN``/``AKAMASTER_STD``),
where ``dataset/cifar.py`` uses (0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761). Its files,
fetched (``python -m helper.teachers fetch --release akamaster``) or registered, record that
normalisation, and as a teacher or under ``--evaluate`` they are fed inputs mapped to it
(``helper/teachers/normalization.py``), so they score their published accuracy on our loaders. These
models trained here use our normalisation, as every run does.

Differences from the reference, none of which changes a key or a value at 32x32: pooling is
``AdaptiveAvgPool2d(1)`` (theirs pools over the last spatial size), and the last block of each
stage also returns its pre-activation sum (the feature API of ``models/base.py``).
"""
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.init as init

from . import resnetv2
from .base import FeatureModel
from .resnet import ResNet
from .registry import register_model

AKAMASTER_MEAN = (0.485, 0.456, 0.406)
AKAMASTER_STD = (0.229, 0.224, 0.225)


class ZeroPadShortcut(nn.Module):
    """Option A: every other pixel, the new channels zero-padded half before and half after
    (``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))``). No parameters."""

    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    def extra_repr(self):
        return f"pad={self.pad}"


class BasicBlock(resnetv2.BasicBlock):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU (the last block of a stage returns
    ``(out, preact)``): ``models/resnetv2.py``'s block with option A's parameter-free
    shortcut where the shape changes."""

    @staticmethod
    def make_shortcut(in_planes, out_planes, stride):
        if stride != 1 or in_planes != out_planes:
            return ZeroPadShortcut(out_planes)
        return nn.Sequential()


class AkamasterResNet(ResNet):
    """Three stages of ``n`` blocks with 16, 32 and 64 channels; depth ``6n + 2``.

    ``feats = [stem, layer1, layer2, layer3, pooled]``; with ``preact=True`` the stage outputs
    are taken before their final ReLU (the stem stays post-ReLU): the feature API, forward and
    stage modules of our CIFAR ``ResNet``, whose layout it shares (its own blocks, shortcuts,
    initialisation and classifier name).
    """

    def __init__(self, depth, num_classes=10):
        FeatureModel.__init__(self)  # not ResNet's: the modules differ
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth should be 6n+2 (20, 32, 44, 56, 110, 1202), got {depth}")
        n = (depth - 2) // 6
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(16, n, stride=1)
        self.layer2 = self._make_layer(32, n, stride=2)
        self.layer3 = self._make_layer(64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():  # akamaster's _weights_init
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                init.kaiming_normal_(m.weight)

    def _make_layer(self, planes, blocks, stride):
        layers = []
        for i, s in enumerate([stride] + [1] * (blocks - 1)):
            layers.append(BasicBlock(self.in_planes, planes, s, is_last=(i == blocks - 1)))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def get_classifier(self):
        return self.linear


# name: depth, and the parameter count of akamaster's README (10 classes)
DEPTHS = {"resnet20_akamaster": 20, "resnet32_akamaster": 32, "resnet44_akamaster": 44,
          "resnet56_akamaster": 56, "resnet110_akamaster": 110, "resnet1202_akamaster": 1202}


def _constructor(name, depth):
    def build(num_classes=10):
        return AkamasterResNet(depth, num_classes=num_classes)
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"akamaster's CIFAR ResNet-{depth} (option-A shortcuts)."
    return register_model(build)


for _name, _depth in DEPTHS.items():
    globals()[_name] = _constructor(_name, _depth)

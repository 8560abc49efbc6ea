"""ImageNet models: torchvision's own ResNets, Wide ResNet, MobileNetV2 and ShuffleNetV2,
wrapped to the feature API, plus MobileNet-V1 (MGD's ImageNet student).

The torchvision models are *subclasses* of torchvision's classes (``ResNet(FeatureModel,
torchvision.models.ResNet)``, ...), built with the same arguments as torchvision's builders:
same modules, same attribute names, same initialisation. So the state-dict keys are exactly
torchvision's, a torchvision weight file (``resnet18-f37072fd.pth``, or
``torchvision.models.resnet18(num_classes=10).state_dict()``) loads with ``strict=True``, and
``model(x)`` runs torchvision's own ``_forward_impl`` (identical logits). Only
``is_feat=True`` runs our code, which calls the same modules in the same order and slices
the network into stages; ``isinstance(model, torchvision.models.ResNet)`` holds.

Registered names (lowercase, torchvision's; the CIFAR ``ResNet18/34/50`` of ``resnetv2.py``
are other models): ``resnet18``, ``resnet34``, ``resnet50``, ``wide_resnet50_2``,
``mobilenet_v2``, ``shufflenet_v2_x1_0``, ``mobilenet_v1``. Constructors take
``num_classes`` (default 1000) and ``pretrained``: None, a path to a weight file (a bare
state dict as torchvision writes, or a checkpoint holding one under 'model'), or the name of
one of torchvision's weight enums for that model ("IMAGENET1K_V1", "IMAGENET1K_V2",
"DEFAULT"; downloaded into torch's hub cache when online, read from there when cached).

Features (``feats = [stem, stage_1, ..., stage_n, pooled]``) for a 3x224x224 input:

ResNet-18/34 (C = 1) and ResNet-50 / Wide ResNet-50-2 (C = 4):
    stem = maxpool(relu(bn1(conv1(x)))) 64x56x56, layer1 64Cx56x56, layer2 128Cx28x28,
    layer3 256Cx14x14, layer4 512Cx7x7, pooled 512C. This is SimKD's ``resnet_imagenet.py``
    (``f0`` after the max-pool). mdistiller's ImageNet ResNet instead takes its stem before
    the max-pool (bn1 output, 64x112x112) and returns only ``[stem, layer1..4]`` without
    the pooled vector inside ``feats``.
    ``preact=True``: each stage's output before the last block's final ReLU, i.e.
    ``bn2(...) + identity`` (BasicBlock) or ``bn3(...) + identity`` (Bottleneck), as
    mdistiller's ``preact_feats``. It is computed by running the last block's own modules
    one by one (its ``forward`` is not called, so forward hooks on that block do not fire
    in this mode); the module structure is untouched. The stem entry is the same in both
    lists (post-ReLU, as the CIFAR models).
    ``get_bn_before_relu()``: ``layer<k>[-1].bn2`` (BasicBlock) / ``.bn3`` (Bottleneck) for
    k = 1..4, one per stage; mdistiller returns only layers 2..4 (it comments layer1 out).

MobileNetV2 (``features`` has 19 entries): SimKD's split ``[0, 1, 4, 7, 14, 18]``:
    stem = features[0] 32x112x112, features[1:4] 24x56x56, features[4:7] 32x28x28,
    features[7:14] 96x14x14, features[14:18] 320x7x7, pooled 1280 (after the 1x1 conv
    ``features[18]`` and the average pool). Stages end with a BatchNorm (and a residual
    add), never with a ReLU: ``preact=True`` returns the same list.
    ``get_bn_before_relu()``: the last BN of each stage's last block
    (``features[3|6|13|17].conv[-1]``), as RepDistiller's CIFAR MobileNetV2.
    ``get_classifier()`` is the Linear ``classifier[1]``; torchvision's classifier is
    ``Sequential(Dropout(0.2), Linear)``, so ``get_classifier()(pooled)`` equals the logits
    in eval mode.

ShuffleNetV2 x1.0: stem = maxpool(conv1(x)) 24x56x56, stage2 116x28x28, stage3 232x14x14,
    stage4 464x7x7, pooled 1024 (after ``conv5`` and the global mean). SimKD's copy
    (``shuffleNetv2_imagenet.py``) instead reports ``conv5(stage4)`` (1024x7x7) as its last
    map and has no stage4 entry (and it deletes ``conv5`` from ``__init__`` while its forward
    still uses it, so it does not run as published); we keep stage4, as the CIFAR ShuffleV2
    and MobileNetV2 above keep their last stage apart from the 1x1 head.
    ``preact=True``: the last block of a stage (stride 1) computes
    ``shuffle(cat(x1, relu(branch2'(x2))))``; its preact is ``shuffle(cat(x1, branch2'(x2)))``
    with the final ReLU of ``branch2`` left out. ``x1`` is already non-negative, so
    ``relu(preact) == feats`` exactly.
    ``get_bn_before_relu()`` raises NotImplementedError, as for the CIFAR ShuffleV2: the last
    BN sees half of the channels, which are then shuffled.

MobileNet-V1 (not in torchvision): the common PyTorch MobileNet used by MGD's ImageNet table
    (ResNet-50 -> MobileNet-V1) and mdistiller (``mdistiller/models/imagenet/mobilenetv1.py``):
    ``model`` = Sequential(conv_bn(3, 32, 2), 13 x conv_dw, pool), ``fc`` Linear(1024, C);
    state-dict keys ``model.<i>.<j>.*`` and ``fc.*`` as theirs, 4.23M parameters at 1000
    classes. The pool is ``AdaptiveAvgPool2d(1)`` instead of their ``AvgPool2d(7)`` (same
    result at 224, no parameters, works at other sizes).
    feats: stem = model[0] 32x112x112, model[1:4] 128x56x56, model[4:6] 256x28x28,
    model[6:12] 512x14x14, model[12:14] 1024x7x7, pooled 1024 -- mdistiller's four stages
    plus our stem and pooled. ``preact=True``: the last conv_dw of each stage without its
    final ReLU (mdistiller's ``preact_feats``). ``get_bn_before_relu()``: mdistiller's
    ``model[3|5|11|13][-2]``.
"""
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import mobilenetv2 as tv_mobilenetv2
from torchvision.models import resnet as tv_resnet
from torchvision.models import shufflenetv2 as tv_shufflenetv2

from helper.core.errors import UserError
from helper.core.files import load_file, load_weights, state_dict_of

from .base import FeatureModel
from .registry import register_model

IMAGENET_INPUT = (3, 224, 224)


# ----------------------------------------------------------------------------------------------
# ResNet / Wide ResNet

def _resnet_last_block(block, x):
    """``(out, preact)`` of a torchvision BasicBlock/Bottleneck: the same modules in the same
    order as its ``forward``, keeping the sum before the final ReLU."""
    identity = x
    if isinstance(block, tv_resnet.Bottleneck):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.relu(block.bn2(block.conv2(out)))
        out = block.bn3(block.conv3(out))
    elif isinstance(block, tv_resnet.BasicBlock):
        out = block.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
    else:
        raise TypeError(f"preact needs a torchvision BasicBlock or Bottleneck, "
                        f"got {type(block).__name__}")
    if block.downsample is not None:
        identity = block.downsample(x)
    pre = out + identity
    return F.relu(pre), pre


class ResNet(FeatureModel, tv_resnet.ResNet):
    """torchvision's ResNet (and Wide ResNet) with the feature API; see the module docstring."""

    input_size = IMAGENET_INPUT

    def __init__(self, block, layers, num_classes=1000, **kwargs):
        tv_resnet.ResNet.__init__(self, block, layers, num_classes=num_classes, **kwargs)

    def _stages(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.bn1, self.relu, self.maxpool, *self._stages()])

    def get_bn_before_relu(self):
        last = [layer[-1] for layer in self._stages()]
        return [b.bn3 if isinstance(b, tv_resnet.Bottleneck) else b.bn2 for b in last]

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._forward_impl(x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats, pres = [x], [x]
        for layer in self._stages():
            if preact:
                for block in list(layer)[:-1]:
                    x = block(x)
                x, pre = _resnet_last_block(layer[-1], x)
            else:
                x = pre = layer(x)
            feats.append(x)
            pres.append(pre)
        pooled = torch.flatten(self.avgpool(x), 1)
        logits = self.fc(pooled)
        return (pres if preact else feats) + [pooled], logits


# ----------------------------------------------------------------------------------------------
# MobileNetV2

class MobileNetV2(FeatureModel, tv_mobilenetv2.MobileNetV2):
    """torchvision's MobileNetV2 with the feature API; see the module docstring."""

    input_size = IMAGENET_INPUT
    SPLITS = (0, 1, 4, 7, 14, 18)  # SimKD's: stem = features[0:1], stages between, head after

    def __init__(self, num_classes=1000, **kwargs):
        tv_mobilenetv2.MobileNetV2.__init__(self, num_classes=num_classes, **kwargs)
        if len(self.features) != self.SPLITS[-1] + 1:
            raise ValueError("the stage split assumes torchvision's default "
                             "inverted_residual_setting")

    def get_feat_modules(self):
        return nn.ModuleList(list(self.features))

    def get_bn_before_relu(self):
        return [self.features[end - 1].conv[-1] for end in self.SPLITS[2:]]

    def get_classifier(self):
        return self.classifier[-1]

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._forward_impl(x)
        feats = []
        for start, end in zip(self.SPLITS, self.SPLITS[1:]):
            for module in self.features[start:end]:
                x = module(x)
            feats.append(x)
        for module in self.features[self.SPLITS[-1]:]:
            x = module(x)
        pooled = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
        logits = self.classifier(pooled)
        return feats + [pooled], logits


# ----------------------------------------------------------------------------------------------
# ShuffleNetV2

def _shuffle_last_block(block, x):
    """``(out, preact)`` of a stride-1 torchvision ShuffleNetV2 block, preact without the
    final ReLU of ``branch2``."""
    if block.stride != 1:
        raise ValueError("the last block of a ShuffleNetV2 stage has stride 1")
    x1, x2 = x.chunk(2, dim=1)
    branch = x2
    for module in list(block.branch2)[:-1]:  # branch2 ends with ReLU(inplace=True)
        branch = module(branch)
    pre = tv_shufflenetv2.channel_shuffle(torch.cat((x1, branch), dim=1), 2)
    return F.relu(pre), pre


class ShuffleNetV2(FeatureModel, tv_shufflenetv2.ShuffleNetV2):
    """torchvision's ShuffleNetV2 with the feature API; see the module docstring."""

    input_size = IMAGENET_INPUT

    def __init__(self, stages_repeats, stages_out_channels, num_classes=1000, **kwargs):
        tv_shufflenetv2.ShuffleNetV2.__init__(self, stages_repeats, stages_out_channels,
                                              num_classes=num_classes, **kwargs)

    def _stages(self):
        return (self.stage2, self.stage3, self.stage4)

    def get_feat_modules(self):
        return nn.ModuleList([self.conv1, self.maxpool, *self._stages(), self.conv5])

    def get_bn_before_relu(self):
        raise NotImplementedError(
            "ShuffleNetV2 has no single BN before its stage ReLUs (its last BN sees half of the "
            "channels, which are then shuffled); choose another teacher for OFD/MGD margins")

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        if not is_feat:
            return self._forward_impl(x)
        x = self.maxpool(self.conv1(x))
        feats, pres = [x], [x]
        for stage in self._stages():
            if preact:
                for block in list(stage)[:-1]:
                    x = block(x)
                x, pre = _shuffle_last_block(stage[-1], x)
            else:
                x = pre = stage(x)
            feats.append(x)
            pres.append(pre)
        pooled = self.conv5(x).mean([2, 3])
        logits = self.fc(pooled)
        return (pres if preact else feats) + [pooled], logits


# ----------------------------------------------------------------------------------------------
# MobileNet-V1

def _conv_bn(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, oup, 3, stride, 1, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


def _conv_dw(inp, oup, stride):
    return nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.ReLU(inplace=True),
        nn.Conv2d(inp, oup, 1, 1, 0, bias=False),
        nn.BatchNorm2d(oup),
        nn.ReLU(inplace=True),
    )


class MobileNetV1(FeatureModel):
    """MobileNet-V1 with MGD's / mdistiller's module names; see the module docstring."""

    input_size = IMAGENET_INPUT
    SPLITS = (0, 1, 4, 6, 12, 14)  # stem = model[0:1]; stages end after model[3], 5, 11, 13
    # (in, out, stride) of the 13 depthwise-separable blocks
    BLOCKS = ((32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
              (256, 512, 2), (512, 512, 1), (512, 512, 1), (512, 512, 1), (512, 512, 1),
              (512, 512, 1), (512, 1024, 2), (1024, 1024, 1))

    def __init__(self, num_classes=1000):
        super().__init__()
        self.model = nn.Sequential(
            _conv_bn(3, 32, 2),
            *[_conv_dw(i, o, s) for i, o, s in self.BLOCKS],
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(1024, num_classes)

    def get_feat_modules(self):
        return nn.ModuleList(list(self.model)[:-1])

    def get_bn_before_relu(self):
        return [self.model[end - 1][-2] for end in self.SPLITS[2:]]

    def get_classifier(self):
        return self.fc

    def forward(self, x, is_feat=False, preact=False):
        x = self.model[0](x)
        feats, pres = [x], [x]
        for start, end in zip(self.SPLITS[1:], self.SPLITS[2:]):
            for module in self.model[start:end - 1]:
                x = module(x)
            last = self.model[end - 1]
            pre = last[:-1](x)          # conv_dw without its final ReLU
            x = F.relu(pre)
            feats.append(x)
            pres.append(pre)
        pooled = torch.flatten(self.model[-1](x), 1)
        logits = self.fc(pooled)
        if not is_feat:
            return logits
        return (pres if preact else feats) + [pooled], logits


# ----------------------------------------------------------------------------------------------
# Pretrained weights and registration

def _looks_like_path(text):
    return (Path(text).suffix.lower() in ('.pth', '.pt', '.bin', '.tar', '.ckpt')
            or '/' in text or '\\' in text or Path(text).expanduser().exists())


def load_pretrained(model, name, pretrained):
    """Load ``pretrained`` (a file path or a torchvision weight enum name) into ``model``."""
    if pretrained is None or pretrained is False:
        return model
    text = 'DEFAULT' if pretrained is True else str(pretrained)
    if _looks_like_path(text):
        path = Path(text).expanduser()
        state = state_dict_of(load_file(path, "pretrained weights"), path, "pretrained weights")
        load_weights(model, state, f"pretrained weights {path}",
                     name=f"{name} with {model.get_classifier().out_features} classes")
        return model

    import torchvision.models
    try:
        enum = torchvision.models.get_model_weights(name)
    except ValueError:
        raise UserError(f"torchvision has no weights for {name}; pass pretrained=PATH to a weight "
                        f"file instead of {text!r}") from None
    key = text.split('.')[-1]  # also accept "ResNet18_Weights.IMAGENET1K_V1"
    try:
        weights = enum[key]
    except KeyError:
        choices = ', '.join(['DEFAULT'] + [w.name for w in enum])
        raise UserError(f"pretrained {text!r} is neither an existing file nor a torchvision weight "
                        f"of {name} (choose one of: {choices})") from None
    classes = len(weights.meta.get('categories') or [])
    out = model.get_classifier().out_features
    if classes and classes != out:
        raise UserError(f"torchvision's {name} {weights.name} weights have {classes} classes, the "
                        f"model has {out}; build it with num_classes={classes}")
    try:
        state = weights.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # URLError, HTTPError, socket timeouts, hash mismatch, ...
        raise UserError(f"cannot download {weights.url} for {name} ({type(e).__name__}: {e}); "
                        f"offline? fetch the file elsewhere and pass its path as the pretrained "
                        f"weights, or put it in {torch.hub.get_dir()}/checkpoints") from e
    model.load_state_dict(state, strict=True)
    return model


def _register(name, build_fn, doc):
    def constructor(num_classes=1000, pretrained=None, **kwargs):
        model = build_fn(num_classes=num_classes, **kwargs)
        return load_pretrained(model, name, pretrained)
    constructor.__name__ = constructor.__qualname__ = name
    constructor.__doc__ = doc
    return register_model(constructor)


resnet18 = _register(
    'resnet18', lambda **kw: ResNet(tv_resnet.BasicBlock, [2, 2, 2, 2], **kw),
    "torchvision ResNet-18 (ImageNet, 11.7M parameters at 1000 classes).")
resnet34 = _register(
    'resnet34', lambda **kw: ResNet(tv_resnet.BasicBlock, [3, 4, 6, 3], **kw),
    "torchvision ResNet-34 (ImageNet, 21.8M parameters at 1000 classes).")
resnet50 = _register(
    'resnet50', lambda **kw: ResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], **kw),
    "torchvision ResNet-50 (ImageNet, 25.6M parameters at 1000 classes).")
wide_resnet50_2 = _register(
    'wide_resnet50_2',
    lambda **kw: ResNet(tv_resnet.Bottleneck, [3, 4, 6, 3], width_per_group=64 * 2, **kw),
    "torchvision Wide ResNet-50-2 (ImageNet, 68.9M parameters at 1000 classes).")
mobilenet_v2 = _register(
    'mobilenet_v2', lambda **kw: MobileNetV2(**kw),
    "torchvision MobileNetV2 (ImageNet, 3.5M parameters at 1000 classes).")
shufflenet_v2_x1_0 = _register(
    'shufflenet_v2_x1_0', lambda **kw: ShuffleNetV2([4, 8, 4], [24, 116, 232, 464, 1024], **kw),
    "torchvision ShuffleNetV2 x1.0 (ImageNet, 2.3M parameters at 1000 classes).")
mobilenet_v1 = _register(
    'mobilenet_v1', lambda **kw: MobileNetV1(**kw),
    "MobileNet-V1 as in MGD / mdistiller (ImageNet, 4.2M parameters at 1000 classes).")

"""Guo et al. 2023, "Class Attention Transfer Based Knowledge Distillation" (CVPR)."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from models.base import FeatureModel, evaluating

from .base import Distiller, Reads, Weights
from .common import model_name
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def class_activation_maps(feature_map: torch.Tensor, weight: torch.Tensor, size: int):
    """The class activation maps ``W f(x, y)`` (no bias) of a classifier with ``weight``
    (K, C) over a map (B, C, H, W), average-pooled to ``size`` x ``size``: (B, K, size, size).
    The pooling comes first, which is the same by linearity and cheaper."""
    pooled = F.adaptive_avg_pool2d(feature_map, size)
    return torch.einsum("kc,bchw->bkhw", weight, pooled)


def cat_loss(cam_s: torch.Tensor, cam_t: torch.Tensor, normalize: bool = False):
    """Mean squared error of the two pooled CAMs, each map L2-normalised over its positions
    first when ``normalize`` (the reference's ``IF_NORMALIZE``)."""
    if normalize:
        cam_s, cam_t = F.normalize(cam_s, dim=(2, 3)), F.normalize(cam_t, dim=(2, 3))
    return F.mse_loss(cam_s, cam_t)


class _PooledMap:
    """Keeps the input of a model's global pooling (``get_global_pool()``) on each forward:
    the map its classifier averages. Every ``FeatureModel`` inside ``model`` is hooked, so a
    wrapper that runs a copy of the model (``--teacher_forward``'s folded teacher) is seen."""

    def __init__(self, model, method):
        pools = {}
        for m in model.modules():
            if isinstance(m, FeatureModel):
                try:
                    pool = m.get_global_pool()
                except NotImplementedError as e:
                    raise UserError(f"--distill {method} takes the map before "
                                    f"{model_name(model)}'s global pooling, which it does not "
                                    f"name ({e}); choose a model of the CIFAR or ImageNet zoo"
                                    ) from e
                pools[id(pool)] = pool
        if not pools:
            raise UserError(f"--distill {method} takes the map before the global pooling of "
                            f"a zoo model; {model_name(model)} is not one; choose a zoo model")
        self.map = None
        self.handles = [pool.register_forward_pre_hook(self._keep) for pool in pools.values()]

    def _keep(self, module, inputs):
        self.map = inputs[0]

    def take(self):
        value, self.map = self.map, None
        return value


@register_distiller("catkd", "cat_kd")
class CATKD(Distiller):
    """CAT-KD: Guo, Wang, Song, Wang, Liu, Wang & Shen 2023, "Class Attention Transfer Based
    Knowledge Distillation" (CVPR). Reference code: GzyAftermath/CAT-KD (built on mdistiller):
    ``mdistiller/distillers/CAT_KD.py`` (``CAT_loss``, ``_Normalize``), ``tools/train.py``
    (the ``if_test`` conversion of the classifiers), the ``*_test`` models in
    ``mdistiller/models/cifar/`` and ``configs/cifar100/CAT_KD/*.yaml``.

    A class activation map (CAM) of class k is the classifier's weight row k applied at every
    position of the map the classifier's input is pooled from (the input of the model's
    ``get_global_pool()``). Teacher's and student's CAMs are average-pooled to
    ``r x r`` (``--catkd_resolution``), optionally L2-normalised per map
    (``--catkd_normalize``), and compared by mean squared error:
    ``cls * CE + div * KD + beta * MSE(CAM_s, CAM_t)``.

    The reference converts both classifiers to bias-free 1x1 convs applied before the pooling
    (``conv_test``; the teacher's takes its ``fc`` weight, dropping the bias), so the student's
    logits are the pooled CAMs. Here the student keeps its linear classifier, whose
    ``W mean(map) + b`` is that pooled CAM when ``b = 0``: the bias is zeroed and frozen
    (a ``--pretrained`` bias too); ``--catkd_fc_bias`` keeps a trained bias instead. The CAMs
    use the weights only, as the reference.

    Defaults: the resnet32x4 -> resnet8x4 config, ``-c 1 -d 0 -b 15 --catkd_resolution 2``,
    not normalised (``CE_WEIGHT 1``, ``CAT_loss_weight 15``, ``CAM_RESOLUTION 2``,
    ``IF_NORMALIZE False``, ``onlyCAT False``). The other CIFAR-100 configs (``-b``,
    ``--catkd_resolution``, normalised or not): resnet56 -> resnet20 0.7, 2, no;
    resnet110 -> resnet32 1.8, 2, no; wrn_40_2 -> wrn_16_2 12, 2, no; wrn_40_2 -> wrn_40_1
    1.5, 2, no; vgg13 -> vgg8 4.5, 2, no; vgg13 -> MobileNetV2 15, 2, yes; ResNet50 ->
    MobileNetV2 40, 2, yes; resnet32x4 -> ShuffleV1 600, 4, yes; resnet32x4 -> ShuffleV2
    600, 4, yes; wrn_40_2 -> ShuffleV1 80, 4, yes. (``mdistiller/engine/cfg.py``'s own
    defaults, 400 and normalised, are no config's.) CAT alone (the paper's "CAT", reference
    ``onlyCAT True``) is ``-c 0``.

    Differences from the reference code:
      - The reference's teacher logits (``conv_test`` then pooling) lack the classifier's
        bias; they only feed its partial-CAM ablation there. A KD term added here with ``-d``
        uses the teacher's true logits.
      - The reference's ablations (``IF_BINARIZE``, ``IF_OnlyTransferPartialCAMs``) are not
        offered.
    """

    reference = Reference(
        label="CAT-KD",
        row=29,
        paper="Guo et al. 2023 (CVPR)",
        code="GzyAftermath/CAT-KD `mdistiller/distillers/CAT_KD.py`",
        shown=("catkd_resolution",),
        notes="class activation maps of the map each classifier pools, pooled to 2x2, MSE; the "
              "student's classifier bias held at 0 as the official bias-free conv "
              "(`--catkd_fc_bias` keeps it); per-pair settings below",
    )

    reads = Reads("logits", "logits", teacher_beyond="hooks")  # the maps through hooks
    default_weights = Weights(cls=1.0, div=0.0, beta=15.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        catkd_resolution: int = option(
            2, "side of the pooled class activation maps (configs: 2, or 4 for ShuffleNet "
            "students)", "--catkd-resolution")
        catkd_normalize: bool = option(
            False, "L2-normalise each pooled map before the MSE (configs: on for MobileNetV2 "
            "and ShuffleNet students)", "--catkd-normalize")
        catkd_fc_bias: bool = option(
            False, "keep training the student classifier's bias (reference: a bias-free "
            "classifier, the bias held at 0)", "--catkd-fc-bias")

        def check(self):
            require(self.catkd_resolution >= 1,
                    f"--catkd_resolution must be 1 or more, got {self.catkd_resolution}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.size = int(self.options.catkd_resolution)
        self.normalize = bool(self.options.catkd_normalize)
        self.maps = {"student": _PooledMap(student, self.name),
                     "teacher": _PooledMap(teacher, self.name)}
        classes = [self._check_classifier(model, who) for who, model in
                   (("student", student), ("teacher", teacher))]
        if classes[0] != classes[1]:
            raise UserError(f"--distill {self.name} compares the CAMs class by class: "
                            f"{model_name(student)} has {classes[0]} classes, "
                            f"{model_name(teacher)} {classes[1]}; choose a teacher trained on "
                            "this data set")
        bias = student.get_classifier().bias
        if not self.options.catkd_fc_bias and bias is not None:
            with torch.no_grad():
                bias.zero_()
            bias.requires_grad_(False)

    def _check_classifier(self, model, who):
        """The model's number of classes, after checking that its classifier is one
        ``nn.Linear`` over the kept map's channels."""
        try:
            classifier = model.get_classifier()
        except NotImplementedError:
            classifier = None
        width = self._check_pooled_map(model, who)
        if not isinstance(classifier, nn.Linear) or classifier.in_features != width:
            raise UserError(f"--distill {self.name} applies the {who}'s classifier at each "
                            f"position of its last map, but {model_name(model)} has no single "
                            f"nn.Linear classifier over its {width} channels; choose another "
                            f"{who}")
        return classifier.out_features

    def _check_pooled_map(self, model, who):
        """One dummy pass: the kept map's spatial mean must be the pooled feature the
        classifier takes; its channel count."""
        with evaluating(model):
            device = next(model.parameters()).device
            x = torch.randn(2, *model.input_size, generator=torch.Generator().manual_seed(0))
            feats, _ = model(x.to(device), is_feat=True)
            kept = self.maps[who].take()
        if kept is None or kept.dim() != 4 or not torch.allclose(
                kept.mean((2, 3)), feats[-1].flatten(1), rtol=1e-4, atol=1e-5):
            raise UserError(f"--distill {self.name}: the global pooling of {model_name(model)} "
                            "does not average one map into its classifier's input; choose "
                            "another model")
        return kept.shape[1]

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        map_s, map_t = self.maps["student"].take(), self.maps["teacher"].take()
        if map_s is None or map_t is None:
            raise RuntimeError("catkd: no map kept from this step's forward passes; the student "
                               "and the teacher must run in the step (not from a cache)")
        cam_s = class_activation_maps(map_s, self.student.get_classifier().weight, self.size)
        with torch.no_grad():  # clone: the folded teacher's maps are inference tensors
            cam_t = class_activation_maps(map_t, self.teacher.get_classifier().weight,
                                          self.size).clone()
        return {"catkd": self.beta * cat_loss(cam_s, cam_t, self.normalize)}

"""Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons"; RepDistiller's init stage (``common.InitStageDistiller``) and
its ``--init_epochs`` flag are shared with FT and FSP."""
from dataclasses import dataclass

import torch
import torch.nn as nn

from helper.core.errors import UserError

from .base import Reads, Weights
from .common import InitStageDistiller, InitStageOptions, model_name, parameters_except, stage_maps
from .options import option
from .registry import Reference, register_distiller


def ab_margin_loss(source: torch.Tensor, target: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """The alternative (squared hinge) loss of the paper's Eq. 7, summed over all elements:
    ``(s + m)^2`` where the teacher neuron is off (``t <= 0``) but ``s > -m``, and
    ``(s - m)^2`` where it is on (``t > 0``) but ``s <= m``."""
    off = (target <= 0) & (source > -margin)
    on = (target > 0) & (source <= margin)
    return ((source + margin).pow(2) * off + (source - margin).pow(2) * on).sum()


class ABLoss(nn.Module):
    """RepDistiller's ``ABLoss``: stage ``i`` of ``n`` weighted ``2^(i - n + 1)`` (the last 1,
    the one before 1/2, ...), each divided by the batch size and scaled by ``3 / 1000``;
    returns the sum over stages."""

    def __init__(self, num_stages: int, margin: float = 1.0):
        super().__init__()
        self.weights = [2.0 ** (i - num_stages + 1) for i in range(num_stages)]
        self.margin = margin

    def forward(self, g_s, g_t):
        batch = g_s[0].shape[0]
        return sum(w * ab_margin_loss(s, t, self.margin) / batch / 1000 * 3
                   for w, s, t in zip(self.weights, g_s, g_t))


def connector(s_shape, t_shape) -> nn.Module:
    """RepDistiller's ``Connector`` for one stage: nothing when channels and height agree,
    otherwise FitNet's ``ConvReg`` without its ReLU (conv, BN) bridging the sizes."""
    (s_c, s_h, s_w), (t_c, t_h, t_w) = s_shape, t_shape
    if s_c == t_c and s_h == t_h:
        return nn.Identity()
    if s_h == 2 * t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
    elif 2 * s_h == t_h:
        conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
    elif s_h >= t_h:
        conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
    else:
        raise UserError(f"--distill ab cannot connect a student map of {s_h}x{s_w} to a "
                        f"teacher map of {t_h}x{t_w} (the student's must be larger or half)")
    return nn.Sequential(conv, nn.BatchNorm2d(t_c))


@register_distiller("ab", "abound")
class AB(InitStageDistiller):
    """Activation boundaries: Heo, Lee, Yun & Choi 2019, "Knowledge Transfer via Distillation
    of Activation Boundaries Formed by Hidden Neurons" (AAAI). Reference code: RepDistiller's
    ``distiller_zoo/AB.py`` (``ABLoss``), ``models/util.py`` (``Connector``),
    ``helper/pretrain.py`` and ``--distill abound`` in ``train_student.py`` /
    ``helper/loops.py``; the authors' ``bhheo/AB_distillation`` (``cifar10_AB_distillation.py``).

    Two stages, as RepDistiller:
      1. ``init`` (``--init_epochs``, 30): the student's feature modules
         (``get_feat_modules()``) and one connector per stage are trained on the AB loss
         alone, unweighted (``loss = sum(loss_group)``), at the constant ``--learning_rate``.
         The loss compares the connected pre-ReLU stage outputs of the student with the
         teacher's (``preact=True``, ``feats[1:-1]``) with margin ``--ab_margin`` 1.
      2. ``main`` (``--epochs``): the student alone with ``cls * CE + div * KD``; the AB term
         is 0 there (RepDistiller's ``loss_kd = 0`` for abound) and the connectors are neither
         used nor trained. ``-b`` is therefore unused; its default 1 is RepDistiller's
         ``-b 1`` and appears in the run name only.
    Defaults: RepDistiller's ``-r 1 -a 0 -b 1`` (``-c 1 -d 0 -b 1``).

    ShuffleNetV2 works here (RepDistiller runs it; the SSKD README's cross-architecture table
    reports AB for resnet32x4 -> ShuffleV2): AB uses the models' pre-ReLU features, not
    ``get_bn_before_relu()``. Pairs whose stage counts differ (VGG's 4 against ResNet's 3) or
    whose student maps are smaller than half the teacher's raise a UserError.

    Paper and official code vs RepDistiller:
      - The authors' code trains the whole student in the init stage (RepDistiller: the
        feature modules), with Nesterov momentum and lr 0.1, and the second stage with KD
        alone at T=3 (``loss = loss_KD``); RepDistiller's second stage uses CE alone.
        ``-c 0 -d 1 --kd_T 3`` gives the authors' second stage.
      - The stage weights (1/4, 1/2, 1 for three stages) and the ``3 / 1000`` scale are the
        authors' code; the paper's Eq. 7 has neither.
    """

    reference = Reference(
        label="AB",
        row=15,
        paper="Heo et al. 2019",
        code="RepDistiller `distiller_zoo/AB.py`",
        shown=("init_epochs", "ab_margin"),
        notes="AB only in the init stage, as RepDistiller",
    )

    reads = Reads(preact=True)
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(InitStageOptions):
        ab_margin: float = option(1.0, "margin m of the activation-boundary loss (paper and "
                                  "code: 1)", "--ab-margin")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        s_shapes = stage_maps(student, student.feature_shapes(True)[1:-1], self.name)
        t_shapes = stage_maps(teacher, teacher.feature_shapes(True)[1:-1], self.name)
        if len(s_shapes) != len(t_shapes):
            raise UserError(f"--distill ab pairs the stages one to one, but {model_name(student)} "
                            f"has {len(s_shapes)} and {model_name(teacher)} {len(t_shapes)}; "
                            "choose models with as many stages")
        self.connectors = nn.ModuleList([connector(s, t) for s, t in zip(s_shapes, t_shapes)])
        self.criterion = ABLoss(len(s_shapes), float(self.options.ab_margin))

    def init_parameters(self):
        return list(self.student.get_feat_modules().parameters()) + list(self.connectors.parameters())

    def main_parameters(self):
        return parameters_except(self, self.connectors)

    def ab_loss(self, feats_s, feats_t):
        g_s = [c(f) for c, f in zip(self.connectors, feats_s[1:-1])]
        return self.criterion(g_s, feats_t[1:-1])

    def init_step(self, images):
        with torch.no_grad():
            feats_t, _ = self.teacher(images, is_feat=True, preact=True)
        feats_s, logits_s = self.student(images, is_feat=True, preact=True)
        return logits_s, {"ab": self.ab_loss(feats_s, feats_t)}

"""L2 on the penultimate features, and Zhang et al. 2020, "Prime-Aware Adaptive Distillation"."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError

from .base import Distiller, Stage, Weights
from .options import MethodOptions, option, require
from .registry import register_distiller


def pad_l2_loss(f_s: torch.Tensor, f_t: torch.Tensor, log_var: torch.Tensor,
                eps: float = 1e-6) -> torch.Tensor:
    """PAD-L2 as torchdistill's ``PADL2Loss``: ``(f_t - f_s)^2 / (eps + exp(s)) + s`` with
    ``s`` the predicted log-variance, averaged over the dimensions and then the batch."""
    return ((f_t - f_s).pow(2) / (eps + log_var.exp()) + log_var).mean()


def _connector(s_dim: int, t_dim: int) -> nn.Module:
    """A linear map of the student's pooled feature to the teacher's width when they differ."""
    return nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim)


def _pooled_dims(student, teacher, method):
    s_shape, t_shape = student.feature_shapes()[-1], teacher.feature_shapes()[-1]
    if len(s_shape) != 1 or len(t_shape) != 1:
        raise UserError(f"--distill {method} needs a pooled feature vector as feats[-1]; "
                        f"got shapes {s_shape} and {t_shape}")
    return s_shape[0], t_shape[0]


@register_distiller("l2")
class L2(Distiller):
    """L2 feature regression on the penultimate (pooled) features, the baseline of Zhang et
    al. 2020 (below) and torchdistill's first PAD stage (``configs/sample/ilsvrc2012/
    multi_stage/pad/resnet18_from_resnet34.yaml``, stage 1: CE + ``MSELoss`` on ``avgpool``).

    Loss: ``cls * CE + div * KD + beta * MSE(connector(f_s), f_t)`` with ``f = feats[-1]`` and
    ``MSE`` averaged over batch and dimensions (``nn.MSELoss(reduction='mean')``). The
    connector is a linear layer when the widths differ (torchdistill's ResNet-18/34 pair has
    equal widths and none), otherwise nothing. Defaults, torchdistill's weights: ``-c 1 -d 0
    -b 1``.
    """

    teacher_feats = True
    student_feats = True
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.s_dim, self.t_dim = _pooled_dims(student, teacher, self.name)
        self.connector = _connector(self.s_dim, self.t_dim)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        return {"l2": self.beta * F.mse_loss(self.connector(feats_s[-1]), feats_t[-1])}


@register_distiller("pad_l2")
class PADL2(L2):
    """Prime-Aware Adaptive Distillation with the L2 loss: Zhang, Lan, Dai, Zeng, Bai, Chang &
    Wei 2020, "Prime-Aware Adaptive Distillation" (ECCV). Reference code: torchdistill's
    ``PADL2Loss`` (``torchdistill/losses/single.py``, "the author's provided code takes average
    of losses"), ``VarianceBranch4PAD`` (``torchdistill/models/wrapper.py``, ``special.py``
    in older versions) and the two-stage config
    ``configs/sample/ilsvrc2012/multi_stage/pad/resnet18_from_resnet34.yaml``.

    Two stages, as torchdistill (each with a fresh optimizer and the full lr schedule):
      1. ``l2``: ``--pad_l2_l2_epochs`` epochs (default: ``--epochs``, as torchdistill's
         10 + 10) of the L2 method above, ``cls * CE + beta * MSE``; the variance branch is
         not used or trained. Its epochs do not compete for best.pth.
      2. ``pad``: ``--epochs`` epochs of ``cls * CE + div * KD + beta * PAD-L2`` where a
         variance branch ``s = BN1d(Linear(f_s))`` (student's pooled feature -> one
         log-variance per teacher dimension and sample) weighs the squared errors:
         ``mean((f_t - c(f_s))^2 / (1e-6 + exp(s)) + s)``. Gradients reach the student also
         through the branch, as in torchdistill.
    Defaults: ``-c 1 -d 0 -b 1`` (torchdistill's weights for both stages).

    Paper vs code: the paper's loss is a Gaussian negative log-likelihood; torchdistill's
    (after the authors' code) averages ``d^2 / var + log var`` without the factors 1/2, i.e.
    twice ``0.5 * (d^2 / var + log var)``: ``-b 0.5`` gives the halved form. torchdistill
    runs the L2 stage and the PAD stage in one run, which we follow (rather than starting the
    PAD stage from another run's checkpoint).
    """

    @dataclass(frozen=True)
    class Options(MethodOptions):
        pad_l2_l2_epochs: Optional[int] = option(
            None, "epochs of the first (L2) stage before the PAD-L2 stage of --epochs (default: "
            "the same as --epochs, as torchdistill)", "--pad-l2-l2-epochs", type=int)

        def check(self):
            require(self.pad_l2_l2_epochs is None or self.pad_l2_l2_epochs >= 1,
                    f"--pad_l2_l2_epochs must be 1 or more, got {self.pad_l2_l2_epochs}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.l2_epochs = self.options.pad_l2_l2_epochs
        self.var_head = nn.Sequential(nn.Linear(self.s_dim, self.t_dim), nn.BatchNorm1d(self.t_dim))

    def stages(self):
        epochs = self.run_info.epochs
        l2_epochs = self.l2_epochs if self.l2_epochs is not None else epochs
        return [Stage("l2", l2_epochs, selects_best=False), Stage("pad", epochs)]

    def stage_parameters(self, stage):
        if stage.name == "l2":
            branch = {id(p) for p in self.var_head.parameters()}
            return [p for p in self.trainable_parameters() if id(p) not in branch]
        return self.trainable_parameters()

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        if self.stage == "l2":
            return super().method_losses(feats_s=feats_s, logits_s=logits_s, feats_t=feats_t,
                                         logits_t=logits_t, targets=targets, **batch)
        f_s = feats_s[-1]
        loss = pad_l2_loss(self.connector(f_s), feats_t[-1], self.var_head(f_s))
        return {"pad_l2": self.beta * loss}

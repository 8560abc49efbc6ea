"""L2 on the penultimate features, and Zhang et al. 2020, "Prime-Aware Adaptive Distillation"."""
import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Reads, Stage, Weights
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def pad_l2_loss(f_s: torch.Tensor, f_t: torch.Tensor, log_var: torch.Tensor,
                eps: float = 1e-6) -> torch.Tensor:
    """PAD-L2 as torchdistill's ``PADL2Loss``: ``(f_t - f_s)^2 / (eps + exp(s)) + s`` with
    ``s`` the predicted log-variance, averaged over the dimensions and then the batch."""
    return ((f_t - f_s).pow(2) / (eps + log_var.exp()) + log_var).mean()


def variance_head(s_dim: int, t_dim: int) -> nn.Sequential:
    """torchdistill's ``VarianceBranch4PAD`` estimator: ``BatchNorm1d(Linear(f_s))``."""
    return nn.Sequential(nn.Linear(s_dim, t_dim), nn.BatchNorm1d(t_dim))


def log_variance(head: nn.Sequential, f_s: torch.Tensor) -> torch.Tensor:
    """The head's output. A training batch of one sample has no batch variance, and
    ``BatchNorm1d`` refuses it in train mode (torchdistill's branch would stop there too; its
    ImageNet loaders never produce one); that batch is normalised with the running statistics
    instead, as in evaluation, and leaves them unchanged. Any larger batch is the plain
    ``head(f_s)``."""
    linear, bn = head
    h = linear(f_s)
    if bn.training and h.shape[0] == 1:
        return F.batch_norm(h, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            training=False, momentum=0.0, eps=bn.eps)
    return bn(h)


def _connector(s_dim: int, t_dim: int) -> nn.Module:
    """A linear map of the student's pooled feature to the teacher's width when they differ."""
    return nn.Identity() if s_dim == t_dim else nn.Linear(s_dim, t_dim)


def _pooled_dims(student, teacher, method):
    s_shape, t_shape = student.feature_shapes()[-1], teacher.feature_shapes()[-1]
    if len(s_shape) != 1 or len(t_shape) != 1:
        raise UserError(f"--distill {method} needs a pooled feature vector as feats[-1]; "
                        f"got shapes {s_shape} and {t_shape}")
    return s_shape[0], t_shape[0]


def _epochs(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated epochs such as 30,60, got {text!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"epochs must be increasing, got {text!r}")
    return values


@register_distiller("l2")
class L2(Distiller):
    """L2 feature regression on the penultimate (pooled) features, the baseline of Zhang et
    al. 2020 (below), torchdistill's "CSE + L2" row (``configs/official/ilsvrc2012/
    yoshitomo-matsubara/rrpr2020/cse_l2-resnet18_from_resnet34.yaml``: CE + ``15 *
    MSELoss`` on ``avgpool``) and the first PAD stage.

    Loss: ``cls * CE + div * KD + beta * MSE(connector(f_s), f_t)`` with ``f = feats[-1]`` and
    ``MSE`` averaged over batch and dimensions (``nn.MSELoss(reduction='mean')``). The
    connector is a linear layer when the widths differ (torchdistill's ResNet-18/34 pair has
    equal widths and none), otherwise nothing. Defaults ``-c 1 -d 0 -b 1`` (torchdistill's
    toy multi-stage sample); the published ImageNet row (71.08) used ``-b 15``, 90 epochs,
    lr 0.2 for a total batch of 512, x0.1 at 30 and 60 (``scripts/torchdistill_imagenet.sh``).
    """

    reference = Reference(
        label="L2",
        row=20,
        paper="Zhang et al. 2020",
        code="torchdistill (yoshitomo-matsubara/rrpr2020)",
        notes="torchdistill's ImageNet row: `-b 15`",
    )

    # the pooled feature only: --teacher_cache serves feats_t[-1] and, for -d > 0, the logits
    reads = Reads("pooled", "pooled")

    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.s_dim, self.t_dim = _pooled_dims(student, teacher, self.name)
        self.connector = _connector(self.s_dim, self.t_dim)

    def l2_loss(self, feats_s, feats_t):
        return F.mse_loss(self.connector(feats_s[-1]), feats_t[-1])

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        return {"l2": self.beta * self.l2_loss(feats_s, feats_t)}


@register_distiller("pad_l2")
class PADL2(L2):
    """Prime-Aware Adaptive Distillation with the L2 loss: Zhang, Lan, Dai, Zeng, Bai, Chang &
    Wei 2020, "Prime-Aware Adaptive Distillation" (ECCV). Reference code: torchdistill's
    ``PADL2Loss`` (``torchdistill/losses/single.py``, "the author's provided code takes average
    of losses"), ``VarianceBranch4PAD`` (``torchdistill/models/wrapper.py``, ``special.py``
    in older versions), the published two-run recipe (``configs/official/ilsvrc2012/
    yoshitomo-matsubara/rrpr2020/cse_l2-...yaml`` then ``pad_l2-...yaml``) and the toy
    multi-stage sample ``configs/sample/ilsvrc2012/multi_stage/pad/resnet18_from_resnet34.yaml``.

    Two stages:
      1. ``l2``: ``--pad_l2_l2_epochs`` epochs (default: ``--epochs``, as the toy sample's
         10 + 10; 0: no L2 stage) of the L2 method above, ``cls * CE + w * MSE`` with ``w =
         --pad_l2_l2_beta`` (default ``-b``), at ``--pad_l2_l2_lr`` with decay after
         ``--pad_l2_l2_lr_decay_epochs`` (default: ``--learning_rate`` and
         ``--lr_decay_epochs``); the variance branch is not used or trained. Its epochs do
         not compete for best.pth.
      2. ``pad``: ``--epochs`` epochs of ``cls * CE + div * KD + beta * PAD-L2`` at
         ``--learning_rate`` / ``--lr_decay_epochs``, with a fresh optimizer, where a variance
         branch ``s = BN1d(Linear(f_s))`` (student's pooled feature -> one log-variance per
         teacher dimension and sample) weighs the squared errors:
         ``mean((f_t - c(f_s))^2 / (1e-6 + exp(s)) + s)``. Gradients reach the student also
         through the branch, as in torchdistill.
    Defaults: ``-c 1 -d 0 -b 1`` (torchdistill's weights of the PAD stage).

    The published ImageNet recipe (71.71, the default of ``scripts/torchdistill_imagenet.sh``)
    is two runs: CE + 15 * L2 for 90 epochs at lr 0.2 (total batch 512, x0.1 at 30, 60), then
    PAD for 30 epochs at the constant lr 0.002 starting from that run's saved (best)
    checkpoint. Here: the ``l2`` run with ``-b 15``, then ``--distill pad_l2
    --pad_l2_l2_epochs 0 --pretrained <the l2 run's best.pth> --epochs 30 --learning_rate
    0.002 --lr_decay_epochs 30``. The same in one run (the PAD stage then starts from the
    L2 stage's last epoch, not its best): ``--pad_l2_l2_epochs 90 --pad_l2_l2_beta 15
    --pad_l2_l2_lr 0.2 --pad_l2_l2_lr_decay_epochs 30,60 --epochs 30 --learning_rate 0.002
    --lr_decay_epochs 30``.

    Paper vs code: the paper's loss is a Gaussian negative log-likelihood; torchdistill's
    (after the authors' code) averages ``d^2 / var + log var`` without the factors 1/2, i.e.
    twice ``0.5 * (d^2 / var + log var)``: ``-b 0.5`` gives the halved form.
    A training batch of a single sample (a last batch of one) normalises the branch with
    the BN's running statistics (``log_variance``); torchdistill's branch would raise on it.
    """

    reference = Reference(
        label="PAD-L2",
        row=21,
        paper="Zhang et al. 2020",
        code="torchdistill (yoshitomo-matsubara/rrpr2020)",
        defaults="`--pad_l2_l2_epochs` (default `--epochs`)",
        extra_params="66,304",
        notes="stages `l2` then `pad`, as torchdistill's sample; the published recipe: "
              "`--pad_l2_l2_epochs 0 --pretrained` an L2 run's `best.pth` (or in one run "
              "`--pad_l2_l2_beta/_lr/_lr_decay_epochs`); a training batch of one uses the BN's "
              "running statistics",
    )

    @dataclass(frozen=True)
    class Options(MethodOptions):
        pad_l2_l2_epochs: Optional[int] = option(
            None, "epochs of the first (L2) stage before the PAD-L2 stage of --epochs (default: "
            "the same as --epochs, as torchdistill's sample; 0: none, e.g. with --pretrained "
            "set to an L2 run's checkpoint, the published two-run recipe)", "--pad-l2-l2-epochs",
            type=int)
        pad_l2_l2_beta: Optional[float] = option(
            None, "weight of the L2 term in the L2 stage (default: -b; the published recipe: 15)",
            "--pad-l2-l2-beta", type=float)
        pad_l2_l2_lr: Optional[float] = option(
            None, "learning rate of the L2 stage (default: --learning_rate)", "--pad-l2-l2-lr",
            type=float)
        pad_l2_l2_lr_decay_epochs: Optional[Tuple[int, ...]] = option(
            None, "lr decay epochs of the L2 stage, counted from its start (default: "
            "--lr_decay_epochs)", "--pad-l2-l2-lr-decay-epochs", type=_epochs)

        def check(self):
            require(self.pad_l2_l2_epochs is None or self.pad_l2_l2_epochs >= 0,
                    f"--pad_l2_l2_epochs must be 0 or more, got {self.pad_l2_l2_epochs}")
            require(self.pad_l2_l2_lr is None or self.pad_l2_l2_lr > 0,
                    f"--pad_l2_l2_lr must be positive, got {self.pad_l2_l2_lr}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        o = self.options
        self.l2_epochs = o.pad_l2_l2_epochs
        self.l2_beta = self.beta if o.pad_l2_l2_beta is None else float(o.pad_l2_l2_beta)
        self.l2_lr = o.pad_l2_l2_lr
        decay = o.pad_l2_l2_lr_decay_epochs
        self.l2_decay = None if decay is None else tuple(decay)
        self.var_head = variance_head(self.s_dim, self.t_dim)

    def stages(self):
        epochs = self.run_info.epochs
        l2_epochs = self.l2_epochs if self.l2_epochs is not None else epochs
        first = Stage("l2", l2_epochs, lr=self.l2_lr, lr_decay_epochs=self.l2_decay,
                      selects_best=False)
        return ([first] if l2_epochs else []) + [Stage("pad", epochs)]

    def stage_parameters(self, stage):
        if stage.name == "l2":
            branch = {id(p) for p in self.var_head.parameters()}
            return [p for p in self.trainable_parameters() if id(p) not in branch]
        return self.trainable_parameters()

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        if self.stage == "l2":
            return {"l2": self.l2_beta * self.l2_loss(feats_s, feats_t)}
        f_s = feats_s[-1]
        loss = pad_l2_loss(self.connector(f_s), feats_t[-1], log_variance(self.var_head, f_s))
        return {"pad_l2": self.beta * loss}

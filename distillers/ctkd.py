"""Li et al. 2023, "Curriculum Temperature for Knowledge Distillation" (AAAI).

A switch, not a method of its own: ``--ctkd`` with ``--distill kd`` or ``--distill dkd``
replaces the fixed temperature by a learned one. The temperature is trained adversarially:
a gradient reversal layer makes it *maximise* the distillation loss, with a strength lambda
that grows from ``--ctkd_lambda_min`` to ``--ctkd_lambda_max`` along a cosine over the first
``--ctkd_loops`` epochs (easy to hard), while the student minimises the same loss.

Reference code: github zhengli97/CTKD, ``train_student.py`` (``CosineDecay``, the flags),
``helper/loops.py`` (``temp = t_start + t_end * sigmoid(global_T(...))``) and
``models/temp_global.py`` (``Global_T``: one parameter initialised to 1, and the gradient
reversal layer; read from the copy in sunshangquan/logit-standardization-KD, ``CTKD/``).
Their CIFAR script: ``--have_mlp 1 --mlp_name global --t_start 1 --t_end 20 --cosine_decay 1
--decay_max 0 --decay_min -1 --decay_loops 10`` with ``-r 0.1 -a 0.9 --kd_T 4`` (KD).

Equivalences and differences:
  - Their ``--t_end 20`` is a range, not an end: T = 1 + 20 * sigmoid(p) lies in (1, 21) and
    starts at 1 + 20 * sigmoid(1) = 15.62. We call it ``--ctkd_t_range``.
  - Their GRL multiplies the gradient by ``decay_value`` going from ``decay_max`` 0 to
    ``decay_min`` -1; we write it as ``-lambda`` with lambda from 0 to 1 (same numbers). The
    value is computed from the epoch counted from 1, as theirs, so lambda is already
    (1 - cos(pi / 10)) / 2 = 0.024 in epoch 1, and 1 from epoch 10 on.
  - Only the global temperature is released in their code (``mlp_name`` other than
    ``global`` is an error there); the paper's instance-wise variant is not offered here.
  - The temperature parameter is trained by the same SGD (lr, momentum, weight decay) as the
    student, as theirs (it is in the optimizer's parameter list).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from .options import MethodOptions, option
from .registry import Reference, register_switch

register_switch(Reference(
    row=35, label="CTKD", flags="`--ctkd`", paper="Li et al. 2023", code="zhengli97/CTKD",
    defaults="temperature 1 + 20 sigmoid(p), cosine schedule over 10 epochs", extra_params="1",
    notes="a learned temperature for the KD term (and DKD)"))


class _ReverseGrad(torch.autograd.Function):
    """Identity forward; gradient multiplied by ``-lambda`` backward."""

    @staticmethod
    def forward(ctx, x, lam):
        ctx.lam = lam
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return -ctx.lam * grad, None


def reverse_grad(x: torch.Tensor, lam: float) -> torch.Tensor:
    return _ReverseGrad.apply(x, lam)


def cosine_lambda(epoch: int, loops: float, lam_min: float = 0.0, lam_max: float = 1.0) -> float:
    """``lam_min`` at epoch 0 rising along a half cosine to ``lam_max`` at ``loops``, then flat."""
    if loops <= 0:
        return lam_max
    e = min(max(epoch, 0), loops)
    return lam_min + (lam_max - lam_min) * (1.0 - math.cos(math.pi * e / loops)) / 2.0


class CurriculumTemperature(nn.Module):
    """The global learnable temperature ``t_start + t_range * sigmoid(p)``, ``p`` from 1."""

    def __init__(self, t_start=1.0, t_range=20.0, loops=10, lambda_min=0.0, lambda_max=1.0):
        super().__init__()
        self.t_start, self.t_range = float(t_start), float(t_range)
        self.loops, self.lambda_min, self.lambda_max = float(loops), float(lambda_min), float(lambda_max)
        self.param = nn.Parameter(torch.ones(()))

    @classmethod
    def from_options(cls, options: "CTKDOptions"):
        return cls(options.ctkd_t_start, options.ctkd_t_range, options.ctkd_loops,
                   options.ctkd_lambda_min, options.ctkd_lambda_max)

    def forward(self, epoch: int) -> torch.Tensor:
        lam = cosine_lambda(epoch, self.loops, self.lambda_min, self.lambda_max)
        return self.t_start + self.t_range * torch.sigmoid(reverse_grad(self.param, lam))


@dataclass(frozen=True)
class CTKDOptions(MethodOptions):
    """The CTKD flags, part of the KD term's options (``kd.KDOptions``)."""
    title = "ctkd (curriculum temperature of the KD term; with --distill kd or dkd)"
    ctkd: bool = option(False, "learn the KD temperature adversarially (Li et al. 2023)")
    ctkd_t_start: float = option(1.0, "lowest temperature (their --t_start)", "--ctkd-t-start")
    ctkd_t_range: float = option(20.0, "temperature range above --ctkd_t_start (their --t_end)",
                                 "--ctkd-t-range")
    ctkd_loops: float = option(10.0, "epochs over which lambda rises along a cosine (their "
                               "--decay_loops)", "--ctkd-loops")
    ctkd_lambda_min: float = option(0.0, "gradient-reversal strength at the start (their "
                                    "-decay_max)", "--ctkd-lambda-min")
    ctkd_lambda_max: float = option(1.0, "gradient-reversal strength after --ctkd_loops epochs "
                                    "(their -decay_min)", "--ctkd-lambda-max")

"""Park, Kim, Lu & Cho 2019, "Relational Knowledge Distillation"."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Distiller, Reads, Weights
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def pairwise_distances(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Euclidean distances between the rows, from ``|a|^2 + |b|^2 - 2ab`` clamped at ``eps``
    before the square root; the diagonal is exactly 0."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.t()).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), device=e.device, dtype=e.dtype))


def rkd_distance_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the distance matrices, each divided by the mean of its positive
    (off-diagonal) entries."""
    def normalised(f):
        d = pairwise_distances(f.flatten(1))
        return d / d[d > 0].mean()
    return F.smooth_l1_loss(normalised(f_s), normalised(f_t))


def rkd_angle_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Smooth L1 between the cosines of all angles ``(x_j - x_i, x_k - x_i)`` over the N^3
    triplets (those with a repeated index have a zero vector and cosine 0 on both sides)."""
    def cosines(f):
        f = f.flatten(1)
        diff = F.normalize(f.unsqueeze(0) - f.unsqueeze(1), p=2, dim=2)  # [i, j] = x_j - x_i
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()
    return F.smooth_l1_loss(cosines(f_s), cosines(f_t))


@register_distiller("rkd")
class RKD(Distiller):
    """Relational knowledge distillation: Park, Kim, Lu & Cho 2019, "Relational Knowledge
    Distillation" (CVPR). Reference code: RepDistiller's ``distiller_zoo/RKD.py``
    (``RKDLoss``, the authors' ``lenscloth/RKD`` ``metric/loss.py``) with ``--distill rkd`` in
    ``train_student.py`` / ``helper/loops.py``.

    Loss: ``cls * CE + div * KD + beta * (w_d * distance + w_a * angle)`` on the pooled
    features ``feats[-1]`` of both models (no extra parameters; the widths may differ),
    logged as the two terms ``rkd_d`` and ``rkd_a``. Defaults: ``--rkd_w_d 25 --rkd_w_a 50``,
    and RepDistiller's table ``-c 1 -d 0 -b 1`` (``-r 1 -a 0 -b 1`` in
    ``scripts/run_cifar_distill.sh``; SimKD does not run RKD). Add ``-d 1`` for RKD + KD.

    Paper vs code: the paper's angle potential is over triplets of distinct examples and
    its normaliser ``mu`` over distinct pairs; the code averages the smooth L1 over all N^3
    triplets including the degenerate ones (both cosines 0 there, so they only dilute the
    mean by about ``(N-1)(N-2)/N^2``), and ``mu`` is the mean of the positive distances
    (the same as over distinct pairs). We follow the code.
    """

    reference = Reference(
        label="RKD",
        row=22,
        paper="Park et al. 2019",
        code="RepDistiller `distiller_zoo/RKD.py`",
        shown=("rkd_w_d", "rkd_w_a"),
    )

    # the pooled feature only: --teacher_cache serves feats_t[-1] and, for -d > 0, the logits
    reads = Reads("pooled", "pooled")

    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        rkd_w_d: float = option(25.0, "weight of the RKD distance loss (within -b)", "--rkd-w-d")
        rkd_w_a: float = option(50.0, "weight of the RKD angle loss (within -b)", "--rkd-w-a")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.w_d = float(self.options.rkd_w_d)
        self.w_a = float(self.options.rkd_w_a)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        f_s, f_t = feats_s[-1], feats_t[-1]
        losses = {}
        if self.w_d:
            losses["rkd_d"] = self.beta * self.w_d * rkd_distance_loss(f_s, f_t)
        if self.w_a:
            losses["rkd_a"] = self.beta * self.w_a * rkd_angle_loss(f_s, f_t)
        return losses

"""Peng et al. 2019, "Correlation Congruence for Knowledge Distillation"."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from helper.core.errors import UserError

from .base import Distiller, Reads, Weights
from .options import MethodOptions, option
from .registry import Reference, register_distiller

KERNELS = ("repdistiller", "gaussian", "bilinear")


def cc_loss_repdistiller(e_s: torch.Tensor, e_t: torch.Tensor) -> torch.Tensor:
    """RepDistiller's ``Correlation`` (code the CC authors sent): with ``d_i = |e_s,i - e_t,i|``,
    the mean over consecutive samples ``i`` of ``sum_k d_i,k * d_i+1,k``."""
    d = (e_s - e_t).abs()
    return (d[:-1] * d[1:]).sum(1).mean()


def correlation_matrix(e: torch.Tensor, kernel: str, gamma: float = 0.4, p_order: int = 2):
    """The batch correlation matrix: bilinear ``e e^T``, or the Gaussian RBF approximated by its
    P-order Taylor expansion ``exp(-2 gamma) sum_p (2 gamma)^p / p! (e_i . e_j)^p``."""
    g = e @ e.t()
    if kernel == "bilinear":
        return g
    return math.exp(-2 * gamma) * sum((2 * gamma) ** p / math.factorial(p) * g.pow(p)
                                      for p in range(p_order + 1))


def cc_loss_matrix(e_s, e_t, kernel, gamma=0.4, p_order=2):
    """torchdistill's ``CCKDLoss`` (``batchmean``): ``||C_s - C_t||_F / n^2``."""
    c_s = correlation_matrix(e_s, kernel, gamma, p_order)
    c_t = correlation_matrix(e_t, kernel, gamma, p_order)
    return torch.dist(c_s, c_t, 2) / len(e_s) ** 2


@register_distiller("cc", "correlation")
class CC(Distiller):
    """Correlation congruence: Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang 2019, "Correlation
    Congruence for Knowledge Distillation" (ICCV). Reference code: RepDistiller's
    ``distiller_zoo/CC.py`` (``Correlation``, "code emailed to me by the original author") and
    ``models/util.py`` (``LinearEmbed``) with ``--distill correlation`` in
    ``train_student.py`` / ``helper/loops.py``.

    Loss: ``cls * CE + div * KD + beta * cc(E_s(f_s), E_t(f_t))`` where ``f = feats[-1]`` (the
    pooled features) and ``E_s``, ``E_t`` are linear layers to ``--cc_feat_dim`` (128, as
    RepDistiller's ``--feat_dim``); both embeddings are trained with the student (the
    teacher's embedding too, as in RepDistiller). Defaults: RepDistiller's table ``-c 1 -d 0
    -b 0.02`` (``-r 1 -a 0 -b 0.02`` in ``scripts/run_cifar_distill.sh``; SimKD does not run
    CC), ``--cc_kernel repdistiller``.

    Paper vs code: the paper (Eq. 6-7) matches the batch correlation matrices, computed with a
    Gaussian RBF kernel approximated by its P-order Taylor series, plus CE and KD terms.
    RepDistiller's loss (the authors' code) is ``mean_i sum_k |d_i,k| |d_i+1,k|`` with
    ``d = E_s(f_s) - E_t(f_t)``, no kernel and no KD; we follow it by default.
    ``--cc_kernel gaussian`` (``--cc_gamma 0.4 --cc_p_order 2``, as torchdistill and
    Knowledge-Distillation-Zoo) or ``bilinear`` gives the matrix form as torchdistill's
    ``CCKDLoss`` computes it: ``||C_s - C_t||_F / n^2`` (a norm, not squared); its ``-b``
    must then be retuned (torchdistill uses 0.003 with KD on ImageNet).
    """

    reference = Reference(
        label="CC",
        row=24,
        paper="Peng et al. 2019",
        code="RepDistiller `distiller_zoo/CC.py`",
        shown=("cc_feat_dim",),
        extra_params="65,792",
        notes="RepDistiller's kernel; `--cc_kernel gaussian` for the paper's",
    )

    # the pooled feature only: --teacher_cache serves feats_t[-1] and, for -d > 0, the logits
    reads = Reads("pooled", "pooled")

    default_weights = Weights(cls=1.0, div=0.0, beta=0.02)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        cc_feat_dim: int = option(
            128, "width of the linear embeddings of both pooled features", "--cc-feat-dim")
        cc_kernel: str = option(
            "repdistiller", "repdistiller: the authors' code as RepDistiller; gaussian/bilinear: "
            "the paper's correlation matrices as torchdistill", "--cc-kernel", choices=KERNELS)
        cc_gamma: float = option(0.4, "Gaussian kernel gamma (--cc_kernel gaussian)", "--cc-gamma")
        cc_p_order: int = option(
            2, "Taylor order of the Gaussian kernel (--cc_kernel gaussian)", "--cc-p-order")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        feat_dim = int(self.options.cc_feat_dim)
        self.kernel = self.options.cc_kernel
        self.gamma = float(self.options.cc_gamma)
        self.p_order = int(self.options.cc_p_order)
        if feat_dim < 1 or self.p_order < 0 or self.kernel not in KERNELS:
            raise UserError(f"CC needs --cc_feat_dim >= 1, --cc_p_order >= 0 and --cc_kernel in "
                            f"{KERNELS}; got {feat_dim}, {self.p_order}, {self.kernel!r}")
        s_shape, t_shape = student.feature_shapes()[-1], teacher.feature_shapes()[-1]
        self.embed_s = nn.Linear(math.prod(s_shape), feat_dim)
        self.embed_t = nn.Linear(math.prod(t_shape), feat_dim)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        e_s = self.embed_s(feats_s[-1].flatten(1))
        e_t = self.embed_t(feats_t[-1].flatten(1))
        if self.kernel == "repdistiller":
            loss = cc_loss_repdistiller(e_s, e_t)
        else:
            loss = cc_loss_matrix(e_s, e_t, self.kernel, self.gamma, self.p_order)
        return {"cc": self.beta * loss}

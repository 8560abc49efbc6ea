"""Ahn et al. 2019, "Variational Information Distillation for Knowledge Transfer"."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Distiller, Weights
from .common import conv_maps_or_error, pool_to_smaller
from .registry import Reference, register_distiller


class _ChannelMSE(torch.autograd.Function):
    """Per channel, the mean of ``(pred - target)^2`` over batch and positions: (N, C, H, W)
    -> (C,), with the one-pass backward ``2 (pred - target) grad_c / (N H W)`` (autograd's
    takes several passes over the map); ``target`` is constant."""

    @staticmethod
    def forward(ctx, pred, target):
        diff = pred - target
        ctx.save_for_backward(diff)
        return diff.square().mean((0, 2, 3))

    @staticmethod
    def backward(ctx, grad):
        (diff,) = ctx.saved_tensors
        scale = grad * (2.0 * diff.shape[1] / diff.numel())
        return diff * scale.view(1, -1, 1, 1), None


def gaussian_nll(mean, target, var):
    """``0.5 * ((target - mean)^2 / var + log var)`` averaged over all elements of the
    (N, C, H, W) maps (no ``log(2 pi)`` constant), with one variance ``var`` per channel."""
    return 0.5 * ((_ChannelMSE.apply(mean, target.detach()) / var).mean() + var.log().mean())


class VIDRegressor(nn.Module):
    """Predicts the teacher map from the student map with a Gaussian of learned per-channel
    variance ``softplus(log_scale) + eps``: three bias-free 1x1 convs with ReLUs between."""

    def __init__(self, in_channels, mid_channels, out_channels, init_var=5.0, eps=1e-5):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, mid_channels, 1, bias=False), nn.ReLU(inplace=True),
            nn.Conv2d(mid_channels, out_channels, 1, bias=False))
        # inverse softplus, so that the initial variance is exactly init_var
        init = math.log(math.expm1(init_var - eps))
        self.log_scale = nn.Parameter(torch.full((out_channels,), init))
        self.eps = eps

    def variance(self):
        return F.softplus(self.log_scale) + self.eps

    def forward(self, f_s, f_t):
        f_s, f_t = pool_to_smaller(f_s, f_t)
        return gaussian_nll(self.regressor(f_s), f_t, self.variance())


@register_distiller("vid")
class VID(Distiller):
    """Variational information distillation: Ahn, Hu, Damianou, Lawrence & Dai 2019,
    "Variational Information Distillation for Knowledge Transfer" (CVPR). Reference code:
    SimKD's ``distiller_zoo/VID.py`` (``VIDLoss``, from RepDistiller, "code from author"
    ssahn0215/variational-information-distillation) with ``--distill vid`` in
    ``train_student.py`` / ``helper/loops.py``.

    Loss: ``cls * CE + div * KD + beta * sum_j VIDRegressor_j(f_s^j, f_t^j)`` over the stage
    maps ``feats[1:-1]`` paired in order (as the reference's ``zip``). Each regressor maps the
    student's channels to the teacher's with a middle width equal to the teacher's
    (``VIDLoss(s, t, t)``); the larger map is average-pooled to the smaller before the
    regressor. Initial variance 5, eps 1e-5; the variance parameters are trained with the
    student (they are in ``trainable_parameters()``). Defaults (SimKD's run_distill.sh):
    ``-c 1 -d 1 -b 1``.

    Paper vs code: the paper's negative log-likelihood is a sum over channels and positions of
    ``log sigma_c + (t - mu)^2 / (2 sigma_c^2)`` (plus a constant) with per-layer weights; the
    code averages ``0.5 * ((t - mu)^2 / var + log var)`` over all elements and weighs all
    layers by ``-b``. We follow the code (averaging only rescales ``-b`` per layer).
    """

    reference = Reference(
        label="VID",
        row=6,
        paper="Ahn et al. 2019",
        code="RepDistiller `distiller_zoo/VID.py`",
        extra_params="258,496",
        notes="the variance is trained (mdistiller's never is)",
    )

    default_weights = Weights(cls=1.0, div=1.0, beta=1.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        s_maps = conv_maps_or_error(student, student.feature_shapes(self.preact), self.name)
        t_maps = conv_maps_or_error(teacher, teacher.feature_shapes(self.preact), self.name)
        self.regressors = nn.ModuleList(
            VIDRegressor(s[0], t[0], t[0]) for s, t in zip(s_maps, t_maps))

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        loss = sum(reg(s, t) for reg, s, t in zip(self.regressors, feats_s[1:-1], feats_t[1:-1]))
        return {"vid": self.beta * loss}

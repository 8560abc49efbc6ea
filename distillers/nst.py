"""Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity Transfer"."""
import torch
import torch.nn.functional as F

from .base import Distiller, Weights
from .common import conv_maps_or_error, pool_to_smaller
from .registry import Reference, register_distiller


_EPS2 = 1e-24  # F.normalize's eps (1e-12), squared: the channel form normalises via the Grams


def _gram_normalised_sq(g: torch.Tensor, d_a: torch.Tensor, d_b: torch.Tensor) -> torch.Tensor:
    """Mean of ``(a_i . b_j)^2 / (|a_i|^2 |b_j|^2)`` from the Gram ``g = a b^T`` and the
    squared norms of a's rows ``d_a`` and of b's rows ``d_b``, as ``d_a^-1 . g^2 d_b^-1``
    (one elementwise pass over the Gram)."""
    weighted = d_a.reciprocal().unsqueeze(1) @ g.square() @ d_b.reciprocal().unsqueeze(2)
    return weighted.sum() / g.numel()


class _StudentGrams(torch.autograd.Function):
    """``(S S^T, S T^T)`` with ``T`` constant. Autograd would differentiate the two factors
    of ``S S^T`` separately (three products over the maps in the backward); here the
    gradient is ``(W_ss + W_ss^T) S + W_st T``: two."""

    @staticmethod
    def forward(ctx, s, t):
        ctx.save_for_backward(s, t)
        return torch.bmm(s, s.transpose(1, 2)), torch.bmm(s, t.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_ss, grad_st):
        s, t = ctx.saved_tensors
        return torch.bmm(grad_ss + grad_ss.transpose(1, 2), s).baddbmm_(grad_st, t), None


def _channel_form(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``mean k(s,s) + mean k(t,t) - 2 mean k(s,t)`` from channel-by-channel Grams; the
    normalisation is folded into them (their diagonals are the squared norms), so no
    elementwise pass over the maps is needed."""
    with torch.no_grad():  # the teacher-teacher term is a constant
        g_tt = torch.bmm(t, t.transpose(1, 2))
        d_t = g_tt.diagonal(dim1=1, dim2=2).clamp_min(_EPS2)
        k_tt = _gram_normalised_sq(g_tt, d_t, d_t)
    g_ss, g_st = _StudentGrams.apply(s, t.detach())
    d_s = g_ss.diagonal(dim1=1, dim2=2).clamp_min(_EPS2)
    return k_tt + _gram_normalised_sq(g_ss, d_s, d_s) - 2 * _gram_normalised_sq(g_st, d_s, d_t)


def _position_form(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The same value as ``|| S^T S / C_s - T^T T / C_t ||_F^2`` (batch mean) with the
    position-by-position Grams of the normalised maps: the MMD in the kernel's feature space
    (``x -> x x^T``), since ``sum_ij (s_i . t_j)^2 = <S^T S, T^T T>``."""
    s = F.normalize(s, dim=2)
    with torch.no_grad():
        t = F.normalize(t, dim=2)
        g_t = torch.bmm(t.transpose(1, 2), t) / t.shape[1]
    g_s = torch.bmm(s.transpose(1, 2), s) / s.shape[1]
    return (g_s - g_t).square().sum((1, 2)).mean()


def nst_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the channels of the two maps seen as samples: each channel's
    spatial map is L2-normalised, the larger map average-pooled to the smaller one first;
    polynomial kernel ``k(x, y) = (x . y)^2``, averaged over the batch and channel pairs.

    Two exact ways to compute it; the cheaper one for the shapes is used: Grams over
    channels (``C x C``, early stages: many positions) or over positions (``HW x HW``, late
    stages: many channels). In float32 at least, also under ``--amp``: unnormalised Gram
    entries and their squares overflow float16."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    dtype = torch.promote_types(torch.promote_types(f_s.dtype, f_t.dtype), torch.float32)
    s, t = f_s.flatten(2).to(dtype), f_t.flatten(2).to(dtype)
    c_s, c_t, hw = s.shape[1], t.shape[1], s.shape[2]
    with torch.autocast(s.device.type, enabled=False):
        if hw * (c_s + c_t) < c_s * c_s + c_t * c_t + c_s * c_t:
            return _position_form(s, t)
        return _channel_form(s, t)


@register_distiller("nst")
class NST(Distiller):
    """Neuron selectivity transfer: Huang & Wang 2017, "Like What You Like: Knowledge Distill
    via Neuron Selectivity Transfer" (arXiv 1707.01219). Reference code: RepDistiller's
    ``distiller_zoo/NST.py`` (``NSTLoss`` with ``full_loss = True``) with ``--distill nst`` in
    ``train_student.py`` / ``helper/loops.py``.

    Loss: ``cls * CE + div * KD + beta * sum_j nst_loss(f_s^j, f_t^j)`` over the stage maps
    ``feats[1:-1]`` paired in order (as the reference's ``zip``), with the polynomial kernel
    ``k(x, y) = (x . y)^2`` (d = 2, c = 0). The channel counts may differ; no extra
    parameters. The teacher-teacher term is a constant kept so that the loss is the squared
    MMD itself. Defaults: RepDistiller's table ``-c 1 -d 0 -b 50`` (``-r 1 -a 0 -b 50`` in
    ``scripts/run_cifar_distill.sh``; SimKD does not run NST).

    Paper vs code: the paper's MMD and kernel are the ones above; which layers carry the loss
    is a choice of each code base: RepDistiller sums it over every stage map with one weight,
    Knowledge-Distillation-Zoo uses the last stage only. We follow RepDistiller.
    """

    reference = Reference(
        label="NST",
        row=25,
        paper="Huang & Wang 2017",
        code="RepDistiller `distiller_zoo/NST.py`",
    )

    default_weights = Weights(cls=1.0, div=0.0, beta=50.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        conv_maps_or_error(student, student.feature_shapes(self.preact), self.name)
        conv_maps_or_error(teacher, teacher.feature_shapes(self.preact), self.name)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        loss = sum(nst_loss(s, t) for s, t in zip(feats_s[1:-1], feats_t[1:-1]))
        return {"nst": self.beta * loss}

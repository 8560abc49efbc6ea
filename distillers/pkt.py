"""Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic Knowledge Transfer"."""
import torch

from .base import Distiller, Reads, Weights
from .registry import Reference, register_distiller


def _conditional_probabilities(f: torch.Tensor, eps: float) -> torch.Tensor:
    f = f.flatten(1)
    f = f / (f.norm(dim=1, keepdim=True) + eps)
    f = torch.where(torch.isnan(f), torch.zeros_like(f), f)
    k = (f @ f.t() + 1.0) / 2.0  # cosine similarity kernel, in [0, 1]
    return k / k.sum(dim=1, keepdim=True)


def pkt_loss(f_s: torch.Tensor, f_t: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``mean_ij p_t(i,j) * log((p_t(i,j) + eps) / (p_s(i,j) + eps))`` with ``p(i, .)`` row ``i``
    of the cosine-kernel matrix normalised to sum 1 (diagonal included), averaged over all
    N^2 entries."""
    p_s, p_t = _conditional_probabilities(f_s, eps), _conditional_probabilities(f_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_distiller("pkt")
class PKT(Distiller):
    """Probabilistic knowledge transfer: Passalis & Tefas 2018, "Learning Deep Representations
    with Probabilistic Knowledge Transfer" (ECCV). Reference code: RepDistiller's
    ``distiller_zoo/PKT.py`` ("code from author", ``passalis/probabilistic_kt``) with
    ``--distill pkt`` in ``train_student.py`` / ``helper/loops.py``.

    Loss: ``cls * CE + div * KD + beta * pkt_loss(f_s, f_t)`` on the pooled features
    ``feats[-1]`` (the widths may differ; no extra parameters), ``eps = 1e-7``. Defaults:
    RepDistiller's table ``-c 1 -d 0 -b 30000`` (``-r 1 -a 0 -b 30000`` in
    ``scripts/run_cifar_distill.sh``; SimKD does not run PKT).

    Paper vs code: the paper's conditional probabilities ``p(i|j)`` leave out ``i = j`` and
    its divergence is a sum; the code keeps the diagonal (self-similarity 1) in both the
    normalisation and the divergence and averages over the N^2 entries (hence the large
    ``-b``). We follow the code.
    """

    reference = Reference(
        label="PKT",
        row=23,
        paper="Passalis & Tefas 2018",
        code="RepDistiller `distiller_zoo/PKT.py`",
    )

    # the pooled feature only: --teacher_cache serves feats_t[-1] and, for -d > 0, the logits
    reads = Reads("pooled", "pooled")

    default_weights = Weights(cls=1.0, div=0.0, beta=30000.0)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        return {"pkt": self.beta * pkt_loss(feats_s[-1], feats_t[-1])}

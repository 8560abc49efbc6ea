"""Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation"."""
import torch
import torch.nn.functional as F

from .base import Distiller, Weights
from .registry import Reference, register_distiller


def batch_similarity(f: torch.Tensor) -> torch.Tensor:
    """``G = Q Q^T`` of the flattened activations ``Q`` (b x n), each row L2-normalised."""
    q = f.flatten(1)
    return F.normalize(q @ q.t(), dim=1)


def sp_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``||G_s - G_t||_F^2 / b^2``."""
    b = f_s.shape[0]
    return (batch_similarity(f_s) - batch_similarity(f_t)).pow(2).sum() / (b * b)


@register_distiller("sp", "similarity")
class SP(Distiller):
    """Similarity-preserving KD: Tung & Mori 2019, "Similarity-Preserving Knowledge
    Distillation" (ICCV). Reference code: SimKD's ``distiller_zoo/SP.py`` (``Similarity``)
    with ``--distill similarity`` in ``helper/loops.py`` (RepDistiller's).

    Loss: ``cls * CE + div * KD + beta * sp_loss(f_s, f_t)`` on the last stage map
    ``feats[-2]`` of each model (any channel count or size: only the b x b similarities are
    compared). No extra parameters. Also registered as ``similarity`` (SimKD's name).
    Defaults (SimKD's run_distill.sh): ``-c 1 -d 1 -b 3000``.

    Paper vs code: the loss is the paper's Eq. 4. The paper sums it over a set of layer pairs;
    the reference code uses the single pair ``feats[-2]``, as we do.
    """

    reference = Reference(
        label="SP",
        row=5,
        paper="Tung & Mori 2019",
        code="SimKD `distiller_zoo/SP.py`",
    )

    default_weights = Weights(cls=1.0, div=1.0, beta=3000.0)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        return {"sp": self.beta * sp_loss(feats_s[-2], feats_t[-2])}

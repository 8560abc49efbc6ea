"""Ba & Caruana 2014, "Do Deep Nets Really Need to be Deep?"."""
import torch
import torch.nn.functional as F

from .base import Distiller, Reads, Weights
from .registry import Reference, register_distiller


def logits_loss(logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the logits, averaged over batch *and* classes
    (``F.mse_loss`` with ``reduction='mean'``, as Knowledge-Distillation-Zoo's ``Logits``)."""
    return F.mse_loss(logits_s, logits_t)


@register_distiller("logits")
class Logits(Distiller):
    """Logit regression ("mimic learning"): Ba & Caruana 2014, "Do Deep Nets Really Need to be
    Deep?" (NeurIPS). Reference code: Knowledge-Distillation-Zoo (AberHu),
    ``kd_losses/logits.py`` (``F.mse_loss(out_s, out_t)``) with ``train_kd.py --kd_mode logits``.

    Loss: ``cls * CE + div * KD + beta * MSE(z_s, z_t)`` over the raw logits (before softmax).
    Defaults ``-c 1 -d 0 -b 0.1``: the CE + ``lambda_kd * MSE`` of the reference's example
    script (``--lambda_kd 0.1``; that script is for CIFAR-10, no reference gives a CIFAR-100
    value). Only the logits of both models are computed; no extra parameters.

    Paper vs code:
      - The paper trains the mimic on the regression loss alone (no labels), written as
        ``1/(2T) sum_t ||g(x_t) - z_t||^2``: summed over the classes and halved. The code adds
        CE and averages over the classes too. We follow the code; ``-c 0 -b K/2`` (``-b 50``
        for CIFAR-100) gives the paper's objective exactly.
      - The paper speeds up the mimic with a linear bottleneck layer; not part of the loss, not
        offered.
    """

    reference = Reference(
        label="Logits",
        row=19,
        paper="Ba & Caruana 2014",
        code="AberHu/Knowledge-Distillation-Zoo `kd_losses/logits.py`",
    )

    reads = Reads("logits", "logits")  # the logits only: --teacher_cache serves them
    default_weights = Weights(cls=1.0, div=0.0, beta=0.1)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        return {"logits": self.beta * logits_loss(logits_s, logits_t)}

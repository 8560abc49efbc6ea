"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Distiller, Weights
from .common import channel_mean_square, conv_maps_or_error, pool_to_smaller
from .options import MethodOptions, option
from .registry import register_distiller


def attention_map(f: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Spatial attention: mean over channels of ``|f|^p``, flattened, L2-normalised."""
    a = channel_mean_square(f) if p == 2 else f.abs().pow(p).mean(1)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(f_s: torch.Tensor, f_t: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Squared difference of the two attention maps, averaged over batch and positions."""
    f_s, f_t = pool_to_smaller(f_s, f_t)
    return (attention_map(f_s, p) - attention_map(f_t, p)).pow(2).mean()


@register_distiller("at", "attention")
class AT(Distiller):
    """Attention transfer: Zagoruyko & Komodakis 2017, "Paying More Attention to Attention:
    Improving the Performance of Convolutional Neural Networks via Attention Transfer"
    (ICLR). Reference code: SimKD's ``distiller_zoo/AT.py`` (``Attention``) with
    ``--distill attention`` in ``helper/loops.py`` (RepDistiller's), and the authors'
    ``szagoruyko/attention-transfer`` (``at``, ``at_loss``).

    Loss: ``cls * CE + div * KD + beta * sum_j at_loss(f_s^j, f_t^j)`` over the stage maps
    ``feats[1:-1]`` paired in order (as the reference's ``zip``: when the two models have a
    different number of stages, only the first ones are paired). Maps of different sizes are
    average-pooled to the smaller. No extra parameters. Also registered as ``attention``
    (SimKD's name). Defaults (SimKD's run_distill.sh): ``-c 1 -d 1 -b 1000``, ``--at_p 2``.

    Paper vs code:
      - The paper's Eq. 2 is ``beta/2 * sum_j || Q_s/||Q_s|| - Q_t/||Q_t|| ||_p`` (a norm) with
        beta = 1000 divided by the number of attention elements and the batch size; the code
        takes the mean of the squared difference with beta = 1000 and no 1/2. We follow the
        code.
      - The paper sums ``|A_i|^p`` over channels; the code averages ``A_i^p`` (no ``abs``).
        The L2 normalisation cancels sum vs mean; ``abs`` only matters for odd ``--at_p``,
        and we keep the paper's ``|.|``.
    """

    @dataclass(frozen=True)
    class Options(MethodOptions):
        at_p: float = option(2.0, "power p of the attention maps mean_c |f|^p (paper and code: 2)",
                             "--at-p")

    default_weights = Weights(cls=1.0, div=1.0, beta=1000.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.p = float(self.options.at_p)
        conv_maps_or_error(student, student.feature_shapes(self.preact), self.name)
        conv_maps_or_error(teacher, teacher.feature_shapes(self.preact), self.name)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        loss = sum(at_loss(s, t, self.p) for s, t in zip(feats_s[1:-1], feats_t[1:-1]))
        return {"at": self.beta * loss}

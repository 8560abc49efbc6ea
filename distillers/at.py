"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention"."""
import argparse
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Weights
from .common import channel_mean_square, conv_maps_or_error, model_name, pool_to_smaller
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def _stage_list(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated stages such as 3,4, got {text!r}")


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
    ``--at_stages`` keeps some pairs only: torchdistill's ImageNet config
    (``rrpr2020/at-resnet18_from_resnet34.yaml``) pairs layer3 and layer4, ``--at_stages 3,4``.

    Paper vs code:
      - The paper's Eq. 2 is ``beta/2 * sum_j || Q_s/||Q_s|| - Q_t/||Q_t|| ||_p`` (a norm) with
        beta = 1000 divided by the number of attention elements and the batch size; the code
        takes the mean of the squared difference with beta = 1000 and no 1/2. We follow the
        code.
      - The paper sums ``|A_i|^p`` over channels; the code averages ``A_i^p`` (no ``abs``).
        The L2 normalisation cancels sum vs mean; ``abs`` only matters for odd ``--at_p``,
        and we keep the paper's ``|.|``.
    """

    reference = Reference(
        label="AT",
        row=4,
        paper="Zagoruyko & Komodakis 2017",
        code="SimKD `distiller_zoo/AT.py`",
        shown=("at_p",),
        notes="`--at_stages 3,4`: torchdistill's ImageNet pairs (layer3, layer4)",
    )

    @dataclass(frozen=True)
    class Options(MethodOptions):
        at_p: float = option(2.0, "power p of the attention maps mean_c |f|^p (paper and code: 2)",
                             "--at-p")
        at_stages: Tuple[int, ...] = option(
            (), "stages paired, counted from 1 (e.g. 3,4: torchdistill's ImageNet layer3 and "
            "layer4); default: all", "--at-stages", type=_stage_list)

        def check(self):
            distinct = len(set(self.at_stages)) == len(self.at_stages)
            require(all(k >= 1 for k in self.at_stages) and distinct,
                    f"--at_stages must list distinct stages from 1, got {self.at_stages}")

    default_weights = Weights(cls=1.0, div=1.0, beta=1000.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.p = float(self.options.at_p)
        conv_maps_or_error(student, student.feature_shapes(self.preact), self.name)
        conv_maps_or_error(teacher, teacher.feature_shapes(self.preact), self.name)
        pairs = min(len(student.feature_shapes()), len(teacher.feature_shapes())) - 2
        self.pairs = [k - 1 for k in self.options.at_stages] or list(range(pairs))
        if max(self.pairs) >= pairs:
            raise UserError(f"--at_stages {','.join(map(str, self.options.at_stages))}: "
                            f"{model_name(student)} and {model_name(teacher)} pair {pairs} "
                            f"stages; choose among 1..{pairs}")

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        maps_s, maps_t = feats_s[1:-1], feats_t[1:-1]
        loss = sum(at_loss(maps_s[k], maps_t[k], self.p) for k in self.pairs)
        return {"at": self.beta * loss}

"""Chen et al. 2021, "Cross-Layer Distillation with Semantic Calibration" (SemCKD, AAAI)."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from .base import Distiller, Weights
from .common import conv_maps_or_error
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def semckd_loss(projected, targets, attention):
    """Attention-weighted MSE over every (student layer i, teacher layer j) pair.

    ``projected[i][j]`` and ``targets[i][j]`` are ``(b, ...)`` tensors of equal shape,
    ``attention`` is ``(b, S, T)``. Per sample the MSE is averaged over its elements; the
    weighted sum is divided by ``b * S`` (SemCKDLoss).
    """
    b, n_s, _ = attention.shape
    per_pair = torch.stack([
        torch.stack([(p - t).pow(2).flatten(1).mean(1) for p, t in zip(row_p, row_t)], dim=1)
        for row_p, row_t in zip(projected, targets)], dim=1)  # (b, S, T)
    return (attention * per_pair).sum() / (b * n_s)


class MLPEmbed(nn.Module):
    """Linear -> ReLU -> Linear -> L2 normalisation (the reference's query/key embedding)."""

    def __init__(self, dim_in, dim_out):
        super().__init__()
        self.linear1 = nn.Linear(dim_in, 2 * dim_out)
        self.linear2 = nn.Linear(2 * dim_out, dim_out)

    def forward(self, x):
        return F.normalize(self.linear2(F.relu(self.linear1(x.flatten(1)))), dim=1)


def proj(c_in, c_out):
    """Channel alignment: conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1, width 2 * c_out (``Proj``)."""
    mid = 2 * c_out
    return nn.Sequential(
        nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, c_out, 1, bias=False))


class CrossLayerAttention(nn.Module):
    """``SelfA``: attention of every student layer over the teacher layers, and one projection
    per (student layer, teacher layer) pair.

    A sample's query (key) is its row of the batch similarity matrix ``F F^T`` of one student
    (teacher) layer, embedded by an MLP whose input size is the batch size ``max_batch``. A
    smaller batch has its rows zero-padded to ``max_batch`` columns (the similarities to the
    absent samples are 0), so a full batch computes exactly the reference and a smaller last
    batch still trains, where the reference skips it.
    """

    def __init__(self, s_channels, t_channels, max_batch, soft=1.0, factor=4):
        super().__init__()
        if max_batch // factor < 1:
            raise UserError(f"SemCKD needs --batch_size >= {factor} (its attention embeds "
                            f"rows of the batch similarity matrix), got {max_batch}")
        self.max_batch, self.soft = max_batch, soft
        dim = max_batch // factor
        self.query = nn.ModuleList(MLPEmbed(max_batch, dim) for _ in s_channels)
        self.key = nn.ModuleList(MLPEmbed(max_batch, dim) for _ in t_channels)
        self.proj = nn.ModuleList(nn.ModuleList(proj(cs, ct) for ct in t_channels)
                                  for cs in s_channels)

    def _similarity_rows(self, f):
        b = f.shape[0]
        if b > self.max_batch:
            raise UserError(f"SemCKD's attention was built for batches of at most "
                            f"{self.max_batch} samples, got {b}; keep --batch_size as built")
        f = f.flatten(1)
        return F.pad(f @ f.t(), (0, self.max_batch - b))

    def forward(self, feats_s, feats_t):
        query = torch.stack([q(self._similarity_rows(f)) for q, f in zip(self.query, feats_s)], 1)
        key = torch.stack([k(self._similarity_rows(f)) for k, f in zip(self.key, feats_t)], 2)
        attention = F.softmax(torch.bmm(query, key) / self.soft, dim=-1)  # (b, S, T)
        projected, targets = [], []
        for fs, projs in zip(feats_s, self.proj):
            row_p, row_t = [], []
            for ft, p in zip(feats_t, projs):
                # The larger map is average-pooled to the smaller one's size.
                if fs.shape[2] > ft.shape[2]:
                    source, target = F.adaptive_avg_pool2d(fs, ft.shape[2:]), ft
                elif fs.shape[2:] != ft.shape[2:]:
                    source, target = fs, F.adaptive_avg_pool2d(ft, fs.shape[2:])
                else:
                    source, target = fs, ft
                row_p.append(p(source))
                row_t.append(target)
            projected.append(row_p)
            targets.append(row_t)
        return projected, targets, attention


@register_distiller("semckd")
class SemCKD(Distiller):
    """SemCKD: each student stage learns from all teacher stages, weighted by a learnt
    per-sample attention (Chen, Mei, Zhang, Wang, Wang, Feng & Chen, AAAI 2021).

    Reference code: github DefangChen/SimKD ``models/util.py`` (``SelfA``, ``Proj``,
    ``MLPEmbed``), ``distiller_zoo/SemCKD.py``, ``train_student.py``, ``helper/loops.py``
    (same as DefangChen/SemCKD). Uses ``feats[1:-1]`` (stage outputs after ReLU) of both
    models. Defaults as SimKD's ``run_distill.sh``: ``-c 1 -d 1 -b 400``; ``--semckd_soft``
    (SimKD's ``-s/--soft``, the attention temperature) 1.

    Differences from the reference code:
      - The reference builds the query/key MLPs with input size ``--batch_size`` and skips
        any smaller batch (``helper/loops.py``: ``continue`` when ``images.shape[0] <
        opt.batch_size``); SemCKD's own repository crashes on it instead. Here the smaller
        last batch trains, its similarity rows zero-padded (see ``CrossLayerAttention``).
        ``--batch_size`` is per process, as the reference's per-GPU batch size.
      - SemCKD's repository (``SelfA``) defines an average pool that it never uses and has no
        attention temperature; SimKD's adds ``/ soft`` (default 1, the same). Both build
        queries and keys from the batch similarity matrices, not from pooled features.
      - L2 normalisation uses ``F.normalize`` (eps 1e-12) instead of a plain division.
    """

    reference = Reference(
        label="SemCKD",
        row=10,
        paper="Chen et al. 2021 (AAAI)",
        code="DefangChen/SimKD `models/util.py`",
        shown=("semckd_soft",),
        extra_params="10,233,632 at batch 64",
        notes="a smaller last batch trains (the reference skips or crashes)",
    )

    @dataclass(frozen=True)
    class Options(MethodOptions):
        semckd_soft: float = option(
            1.0, "SemCKD attention temperature (SimKD's -s/--soft)", "-s", "--soft")

    default_weights = Weights(cls=1.0, div=1.0, beta=400.0)

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        s_shapes = conv_maps_or_error(student, student.feature_shapes(), self.name)
        t_shapes = conv_maps_or_error(teacher, teacher.feature_shapes(), self.name)
        self.attention = CrossLayerAttention(
            [s[0] for s in s_shapes], [t[0] for t in t_shapes],
            max_batch=self.run_info.batch_size,
            soft=float(self.options.semckd_soft))

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        projected, target, attention = self.attention(feats_s[1:-1], feats_t[1:-1])
        return {"semckd": self.beta * semckd_loss(projected, target, attention)}

"""Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" (ICLR)."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from dataset.batch_keys import register_batch_key
from dataset.crd import add_contrast_index
from helper.core.errors import UserError

from .base import Distiller, Reads, Weights
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller

# CRD's batch key: the contrast indices of each batch (dataset/crd.py), registered here
register_batch_key("contrast_index")(add_contrast_index)

EPS = 1e-7  # the reference's


class Embed(nn.Module):
    """Linear map to ``feat_dim`` followed by L2 normalisation."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x):
        x = self.linear(x.flatten(1))
        return x / x.norm(dim=1, keepdim=True)


def contrast_loss(p: torch.Tensor, n_data: int) -> torch.Tensor:
    """NCE loss of Eq. 18 on ``p`` (B, K+1) = normalised scores, column 0 the positive.

    With noise probability ``1/n_data`` and ``m = K``:
    ``-(sum_b log(p_b0 / (p_b0 + m/N)) + sum_bk log((m/N) / (p_bk + m/N))) / B``.
    """
    mpn = (p.shape[1] - 1) / float(n_data)
    log_d1 = torch.log(p[:, 0] / (p[:, 0] + mpn + EPS))
    log_d0 = torch.log(mpn / (p[:, 1:] + mpn + EPS))
    return -(log_d1.sum() + log_d0.sum()) / p.shape[0]


def bank_scores(bank: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, full=None) -> torch.Tensor:
    """``out[b, j] = <bank[idx[b, j]], v[b]>`` for ``idx`` (B, K+1).

    The reference gathers the B*(K+1) bank rows and uses ``bmm``. When the bank has fewer rows
    than that (CIFAR: 50,000 vs 64 * 16,385), scoring the whole bank with one matmul and
    picking the entries is the same dot products for a fraction of the memory traffic. The
    bank is cloned because autograd keeps it for the backward pass and the memory update
    changes it in place before that (an (N, D) copy, still far less than (B, K+1, D)).
    """
    if full is None:
        full = bank.shape[0] <= idx.numel()
    if full:
        return (v @ bank.clone().t()).gather(1, idx)
    return torch.bmm(bank[idx], v.unsqueeze(2)).squeeze(2)


def _distributed():
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _gather(t):
    """``t`` of every process, concatenated in rank order (batches are equal-sized: the
    training data is padded to a multiple of the process count)."""
    if not _distributed():
        return t
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _mean_over_processes(t):
    if _distributed():
        t = t.clone()
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t


class ContrastMemory(nn.Module):
    """Two momentum memory banks (student and teacher embeddings of every training sample) and
    the normalisation constants Z, all buffers so that checkpoints restore them exactly."""

    def __init__(self, feat_dim: int, n_data: int, nce_t: float, nce_m: float):
        super().__init__()
        self.n_data, self.nce_t, self.nce_m = n_data, nce_t, nce_m
        stdv = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_t", torch.rand(n_data, feat_dim).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("z", torch.full((2,), -1.0))  # Z of out_s, out_t; < 0: not set yet

    def forward(self, v_s, v_t, index, contrast_index):
        # Student anchors against the teacher bank, and the other way round.
        out_s = torch.exp(bank_scores(self.memory_t, v_s, contrast_index) / self.nce_t)
        out_t = torch.exp(bank_scores(self.memory_s, v_t, contrast_index) / self.nce_t)
        with torch.no_grad():
            # Z is estimated once, on the first batch, as mean(out) * N (a Monte-Carlo estimate
            # of the partition function); torch.where avoids a host sync on every step.
            estimate = _mean_over_processes(torch.stack([out_s.mean(), out_t.mean()])) * self.n_data
            self.z.copy_(torch.where(self.z < 0, estimate, self.z))
            z = self.z.clone()
            # Every process applies every process's update, so the banks stay identical.
            index, v_s, v_t = (_gather(t.detach()) for t in (index, v_s, v_t))
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                rows = bank.index_select(0, index).mul_(self.nce_m).add_(v * (1 - self.nce_m))
                bank.index_copy_(0, index, rows / rows.norm(dim=1, keepdim=True))
        return out_s / z[0], out_t / z[1]


@register_distiller("crd")
class CRD(Distiller):
    """Contrastive representation distillation: ``beta * (NCE_s + NCE_t)`` on the pooled
    features ``feats[-1]``, embedded by a linear layer + L2 norm to ``--feat_dim``.

    Reference code: RepDistiller ``crd/criterion.py`` (CRDLoss, ContrastLoss, Embed),
    ``crd/memory.py`` (ContrastMemory) and ``dataset/cifar100.py`` (CIFAR100InstanceSample,
    here ``dataset/crd.py``). Defaults are RepDistiller's / SimKD's: ``--feat_dim 128
    --nce_k 16384 --nce_t 0.07 --nce_m 0.5 --mode exact`` and ``-c 1 -d 1 -b 0.8`` (SimKD's
    run_distill.sh; RepDistiller's CRD table uses ``-r 1 -a 0 -b 0.8``, i.e. ``-d 0``).

    Paper vs code (we follow the code): the paper's critic is ``h = e^{s/T} / (e^{s/T} + N/M)``
    with ``s`` the embeddings' dot product; the code replaces ``e^{s/T}`` by ``e^{s/T} / Z``
    with a constant Z estimated once, on the first batch, as ``mean(e^{s/T}) * M`` (the NCE
    memory bank of Wu et al. 2018), and sums the loss with the teacher as anchor (student
    bank) and with the student as anchor (teacher bank). The banks are updated with momentum
    ``--nce_m`` and re-normalised.
    Differences from the reference: Z is kept as a buffer and saved with the banks (the
    reference re-estimates it after a restart); negatives that do not fit (``--nce_k`` too
    large) are an error instead of sampling with replacement; bank rows are scored with one
    matmul when that is cheaper than gathering them (same dot products).
    """

    reference = Reference(
        label="CRD",
        row=7,
        paper="Tian et al. 2020",
        code="RepDistiller `crd/criterion.py`",
        shown=("feat_dim", "nce_k", "nce_t", "nce_m", "mode"),
        extra_params="65,792 (+2 memory banks of 50,000x128)",
        notes="banks and Z are checkpointed",
    )

    # the pooled feature only: --teacher_cache serves feats_t[-1] and, for -d > 0, the logits
    reads = Reads("pooled", "pooled")

    default_weights = Weights(cls=1.0, div=1.0, beta=0.8)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        feat_dim: int = option(128, "CRD embedding dimension")
        mode: str = option("exact", "CRD positive: the sample itself (exact) or any sample of "
                           "its class", choices=("exact", "relax"))
        nce_k: int = option(16384, "CRD negatives per sample")
        nce_t: float = option(0.07, "CRD temperature")
        nce_m: float = option(0.5, "CRD memory bank momentum")

        def check(self):
            require(self.feat_dim >= 1 and 0 <= self.nce_m < 1,
                    f"CRD needs --feat_dim >= 1 and 0 <= --nce_m < 1, got {self.feat_dim}, "
                    f"{self.nce_m}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        n_data = self.run_info.train_size
        if not n_data:
            raise UserError("--distill crd needs the training set size for its memory banks")
        feat_dim, nce_m = self.options.feat_dim, self.options.nce_m
        self.n_data = int(n_data)
        self.embed_s = Embed(student.feature_shapes()[-1][0], feat_dim)
        self.embed_t = Embed(teacher.feature_shapes()[-1][0], feat_dim)
        self.memory = ContrastMemory(feat_dim, self.n_data, self.options.nce_t, nce_m)

    def batch_requests(self):
        return {"index": {}, "contrast_index": {"nce_k": self.options.nce_k, "mode": self.options.mode}}

    def method_losses(self, *, feats_s, feats_t, index=None, contrast_index=None, **batch):
        if contrast_index is None:
            raise RuntimeError("CRD needs batches with 'index' and 'contrast_index' "
                               "(wrap the training loader with dataset.batch_keys.add_batch_keys)")
        out_s, out_t = self.memory(self.embed_s(feats_s[-1]), self.embed_t(feats_t[-1]),
                                   index, contrast_index)
        loss = contrast_loss(out_s, self.n_data) + contrast_loss(out_t, self.n_data)
        return {"crd": self.beta * loss}

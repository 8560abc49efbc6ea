"""Yue, Deng & Zhou 2020, "Matching Guided Distillation" (ECCV)."""
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Reads, Weights
from .common import model_name
from .ofd import bn_margin, partial_l2
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller

REDUCERS = ("amp", "rd", "sp", "sm")


def matching_cost(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """``sum_b (2 - 2 cos(f_s[b, i], f_t[b, j]))`` between the spatial maps of every student
    channel ``i`` and teacher channel ``j``: a (Cs, Ct) matrix, one matrix product."""
    s = F.normalize(f_s.flatten(2), dim=2)
    t = F.normalize(f_t.flatten(2), dim=2)
    return 2.0 * f_s.shape[0] - 2.0 * torch.einsum("bip,bjp->ij", s, t)


def solve_matching(cost, sparse: bool = False) -> torch.Tensor:
    """Teacher channel indices for a mean cost matrix (Cs, Ct), Cs <= Ct.

    Default (reducers amp, rd, sp): each student channel gets ``G = Ct // Cs`` distinct teacher
    channels; entry ``g * Cs + i`` of the result is student channel ``i``'s teacher channel in
    group ``g``. As in the reference, the cost is stacked ``G`` times and, when ``Ct % Cs``,
    the last ``Ct % Cs`` teacher channels (by index) are shaved off before solving.
    ``sparse`` (reducer sm): one distinct teacher channel per student channel (Cs entries).
    """
    cost = np.asarray(cost, dtype=np.float64)
    sc, tc = cost.shape
    if not sparse:
        groups = tc // sc
        cost = np.tile(cost, (groups, 1))[:, :groups * sc]
    # imported here: scipy.optimize takes 0.6 s to import, which every run would pay
    from scipy.optimize import linear_sum_assignment
    _, cols = linear_sum_assignment(cost)  # rows come back sorted, one per row
    return torch.from_numpy(cols).long()


def reduce_teacher(f_t, margin, index, channels, reducer="amp", absolute=False):
    """The teacher map reduced to the student's ``channels`` through the matched ``index``,
    and its per-channel margin: ``(B, channels, H, W)``, ``(channels,)``."""
    if reducer == "sm":
        return f_t.index_select(1, index), margin.index_select(0, index)
    b, _, h, w = f_t.shape
    groups = index.numel() // channels
    t = f_t.index_select(1, index).view(b, groups, channels, h, w).transpose(1, 2)  # B, C, G, H, W
    m = margin.index_select(0, index).view(groups, channels).t()                     # C, G
    if reducer == "amp":
        key = t.abs() if absolute else t
        return t.gather(2, key.argmax(2, keepdim=True)).squeeze(2), m.mean(1)
    if reducer == "sp":
        return t.amax(2), m.amax(1)
    if reducer == "rd":
        # every position draws its own group member; the margin's draw is a separate one per
        # channel, as in the reference
        pick = torch.randint(groups, (b, channels, 1, h, w), device=t.device)
        m_pick = torch.randint(groups, (channels, 1), device=m.device)
        return t.gather(2, pick).squeeze(2), m.gather(1, m_pick).squeeze(1)
    raise ValueError(f"unknown reducer {reducer!r}; choose one of {REDUCERS}")


@register_distiller("mgd")
class MGD(Distiller):
    """MGD: Yue, Deng & Zhou 2020, "Matching Guided Distillation" (ECCV). Reference code:
    github KaiyuYue/mgd, ``mgd/builder.py`` (``MGDistiller``, ``SMDistiller``,
    ``distillation_loss``, ``get_margin_from_BN``), ``main_mgd.py`` (``mgd_update``, the loss
    scaling, ``--mgd-*`` flags) and ``mgd/sampler.py``; later moved under ``cls/``.

    The teacher's stage outputs before their last ReLU (``preact``, ``feats[1:-1]``) are reduced
    to the student's channel count through a channel matching, and the student's, after a
    trainable BN per stage (``bn_s``), learn them with OFD's partial L2 and margins
    (``ofd.partial_l2``, ``ofd.bn_margin``):
    ``beta * sum_i 2^-(n-1-i) * partial_l2(bn_s_i(S_i), reduce(T_i), margin_i) / B / loss_factor``.

    Matching: before epochs 1, 1+F, 1+2F, ... (``F = --mgd_update_freq``; the reference matches
    once before training and after epoch e (from 0) when (e+1) % F == 0: the same epochs), the
    student and teacher run in eval mode over the training images without augmentation; the
    cost between student channel i and teacher channel j is the mean over images of
    ``2 - 2 cos`` of their spatial maps; an optimal assignment gives each student channel
    ``Ct // Cs`` teacher channels (``sm``: one). Reducers (``--mgd_reducer``): ``amp`` takes per
    position the group's response of largest magnitude, sign kept (margin: the group's mean
    margin); ``rd`` a random member per position (margin: a random member's); ``sp`` the
    group's largest signed response with its largest margin (the reference's "simple
    pooling"); ``sm`` ("sparse matching", the reference's ``SMDistiller``) keeps only the one
    matched teacher channel.
    The matching indices and margins are buffers, saved and restored by ``--resume``.

    Defaults are the reference's: ``-c 1 -d 0 -b 1``, ``--mgd_reducer amp`` (absolute
    maximum), ``--mgd_update_freq 2``, ``--mgd_loss_factor 1e4``. ``--mgd_with_kd 1`` is the
    reference's MGD+KD (KD weight 1, T 1.5): it sets ``-d 1 --kd_T 1.5``, overriding those
    flags. The reference's recipe (``main_mgd.py`` and its README; ``scripts/mgd.sh``): SGD
    with Nesterov momentum 0.9 (no flag here yet), weight decay 1e-4, lr x0.1 after epochs
    31, 61 and 81; CUB-200: 120 epochs, batch 64, lr 0.01, ImageNet-pretrained students;
    ImageNet: 120 epochs after 10 of linear warm-up (no flag here yet), batch 256, lr 0.1,
    ``--mgd_update_freq 1``.

    Differences from the reference:
      - The assignment is solved by ``scipy.optimize.linear_sum_assignment`` on the float
        costs; the reference used OR-Tools' ``pywrapgraph.LinearSumAssignment`` on costs
        rounded to ``int(1e5 * cost)``, an API current OR-Tools no longer has. Ties may break
        differently.
      - The matching pass covers all training images of this process in data-set order
        (``--mgd_match_images`` caps it); the reference runs the eval transform over the
        shuffled training set and stops after about 20,000 images ("break for ImageNet-1K").
        Distributed: costs are summed over processes before solving (the reference's sampler
        has every rank see the whole set), and rank 0's matching is broadcast as in the reference.
      - ``amp`` ("absolute max pooling") keeps, per position, the response of largest
        absolute value (sign kept), as the current reference (``argmax(abs(t))``, also the
        repository's ``unsup/mgd/builder.py``); ``--mgd_amp_signed`` keeps the largest signed
        response, as the classification ``mgd/builder.py`` at commit 036c841
        (``argmax(t)``).
      - The loss is divided by the actual batch size; the reference divides by the nominal
        ``--batch-size`` (a smaller last batch weighs less there).
      - The paper calls MGD parameter-free; the code trains one BN per student stage
        (``bn_s``), and so do we.
      - ``--mgd_loss_factor 1e4`` is the reference's default "for input size 224"; MGD
        publishes no CIFAR setting (OFD's CIFAR code divides by 1e3).
      - The reference skips stage 0 for MobileNetV2/ShuffleNetV2 students (``ignore_inds``);
        we use every stage. A student stage wider than the teacher's, or of another spatial
        size, or a different stage count, is not handled by the reference; here it is a
        UserError.
    """

    reference = Reference(
        label="MGD",
        row=14,
        paper="Yue et al. 2020",
        code="KaiyuYue/mgd `mgd/builder.py`, `main_mgd.py`",
        defaults="`--mgd_reducer amp --mgd_update_freq 2 --mgd_loss_factor 1e4`",
        extra_params="896",
        notes="matching by `scipy.optimize.linear_sum_assignment` (the OR-Tools API it used is "
              "gone); amp keeps the largest absolute response as the current reference, "
              "`--mgd_amp_signed` the largest signed one; `--mgd_with_kd 1`",
    )

    reads = Reads(preact=True)
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        mgd_reducer: str = option(
            "amp",
            "channel reduction: amp (largest magnitude in the matched group), rd (random drop), "
            "sp (simple pooling), sm (sparse matching)", "--mgd-reducer", choices=REDUCERS)
        mgd_update_freq: int = option(
            2, "match the channels anew before epochs 1, 1+F, 1+2F, ... (default 2)",
            "--mgd-update-freq")
        mgd_loss_factor: float = option(
            1e4, "the summed loss is divided by batch size and this (default 1e4)",
            "--mgd-loss-factor")
        mgd_with_kd: int = option(
            0, "1: add the reference's KD (weight 1, T 1.5), i.e. -d 1 --kd_T 1.5",
            "--mgd-with-kd", choices=(0, 1))
        mgd_amp_signed: bool = option(
            False, "amp keeps the largest signed response (argmax(t), mgd/builder.py at 036c841); "
            "default: the response of largest absolute value, sign kept, as the current "
            "reference", "--mgd-amp-signed")
        mgd_match_images: int = option(
            0, "images per process in each matching pass (default 0: all)",
            "--mgd-match-images")

        def check(self):
            require(self.mgd_reducer in REDUCERS, f"--mgd_reducer {self.mgd_reducer} is unknown; "
                    f"choose one of {', '.join(REDUCERS)}")
            require(self.mgd_update_freq >= 1 and self.mgd_loss_factor > 0
                    and self.mgd_match_images >= 0,
                    "--mgd_update_freq and --mgd_loss_factor must be positive and "
                    "--mgd_match_images 0 or more")

    @classmethod
    def effective_weights(cls, options, given, kd_T):
        """``--mgd_with_kd 1`` is the reference's KD term: -d 1 at T 1.5."""
        weights, kd_T = super().effective_weights(options, given, kd_T)
        if options.mgd_with_kd:
            return dataclasses.replace(weights, div=1.0), 1.5
        return weights, kd_T

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.reducer = self.options.mgd_reducer
        self.update_freq = int(self.options.mgd_update_freq)
        self.loss_factor = float(self.options.mgd_loss_factor)
        self.amp_abs = not self.options.mgd_amp_signed
        self.match_images = int(self.options.mgd_match_images)
        try:
            bns = list(teacher.get_bn_before_relu())
        except NotImplementedError as e:
            raise UserError(f"--distill mgd takes its margins from the teacher's BN before each "
                            f"stage's last ReLU: {e}")
        s_shapes = student.feature_shapes(preact=True)[1:-1]
        t_shapes = teacher.feature_shapes(preact=True)[1:-1]
        if len(s_shapes) != len(t_shapes) or len(bns) != len(t_shapes):
            raise UserError(f"--distill mgd pairs stages one to one: {model_name(student)} has "
                            f"{len(s_shapes)} stages, {model_name(teacher)} {len(t_shapes)}; "
                            "choose a student with as many stages as the teacher")
        for i, (s, t) in enumerate(zip(s_shapes, t_shapes), 1):
            if s[0] > t[0] or s[1:] != t[1:]:
                raise UserError(
                    f"--distill mgd needs each student stage no wider than the teacher's and of "
                    f"the same spatial size: stage {i} is {'x'.join(map(str, s))} in "
                    f"{model_name(student)}, {'x'.join(map(str, t))} in {model_name(teacher)}; "
                    "choose another pair")
        self.bn_s = nn.ModuleList(nn.BatchNorm2d(s[0]) for s in s_shapes)
        for i, (bn, s, t) in enumerate(zip(bns, s_shapes, t_shapes)):
            self.register_buffer(f"margin{i}", bn_margin(bn).cpu())
            n = s[0] if self.reducer == "sm" else (t[0] // s[0]) * s[0]
            # teacher channels in index order until the first matching (epoch 1)
            self.register_buffer(f"match{i}", torch.arange(n))

    def margin(self, i):
        return getattr(self, f"margin{i}")

    def match(self, i):
        return getattr(self, f"match{i}")

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        n = len(self.bn_s)
        loss = 0.0
        for i, bn in enumerate(self.bn_s):
            f_s = bn(feats_s[i + 1])
            f_t, margin = reduce_teacher(feats_t[i + 1], self.margin(i), self.match(i),
                                         f_s.shape[1], self.reducer, self.amp_abs)
            loss = loss + partial_l2(f_s, f_t.detach(), margin.view(1, -1, 1, 1)) / 2 ** (n - 1 - i)
        return {"mgd": self.beta * loss / f_s.shape[0] / self.loss_factor}

    def on_epoch_start(self, epoch, train_loader=None, stage=None):
        super().on_epoch_start(epoch, train_loader, stage)
        if train_loader is not None and (epoch - 1) % self.update_freq == 0:
            self.rematch(train_loader)

    @torch.no_grad()
    def rematch(self, loader):
        """The reference's ``mgd_update``: costs over one pass without augmentation (the
        loader's ``unaugmented()``), in eval mode; then the assignment."""
        batches = loader.unaugmented()
        device = self.margin0.device
        costs = [torch.zeros(bn.num_features, self.margin(i).numel(), dtype=torch.float64,
                             device=device) for i, bn in enumerate(self.bn_s)]
        modes = [(m, m.training) for m in self.modules()]
        self.eval()
        seen = 0
        try:
            for batch in batches:
                images = batch["images"]
                feats_s, _ = self.student(images, is_feat=True, preact=True)
                feats_t, _ = self.teacher(images, is_feat=True, preact=True)
                for i, cost in enumerate(costs):
                    cost += matching_cost(feats_s[i + 1].float(), feats_t[i + 1].float()).double()
                seen += images.shape[0]
                if self.match_images and seen >= self.match_images:
                    break
        finally:
            for m, mode in modes:
                m.training = mode
        seen = torch.tensor(float(seen), dtype=torch.float64, device=device)
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if distributed:
            for tensor in costs + [seen]:
                dist.all_reduce(tensor)
        means = []
        for i, cost in enumerate(costs):
            cost = (cost / seen).cpu().numpy()
            index = solve_matching(cost, sparse=self.reducer == "sm")
            self.match(i).copy_(index)
            if distributed:
                dist.broadcast(self.match(i), src=0)
            rows = np.arange(index.numel()) % cost.shape[0]
            means.append(cost[rows, self.match(i).cpu().numpy()].mean())
        if not distributed or dist.get_rank() == 0:
            print(f"mgd: channels matched on {int(seen.item())} images, mean cost per stage "
                  + " ".join(f"{c:.4f}" for c in means), flush=True)

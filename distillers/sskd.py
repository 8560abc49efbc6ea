"""Xu, Liu, Li & Loy 2020, "Knowledge Distillation Meets Self-Supervision"."""
import argparse
from dataclasses import dataclass
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Stage, Weights
from .common import model_name, parameters_except
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def rotations(images: torch.Tensor) -> torch.Tensor:
    """Each image rotated by 0, 90, 180 and 270 degrees, as rows ``4 b + r`` (the official
    data set's ``stack`` then ``view(-1, c, h, w)``)."""
    return torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=1).flatten(0, 1)


def split_rotations(x: torch.Tensor):
    """Rows of ``rotations`` -> (the B normal rows, the 3B rotated rows in order ``3 b + r - 1``)."""
    x = x.view(-1, 4, *x.shape[1:])
    return x[:, 0], x[:, 1:].flatten(0, 1)


def similarity(rep: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every rotated sample's embedding (rows, 3B) with every normal
    sample's (columns, B)."""
    normal, rotated = split_rotations(rep)
    return F.normalize(rotated, dim=1) @ F.normalize(normal, dim=1).t()


def rotation_targets(batch: int, device) -> torch.Tensor:
    """For each rotated row, the column of its own normal image."""
    return torch.arange(batch, device=device).repeat_interleave(3)


def keep_mask(scores: torch.Tensor, target: torch.Tensor, ratio: float) -> torch.Tensor:
    """SSKD's error-level ranking: rows where the teacher ranks ``target`` first, plus the
    ``int(ratio * wrong)`` wrong rows where it ranks ``target`` best. Computed on the device
    (no host synchronisation)."""
    rank = (scores > scores.gather(1, target[:, None])).sum(1)
    wrong = (rank > 0).sum()
    keep = rank.numel() - wrong + torch.floor(wrong * ratio)
    position = torch.empty_like(rank)
    position[torch.argsort(rank, stable=True)] = torch.arange(rank.numel(), device=rank.device)
    return position < keep


def masked_kd(logits_s, logits_t, T, mask) -> torch.Tensor:
    """KD over the rows in ``mask`` (KL ``batchmean`` over those rows) * T^2."""
    kl = F.kl_div(F.log_softmax(logits_s / T, 1), F.log_softmax(logits_t / T, 1),
                  reduction="none", log_target=True).sum(1)
    return (kl * mask).sum() / mask.sum().clamp(min=1) * T * T


def _milestones(text):
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 30,45, got {text!r}")


def _head(dim):
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))


@register_distiller("sskd")
class SSKD(Distiller):
    """Self-supervision knowledge distillation: Xu, Liu, Li & Loy 2020, "Knowledge
    Distillation Meets Self-Supervision" (ECCV). Reference code: the authors'
    ``xuguodong03/SSKD`` (``student.py``, ``wrapper.py``, ``cifar.py``).

    Every training batch of B images becomes 4B: each image rotated by 0/90/180/270 degrees
    (``torch.rot90``, here in the distiller). A projection head (Linear-ReLU-Linear, width of
    the pooled feature) on each model embeds the pooled features; ``A[j, b]`` is the cosine
    similarity of rotated image ``j`` with normal image ``b``.
    Two stages, as ``student.py``:
      1. ``teacher_ss`` (``--sskd_t_epochs`` 60, lr ``--sskd_t_lr`` 0.05, x0.1 at
         ``--sskd_t_milestones`` 30,45): only the teacher's head trains, with cross-entropy
         over ``A_t``'s rows (each rotated image must find its own normal image; no
         temperature). The teacher stays frozen and in eval mode; the student is not trained.
      2. ``main`` (``--epochs``): the student and its head train with
         ``cls * CE(normal) + div * KD(normal, --kd_T 4) + --sskd_tf_weight * TF + beta * SS``:
         TF is KD on the rotated images at ``--sskd_tf_T`` 4, SS is KD between the rows of
         ``A_s`` and ``A_t`` at ``--sskd_ss_T`` 0.5; each keeps only the rows where the
         teacher is right plus the ``--sskd_ratio_tf`` 1.0 / ``--sskd_ratio_ss`` 0.75 share of
         its wrong rows ranked best (``batchmean`` over the rows kept, times T^2).
    Defaults (``student.py``): ``-c 0.1 -d 0.9 -b 10`` (ce, kd and ss weights), tf weight 2.7.
    ``forward_test`` gives the student's logits on the normal images.

    Differences from the official code:
      - The official data set crops each rotated copy separately (the flip is shared); here
        the loader's crop and flip are shared by the four copies, which are then rotated.
      - The rank of the target counts the classes scored strictly higher (the official
        ``argsort`` position differs only on exact ties), and ties between rows at the cut
        are broken by row order.
      - The official head optimizer also holds the backbone at lr 0 (weight decay has no
        effect at lr 0); here the teacher_ss optimizer holds the head alone.
    """

    reference = Reference(
        label="SSKD",
        row=18,
        paper="Xu et al. 2020",
        code="xuguodong03/SSKD",
        shown=("sskd_tf_weight", "sskd_t_epochs"),
        extra_params="263,168",
        notes="teacher's SS head trained first (stage `teacher_ss`)",
    )

    combinable = False  # its own training step / test-time model

    default_weights = Weights(cls=0.1, div=0.9, beta=10.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        sskd_t_epochs: int = option(60, "epochs of the teacher_ss stage (training the teacher's "
                                    "SS head)", "--sskd-t-epochs")
        sskd_t_lr: float = option(0.05, "lr of the teacher_ss stage", "--sskd-t-lr")
        sskd_t_milestones: Tuple[int, ...] = option(
            (30, 45), "lr decay epochs of the teacher_ss stage", "--sskd-t-milestones",
            type=_milestones)
        sskd_tf_weight: float = option(2.7, "weight of the KD term on rotated images (beta "
                                       "weighs SS)", "--sskd-tf-weight")
        sskd_tf_T: float = option(4.0, "temperature of the KD term on rotated images",
                                  "--sskd-tf-T")
        sskd_ss_T: float = option(0.5, "temperature of the similarity (SS) term", "--sskd-ss-T")
        sskd_ratio_tf: float = option(1.0, "share of the teacher's wrong rotated predictions "
                                      "kept for TF", "--sskd-ratio-tf")
        sskd_ratio_ss: float = option(0.75, "share of the teacher's wrong similarity rows kept "
                                      "for SS", "--sskd-ratio-ss")

        def check(self):
            require(self.sskd_t_epochs >= 0,
                    f"--sskd_t_epochs must be 0 or more, got {self.sskd_t_epochs}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        o = self.options
        self.t_epochs, self.t_lr, self.t_milestones = o.sskd_t_epochs, o.sskd_t_lr, tuple(o.sskd_t_milestones)
        self.tf_weight, self.tf_T, self.ss_T = o.sskd_tf_weight, o.sskd_tf_T, o.sskd_ss_T
        self.ratio_tf, self.ratio_ss = o.sskd_ratio_tf, o.sskd_ratio_ss
        _, h, w = self.run_info.input_size or student.input_size
        if h != w:
            raise UserError(f"--distill sskd rotates images by 90 degrees, which needs square "
                            f"inputs; these are {h}x{w}")
        dims = []
        for model in (student, teacher):
            shape = model.feature_shapes()[-1]
            if len(shape) != 1:
                raise UserError(f"--distill sskd needs a pooled feature vector as feats[-1]; "
                                f"{model_name(model)} gives {shape}")
            dims.append(shape[0])
        self.student_head, self.teacher_head = _head(dims[0]), _head(dims[1])

    def stages(self):
        first = Stage("teacher_ss", self.t_epochs, lr=self.t_lr,
                      lr_decay_epochs=self.t_milestones, selects_best=False)
        return ([first] if self.t_epochs else []) + [Stage("main", self.run_info.epochs)]

    def stage_parameters(self, stage):
        if stage.name == "teacher_ss":
            return list(self.teacher_head.parameters())
        return parameters_except(self, self.teacher_head)

    def train(self, mode=True):
        super().train(mode)
        if mode and self.stage == "teacher_ss":
            self.student.eval()
            self.student_head.eval()
        return self

    def forward_train(self, images, targets, **batch):
        x = rotations(images)
        batch_size = images.shape[0]
        sim_targets = rotation_targets(batch_size, images.device)
        with torch.no_grad():
            feats_t, logits_t = self.teacher(x, is_feat=True)
        if self.stage == "teacher_ss":
            with torch.no_grad():
                logits_s = self.student(images)  # for the logged accuracy only
            sim_t = similarity(self.teacher_head(feats_t[-1]))
            return logits_s, {"ss_t": F.cross_entropy(sim_t, sim_targets)}
        with torch.no_grad():
            sim_t = similarity(self.teacher_head(feats_t[-1]))
        feats_s, logits_s = self.student(x, is_feat=True)
        sim_s = similarity(self.student_head(feats_s[-1]))
        normal_s, rotated_s = split_rotations(logits_s)
        normal_t, rotated_t = split_rotations(logits_t)
        keep_tf = keep_mask(rotated_t, targets.repeat_interleave(3), self.ratio_tf)
        keep_ss = keep_mask(sim_t, sim_targets, self.ratio_ss)
        losses = {}
        if self.cls_weight:
            losses["cls"] = self.cls_weight * self.cls_loss(normal_s, targets, batch)
        if self.div_weight:
            losses["kd"] = self.div_weight * self.kd_term(normal_s, normal_t)
        losses["tf"] = self.tf_weight * masked_kd(rotated_s, rotated_t, self.tf_T, keep_tf)
        losses["ss"] = self.beta * masked_kd(sim_s, sim_t, self.ss_T, keep_ss)
        return normal_s, losses

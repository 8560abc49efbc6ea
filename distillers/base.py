"""The distiller contract (DESIGN.md, "Distiller") and the losses every method shares."""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.errors import UserError
from .ctkd import CurriculumTemperature
from .logit_std import maybe_standardize


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(p_t^T || p_s^T) * T^2, averaged over the batch.

    As RepDistiller's ``DistillKL``: ``batchmean`` KL, scaled by T^2 so that gradients keep
    their magnitude when T changes.
    """
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    log_p_t = F.log_softmax(logits_t / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


@dataclass(frozen=True)
class Stage:
    """One training stage. Multi-stage methods (FT, AB, FSP, SSKD, ...) declare several; the
    trainer runs them in order with a fresh optimizer over ``stage_parameters(stage)``.

    ``lr`` and ``lr_decay_epochs`` (counted from the stage's start) default to the flags;
    only epochs of stages with ``selects_best`` compete for best.pth.
    """
    name: str
    epochs: int
    lr: Optional[float] = None
    lr_decay_epochs: Optional[Tuple[int, ...]] = None
    selects_best: bool = True


class Distiller(nn.Module):
    """Holds the student, the frozen teacher and the method's trainable extras.

    The total loss follows SimKD's convention ``cls * CE + div * KD + beta * method``; the
    ``cls`` and ``kd`` terms are computed here, a method adds its own in ``method_losses``.

    The teacher is deliberately *not* a registered submodule: it never appears in
    ``parameters()`` or ``state_dict()``, so it is never handed to the optimizer, saved with the
    student, or wrapped by DistributedDataParallel. ``_apply`` moves it along with the rest.

    Class attributes a method may set:
      - ``needs_teacher``: False for methods that train without a teacher.
      - ``teacher_feats`` / ``student_feats``: whether the method needs the feature lists
        (False: only logits are computed, which is cheaper for the teacher).
      - ``preact``: features taken before the last ReLU of each stage.
      - ``batch_keys``: extra entries the data pipeline must put in each batch (e.g. CRD's
        ``contrast_index``); the loop passes them to ``forward_train`` as keyword arguments.
    """

    needs_teacher = True
    teacher_feats = True
    student_feats = True
    preact = False
    batch_keys: Tuple[str, ...] = ()
    default_weights = {"cls": 1.0, "div": 1.0, "beta": 0.0}  # -c, -d, -b when not given

    def __init__(self, student: nn.Module, teacher: nn.Module, args, data_info=None):
        super().__init__()
        self.data_info = data_info or {}  # num_classes, input_size, train_size, val_size
        self.epoch = 0  # epoch within the current stage, from 1
        self.stage = "main"
        if self.needs_teacher and teacher is None:
            raise UserError(f"--distill {self.name} needs a teacher; pass --path_t CHECKPOINT")
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        self.cls_weight = float(args.cls)
        self.div_weight = float(args.div)
        self.beta = float(args.beta)
        self.kd_T = float(args.kd_T)
        # Switches of the KD term (flags defined in kd.py): z-scored logits (Sun et al. 2024)
        # and a learned curriculum temperature (CTKD, Li et al. 2023), an extra parameter.
        self.logit_stand = bool(getattr(args, "logit_stand", False))
        self.temperature = CurriculumTemperature.from_args(args) if getattr(args, "ctkd", False) else None
        if self.temperature is not None and not self.uses_kd_temperature():
            raise UserError(f"--ctkd learns the KD temperature, but --distill {self.name} has no "
                            f"KD term here (-d {self.div_weight:g}); drop --ctkd, or pass -d > 0 "
                            "to a method with a KD term")

    # ---- command-line options of the method -------------------------------------------
    @classmethod
    def add_arguments(cls, parser):
        """Add the method's own flags to ``parser`` (an argparse group)."""

    @classmethod
    def requires_teacher(cls, args) -> bool:
        """Whether this run needs ``--path_t`` (a method may decide from its flags)."""
        return cls.needs_teacher

    # ---- teacher -----------------------------------------------------------------------
    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def stages(self, args) -> List[Stage]:
        """The stages this method trains in; one by default."""
        return [Stage("main", args.epochs)]

    def stage_parameters(self, stage: Stage):
        """What the optimizer of ``stage`` trains."""
        return self.trainable_parameters()

    def on_epoch_start(self, epoch: int, train_loader=None, stage: Stage = None):
        """Called before each epoch with the epoch counted within its stage, from 1
        (warm-ups, re-matching, schedules)."""
        self.epoch = epoch
        if stage is not None:
            self.stage = stage.name

    # ---- forward -----------------------------------------------------------------------
    def forward(self, images, targets=None, **batch):
        if self.training:
            return self.forward_train(images, targets, **batch)
        return self.forward_test(images)

    def forward_test(self, images):
        return self.student(images)

    def forward_train(self, images, targets, **batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # The teacher first: its forward pass then does not run beside the student's graph,
        # which made a resnet32x4 -> resnet8x4 KD iteration about 5% slower on the CPU.
        feats_t = logits_t = None
        if self.teacher is not None and (self.div_weight or self.uses_teacher_output()):
            with torch.no_grad():
                feats_t, logits_t = self._run(self.teacher, images, self.teacher_feats)
        feats_s, logits_s = self._run(self.student, images, self.student_feats)
        losses = {}
        if self.cls_weight:
            losses["cls"] = self.cls_weight * F.cross_entropy(logits_s, targets)
        if self.div_weight and logits_t is not None:
            losses["kd"] = self.div_weight * self.kd_term(logits_s, logits_t)
        losses.update(self.method_losses(feats_s=feats_s, logits_s=logits_s, feats_t=feats_t,
                                         logits_t=logits_t, targets=targets, **batch))
        return logits_s, losses

    def _run(self, model, images, with_feats):
        if with_feats:
            return model(images, is_feat=True, preact=self.preact)
        return None, model(images)

    def uses_kd_temperature(self) -> bool:
        """Whether the run has a term using the KD temperature (what ``--ctkd`` learns)."""
        return self.div_weight != 0

    def kd_temperature(self):
        return self.kd_T if self.temperature is None else self.temperature(self.epoch)

    def kd_term(self, logits_s, logits_t):
        """The unweighted KD term, with the ``--logit_stand`` and ``--ctkd`` switches."""
        s, t = maybe_standardize(logits_s, logits_t, self.logit_stand)
        return kd_loss(s, t, self.kd_temperature())

    def uses_teacher_output(self) -> bool:
        """Whether ``method_losses`` reads the teacher's output (beyond the KD term)."""
        return self.needs_teacher

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        """The method's own weighted loss terms, ``{name: beta * loss}``."""
        return {}

    # ---- checkpoints -------------------------------------------------------------------
    def extra_state_dict(self):
        """Everything the method trains or remembers beyond the student's weights."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}

    def load_extra_state_dict(self, state):
        own = self.extra_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise UserError(f"checkpoint extras do not match --distill {self.name}: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        full = {**{"student." + k: v for k, v in self.student.state_dict().items()}, **state}
        self.load_state_dict(full, strict=True)

    def deploy_state(self):
        """A self-contained model for evaluation or later use as a teacher, or None when the
        student alone is that model. Methods whose test-time model includes extras (SimKD)
        return ``{"builder": name, "kwargs": {...}, "state_dict": ...}`` where ``name`` is
        registered with ``models.register_deployed``."""
        return None

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network": the KD loss,
the KD term every method's ``-d`` weighs with its two switches, and ``--distill kd``."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Distiller, Reads
from .ctkd import CTKDOptions, CurriculumTemperature
from .logit_std import maybe_standardize
from .options import option, require
from .registry import Reference, register_distiller


def kd_loss(logits_s: torch.Tensor, logits_t: torch.Tensor, T: float) -> torch.Tensor:
    """Hinton et al. 2015: KL(p_t^T || p_s^T) * T^2, averaged over the batch.

    As RepDistiller's ``DistillKL``: ``batchmean`` KL, scaled by T^2 so that gradients keep
    their magnitude when T changes.
    """
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    log_p_t = F.log_softmax(logits_t / T, dim=1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * T * T


@dataclass(frozen=True)
class KDOptions(CTKDOptions):
    """The KD term's temperature and switches, shared by every method's ``-d`` term."""
    title = "kd term (every method's -d term, and dkd)"
    kd_T: float = option(4.0, "KD temperature", "--kd-T")
    logit_stand: bool = option(False, "z-score student and teacher logits before the "
                               "temperature (Sun et al. 2024; any KD term, and dkd)",
                               "--logit-stand")

    def check(self):
        require(self.kd_T > 0, f"--kd_T must be positive, got {self.kd_T:g}")


class KDTerm:
    """The unweighted KD term ``kd_loss`` with its two switches:
      - ``logit_stand``: z-score both logits first (Sun et al. 2024, ``logit_std.py``);
        their CIFAR setting is ``-c 0.1 -d 9 --kd_T 2``.
      - ``temperature``: a learned temperature replacing ``T`` (``--ctkd``, Li et al. 2023,
        ``ctkd.py``); an ``nn.Module`` the distiller registers as an extra, so it is trained
        and saved with the student.
    """

    def __init__(self, T: float = 4.0, logit_stand: bool = False, temperature=None):
        self.T, self.logit_stand, self.temperature = float(T), bool(logit_stand), temperature

    @classmethod
    def from_options(cls, options: KDOptions, T: float = None):
        """The term of ``options``, at temperature ``T`` (default ``options.kd_T``)."""
        temperature = CurriculumTemperature.from_options(options) if options.ctkd else None
        return cls(options.kd_T if T is None else T, options.logit_stand, temperature)

    def temperature_at(self, epoch: int):
        return self.T if self.temperature is None else self.temperature(epoch)

    def standardize(self, logits_s, logits_t):
        return maybe_standardize(logits_s, logits_t, self.logit_stand)

    def __call__(self, logits_s, logits_t, epoch: int = 0):
        s, t = self.standardize(logits_s, logits_t)
        return kd_loss(s, t, self.temperature_at(epoch))


@register_distiller("kd")
class KD(Distiller):
    """Knowledge distillation: ``cls * CE + div * KL(p_t^T || p_s^T) * T^2``.

    The KD term is the base class's ``kd`` term (``-d``, ``--kd_T``, the switches of
    ``KDOptions``); KD adds nothing else and ``-b`` is unused, as in SimKD and RepDistiller
    (where ``loss_kd = 0`` for ``--distill kd``). Defaults: SimKD's ``-c 1 -d 1 --kd_T 4``;
    RepDistiller's table uses ``-r 0.1 -a 0.9``. Only the teacher's logits are computed.
    """

    reference = Reference(
        label="KD",
        row=1,
        paper="Hinton et al. 2015",
        code="RepDistiller `distiller_zoo/KD.py`, SimKD",
        shown=("kd_T",),
        notes="RepDistiller's table: `-r 0.1 -a 0.9`",
    )

    reads = Reads("logits", "logits")  # the logits only: --teacher_cache serves them

    def uses_teacher_output(self):
        return False

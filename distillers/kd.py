"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"."""
from .base import Distiller
from .registry import register_distiller


@register_distiller("kd")
class KD(Distiller):
    """Knowledge distillation: ``cls * CE + div * KL(p_t^T || p_s^T) * T^2``.

    The KD term is the base class's ``kd`` term (``-d``, ``--kd_T``); KD adds nothing else and
    ``-b`` is unused, as in SimKD and RepDistiller (where ``loss_kd = 0`` for ``--distill kd``).
    Defaults: SimKD's ``-c 1 -d 1 --kd_T 4``; RepDistiller's table uses ``-r 0.1 -a 0.9``.
    Only the teacher's logits are computed.
    """

    teacher_feats = False
    student_feats = False

    def uses_teacher_output(self):
        return False

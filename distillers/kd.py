"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"."""
from . import ctkd
from .base import Distiller
from .registry import register_distiller


@register_distiller("kd")
class KD(Distiller):
    """Knowledge distillation: ``cls * CE + div * KL(p_t^T || p_s^T) * T^2``.

    The KD term is the base class's ``kd`` term (``-d``, ``--kd_T``); KD adds nothing else and
    ``-b`` is unused, as in SimKD and RepDistiller (where ``loss_kd = 0`` for ``--distill kd``).
    Defaults: SimKD's ``-c 1 -d 1 --kd_T 4``; RepDistiller's table uses ``-r 0.1 -a 0.9``.
    Only the teacher's logits are computed.

    Two switches of the ``kd`` term, defined here and applied by the base class to every
    method's KD term (``-d``):
      - ``--logit_stand``: z-score both logits first (Sun et al. 2024, ``logit_std.py``);
        their CIFAR setting is ``-c 0.1 -d 9 --kd_T 2``.
      - ``--ctkd``: a learned temperature replaces ``--kd_T`` (Li et al. 2023, ``ctkd.py``);
        it is an extra parameter, trained and saved with the student.
    """

    teacher_feats = False
    student_feats = False

    @classmethod
    def add_arguments(cls, parser):
        g = parser.add_argument_group("kd")
        g.add_argument("--logit_stand", "--logit-stand", action="store_true",
                       help="z-score student and teacher logits before the temperature "
                            "(Sun et al. 2024; any KD term, and dkd)")
        ctkd.add_arguments(parser)

    def uses_teacher_output(self):
        return False

"""Plain cross-entropy training: teachers, and the student-alone baseline."""
from .base import Distiller
from .registry import register_distiller


@register_distiller("vanilla")
class Vanilla(Distiller):
    """Cross-entropy only (``cls * CE``); no teacher is loaded, ``-d`` and ``-b`` are unused."""

    needs_teacher = False
    student_feats = False
    default_weights = {"cls": 1.0, "div": 0.0, "beta": 0.0}

    def __init__(self, student, teacher, args, data_info=None):
        super().__init__(student, None, args, data_info)
        self.div_weight = 0.0

    def uses_kd_temperature(self):
        return False  # -d is ignored: no KD term, so --ctkd is refused

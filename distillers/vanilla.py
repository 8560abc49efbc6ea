"""Plain cross-entropy training: teachers, and the student-alone baseline."""
from .base import Distiller, Reads, Weights
from .registry import Reference, register_distiller


@register_distiller("vanilla")
class Vanilla(Distiller):
    """Cross-entropy only (``cls * CE``); no teacher is loaded, ``-d`` and ``-b`` are unused."""

    reference = Reference(
        label="cross-entropy",
        row=2,
        code="RepDistiller `train_teacher.py`",
        notes="no teacher needed",
    )

    reads = Reads("none", "logits")
    default_weights = Weights(cls=1.0, div=0.0, beta=0.0)

    @classmethod
    def requires_teacher(cls, options):
        return False

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, None, options, **kw)
        self.div_weight = 0.0

    def uses_kd_temperature(self):
        return False  # -d is ignored: no KD term, so --ctkd is refused

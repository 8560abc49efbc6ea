"""Several teachers as one: ``--path_t A B ...`` (any architectures, one data set).

``TeacherEnsemble`` holds the trained teachers; ``ensemble(x)`` is the mean of their logits, so
every method that reads only the teacher's logits (kd, dkd, dist, ...) distils from several
teachers unchanged. With ``is_feat=True`` it returns ``(members, mean logits)`` where
``members`` holds one ``(feats, logits)`` pair per teacher: only a method that declares it reads
an ensemble (``Distiller.accepts_ensemble``, e.g. CA-MKD) asks for that. The members' feature
shapes differ in general, so the ensemble has none of its own (``feature_shapes`` refuses).
"""
from typing import List, Optional, Sequence, Union

import torch
import torch.nn as nn

from helper.core.errors import UserError


def as_list(value: Union[None, str, Sequence[str]]) -> List[str]:
    """A ``--path_t`` / ``--model_t`` value as a list: one value is a string, several a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def teacher_specs(path_t, model_t=None) -> List[tuple]:
    """``[(checkpoint, architecture or None), ...]``, one per ``--path_t`` in order; several
    ``--model_t`` name the teachers' architectures in the same order."""
    paths, names = as_list(path_t), as_list(model_t)
    if names and len(names) != len(paths):
        raise UserError(f"--model_t names {len(names)} architectures for {len(paths)} --path_t "
                        "checkpoints; give one per checkpoint in the same order, or none (the "
                        "toolbox's checkpoints name their model)")
    return list(zip(paths, names or [None] * len(paths)))


class TeacherEnsemble(nn.Module):
    """Trained teachers queried together; ``forward(x)`` is their mean logit."""

    def __init__(self, teachers: Sequence[nn.Module]):
        super().__init__()
        if len(teachers) < 2:
            raise ValueError("an ensemble holds two or more teachers")
        self.members = nn.ModuleList(teachers)
        self.model_names = [getattr(t, "model_name", type(t).__name__) for t in teachers]
        self.model_name = "+".join(self.model_names)
        self.input_size = getattr(teachers[0], "input_size", None)

    def __len__(self):
        return len(self.members)

    def forward(self, x, is_feat: bool = False, preact: bool = False):
        if not is_feat:
            return torch.stack([t(x) for t in self.members]).mean(0)
        members = [t(x, is_feat=True, preact=preact) for t in self.members]
        return members, torch.stack([logits for _, logits in members]).mean(0)

    def feature_shapes(self, preact: bool = False):
        raise UserError(f"the teachers {', '.join(self.model_names)} have features of their "
                        "own shapes; a method that reads one teacher's features takes one "
                        "--path_t (several teachers: a logit method such as kd or dkd, or camkd)")

    def get_classifier(self):
        return self.feature_shapes()


def ensemble_of(teachers: Sequence[nn.Module]) -> Optional[nn.Module]:
    """The one teacher, an ensemble of several, or None for none."""
    if not teachers:
        return None
    return teachers[0] if len(teachers) == 1 else TeacherEnsemble(teachers)

"""Weight files: atomic writes, and reading weights with one clear error for each way a file
can be unusable.

A leaf module: it imports nothing from the package but ``helper.errors``, so ``models/``
(pretrained weights) and ``helper/checkpoint.py`` (teachers, resume) can both use it.
"""
import os
from pathlib import Path

import torch

from helper.errors import UserError


def atomic_save(obj, path):
    """Write ``obj`` to ``path`` through a temporary file and a rename.

    A crash or a full disk in the middle leaves the previous file untouched.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_file(path, what):
    """``torch.load`` of a checkpoint with one clear error for each way it can be unusable."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; check the path")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files; all mean the same here
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{what} {path} is not a readable PyTorch checkpoint (truncated, corrupt "
                        f"or holding pickled objects): {first}") from e


def state_dict_of(checkpoint, path, what):
    """The model weights inside a checkpoint: ours and RepDistiller/SimKD's keep them under
    'model'; a bare state dict (torchvision files) is accepted as is."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"]
    if isinstance(checkpoint, dict) and checkpoint and all(torch.is_tensor(v) for v in checkpoint.values()):
        return checkpoint
    raise UserError(f"{what} {path} holds no model weights (expected a dict with a 'model' "
                    "state dict, as train_teacher.py, RepDistiller and SimKD write)")


def describe_mismatch(model, state):
    """One line saying which keys or shapes differ between ``model`` and ``state``."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model: {'; '.join(shapes[:3])})")
    return ", ".join(parts)

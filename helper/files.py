"""Weight files: atomic writes, and reading weights with one clear error for each way a file
can be unusable.

A leaf module: it imports nothing from the package but ``helper.errors``, so ``models/``
(pretrained weights) and ``helper/checkpoint.py`` (teachers, resume) can both use it.
"""
import io
import os
import pickle
from pathlib import Path

import torch

from helper.errors import UserError


def atomic_save(obj, path):
    """Write ``obj`` to ``path`` with ``torch.save``, through a temporary file and a rename.

    A crash or a full disk in the middle leaves the previous file untouched; a failed write is
    an OSError.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write(path, write):
    """Write ``path`` by calling ``write(f)`` on a temporary file, then renaming it over ``path``
    (the temporary file is ``.<name>.tmp<pid>``, removed whatever happens but a kill)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except RuntimeError as e:
        # torch.save reports a failed write (a full disk) as "unexpected pos ..." in a
        # RuntimeError, the OSError only as its context.
        cause = e.__context__
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__context__
        if cause is not None:
            raise OSError(cause.errno, cause.strerror, str(tmp)) from e
        text = str(e).strip() or type(e).__name__
        raise OSError(f"torch.save failed: {text.splitlines()[0]}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


# How a file torch.save writes begins: a zip archive, or the legacy format's magic number.
_TORCH_HEADERS = (b"PK\x03\x04", b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19")


def load_file(path, what):
    """``torch.load`` of a checkpoint with one clear error for each way it can be unusable."""
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{what} {path} is a directory; pass the checkpoint file inside it "
                            "(e.g. best.pth)")
        if not path.is_file():
            raise UserError(f"{what} {path} does not exist; check the path")
        with open(path, "rb") as f:
            head = f.read(16)
            f.seek(0)
            try:
                return torch.load(f, map_location="cpu", weights_only=True)
            except Exception as e:  # torch raises many types for bad files
                raise UserError(f"{what} {path} is not a readable PyTorch checkpoint: "
                                f"{_why_unreadable(head, e)}") from e
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror or e}); check that it is "
                        "readable") from e


def load_bytes(data: bytes, what):
    """``torch.load`` of a checkpoint held in memory (a member of an archive), with the errors
    of ``load_file``."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        raise UserError(f"{what} is not a readable PyTorch checkpoint: "
                        f"{_why_unreadable(data[:16], e)}") from e


def _why_unreadable(head, error):
    if not head:
        return "the file is empty"
    if not head.startswith(_TORCH_HEADERS):
        return "it is not a file torch.save writes; check the path"
    if isinstance(error, pickle.UnpicklingError):
        return ("it holds pickled Python objects besides weights, which are not loaded (unsafe); "
                "save the weights alone, e.g. torch.save({'model': model.state_dict()}, PATH)")
    text = str(error).strip()
    first = text.split(". ")[0].splitlines()[0] if text else type(error).__name__
    return f"it is truncated or corrupt ({first})"


# Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def state_dict_of(checkpoint, path, what):
    """The model weights inside a checkpoint: ours and RepDistiller/SimKD's keep them under
    'model', akamaster's pytorch_resnet_cifar10 under 'state_dict'; a bare state dict
    (torchvision files) is accepted as is. The prefix that (Distributed)DataParallel or
    torch.compile put before every key is removed."""
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        state = checkpoint["model"]
    elif isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        state = checkpoint["state_dict"]
    elif isinstance(checkpoint, dict) and checkpoint and all(map(torch.is_tensor, checkpoint.values())):
        state = checkpoint
    else:
        raise UserError(f"{what} {path} holds no model weights (expected a dict with a 'model' "
                        "state dict, as train_teacher.py, RepDistiller and SimKD write)")
    for prefix in _WRAPPER_PREFIXES:
        if state and all(isinstance(k, str) and k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


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

"""Weight files: atomic writes, and reading weights with one clear error for each way a file
can be unusable.

A leaf module: it imports nothing from the package but ``helper.core.errors``, so ``models/``
(pretrained weights) and ``helper/run/checkpoint.py`` (teachers, resume) can both use it.
"""
import argparse
import io
import os
import pickle
import re
from pathlib import Path

import torch

from helper.core.errors import UserError


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

# Classes a weights-only load may rebuild besides tensors and containers: torchdistill's
# checkpoints store the parsed ``args`` (torchdistill/common/main_util.py ``save_ckpt``), a
# plain attribute holder that runs no code when unpickled.
_SAFE_CLASSES = [argparse.Namespace]

_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _is_safetensors(head):
    """A safetensors file: an 8-byte little-endian header length, then its JSON header."""
    return len(head) > 8 and head[8:9] == b"{" and not head.startswith(_TORCH_HEADERS)


def _load_weights_only(f):
    with torch.serialization.safe_globals(_SAFE_CLASSES):
        return torch.load(f, map_location="cpu", weights_only=True)


def _load_safetensors(data, what):
    from safetensors import SafetensorError
    from safetensors.torch import load
    try:
        return load(data)
    except (SafetensorError, ValueError) as e:
        raise UserError(f"{what} is a safetensors file that cannot be read ({e}); it is "
                        "truncated or corrupt") from e


def load_file(path, what):
    """The contents of a checkpoint file, unpickled no further than ``weights_only=True``
    allows (plus ``_SAFE_CLASSES``), or a safetensors file's tensors; one clear error for each
    way it can be unusable."""
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
            if _is_safetensors(head):
                return _load_safetensors(f.read(), f"{what} {path}")
            try:
                return _load_weights_only(f)
            except Exception as e:  # torch raises many types for bad files
                raise UserError(f"{what} {path} is not a readable PyTorch checkpoint: "
                                f"{_why_unreadable(head, e, path)}") from e
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e.strerror or e}); check that it is "
                        "readable") from e


def load_bytes(data: bytes, what):
    """``load_file`` of a checkpoint held in memory (a member of an archive)."""
    if _is_safetensors(data[:16]):
        return _load_safetensors(data, what)
    try:
        return _load_weights_only(io.BytesIO(data))
    except Exception as e:  # torch raises many types for bad files
        raise UserError(f"{what} is not a readable PyTorch checkpoint: "
                        f"{_why_unreadable(data[:16], e, 'FILE')}") from e


def _why_unreadable(head, error, path):
    if not head:
        return "the file is empty"
    if not head.startswith(_TORCH_HEADERS):
        return "it is not a file torch.save writes (nor a safetensors file); check the path"
    if isinstance(error, pickle.UnpicklingError):
        found = _UNSAFE_GLOBAL.search(str(error))
        what = f"a {found.group(1)} object" if found else "pickled Python objects"
        return (f"it holds {what} besides weights, which would run code when unpickled and is "
                "not loaded; if you trust the file, save its weights once: python -c \"import "
                f"torch; m = torch.load('{path}', weights_only=False); torch.save(getattr(m, "
                f"'state_dict', lambda: m)(), '{path}.weights.pth')\" and pass that file")
    text = str(error).strip()
    first = text.split(". ")[0].splitlines()[0] if text else type(error).__name__
    return f"it is truncated or corrupt ({first})"


# Prefixes that wrappers add to every key: DataParallel/DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

# Where each layout keeps the weights: ours, RepDistiller/SimKD/CRD, mdistiller and torchdistill
# under 'model'; akamaster and PyTorch's ImageNet example (``.pth.tar``) under 'state_dict'.
_WEIGHT_ENTRIES = ("model", "state_dict")


def _is_state_dict(value):
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and torch.is_tensor(v) for k, v in value.items()))


def state_dict_of(checkpoint, path, what):
    """The model weights inside a checkpoint of any layout in ``_WEIGHT_ENTRIES``, or a bare
    state dict (torchvision and timm files, safetensors). The prefix that
    (Distributed)DataParallel or torch.compile put before every key is removed; of a whole
    mdistiller distiller (``student.*``, ``teacher.*`` and the method's modules: its
    ``latest``/``best`` files) the student's weights are taken."""
    state = next((checkpoint[k] for k in _WEIGHT_ENTRIES
                  if isinstance(checkpoint, dict) and _is_state_dict(checkpoint.get(k))), None)
    if state is None and _is_state_dict(checkpoint):
        state = checkpoint
    if state is None:
        held = (f"it holds {', '.join(map(str, list(checkpoint)[:6]))}"
                if isinstance(checkpoint, dict) and checkpoint else
                f"it holds a {type(checkpoint).__name__}")
        raise UserError(f"{what} {path} holds no model weights ({held}); expected a state "
                        "dict, bare or under 'model' or 'state_dict'")
    for prefix in _WRAPPER_PREFIXES:
        state = _strip(state, prefix)
    if any(k.startswith("student.") for k in state) and any(k.startswith("teacher.") for k in state):
        state = {k[len("student."):]: v for k, v in state.items() if k.startswith("student.")}
    return state


def _strip(state, prefix):
    if all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_weights(model, state, where, hint="", name=None):
    """Load ``state`` into ``model`` accepting exactly what ``load_state_dict(strict=True)``
    accepts: modules may fill entries of their own (BatchNorm's ``num_batches_tracked``, absent
    from files of PyTorch before 0.4.1, as akamaster's); any other missing or unexpected key,
    or a shape that differs, is one line naming the keys (and ``name``, the model's)."""
    own = model.state_dict()
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (checkpoint vs model: "
                     f"{'; '.join(shapes[:3])})")
    else:
        result = model.load_state_dict(state, strict=False)
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing keys "
                         f"(e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected keys "
                         f"(e.g. {', '.join(result.unexpected_keys[:3])})")
    if parts:
        name = name or getattr(model, "model_name", type(model).__name__)
        raise UserError(f"{where} does not fit {name}: {', '.join(parts)}{hint}")

"""A folder of memory-mapped arrays built once and reused by later runs: the teacher cache
(helper/teacher_cache.py) and FKD's soft labels (helper/fkd_labels.py).

``manifest.json`` says what the folder holds and is written last, so a manifest means the
arrays exist; ``progress.bin`` holds one byte per piece of the build (a view, an epoch's chunk),
set once that piece is written and flushed, so an interrupted build continues where it stopped.
"""
import json
import os
from pathlib import Path

import numpy as np

from helper.errors import UserError
from helper.files import atomic_write

MANIFEST = "manifest.json"
PROGRESS = "progress.bin"


def read_manifest(folder, label: str, remedy: str):
    """The manifest in ``folder``, or None when it has none; an unreadable one is one line
    (``label``: the flag and folder, ``remedy``: what to do)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{label}: cannot read {MANIFEST} ({e}); {remedy}") from None


def mismatch(found: dict, wanted: dict, keys=None, ignore=()) -> str:
    """The first of ``keys`` (default: every key but ``ignore``) in which two manifests
    differ; "" when none does."""
    keys = keys or sorted((set(found) | set(wanted)) - set(ignore))
    return next((k for k in keys if found.get(k) != wanted.get(k)), "")


def create(folder, layout: dict, pieces: int, manifest: dict) -> None:
    """Empty arrays ``{name: (dtype, shape)}`` as ``<name>.bin``, ``pieces`` progress marks
    at 0, then the manifest."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, (dtype, shape) in layout.items():
        np.memmap(folder / f"{name}.bin", dtype=dtype, mode="w+", shape=shape).flush()
    np.zeros(pieces, dtype=np.uint8).tofile(folder / PROGRESS)
    text = json.dumps(manifest, indent=1).encode()
    atomic_write(folder / MANIFEST, lambda f: f.write(text))


def done(folder) -> np.ndarray:
    """One uint8 per piece: 1 where it is written."""
    return np.fromfile(Path(folder) / PROGRESS, dtype=np.uint8)


def mark_done(folder, piece: int) -> None:
    """Set ``piece``'s mark, on disk (its data must be flushed first)."""
    fd = os.open(Path(folder) / PROGRESS, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x01", int(piece))
        os.fsync(fd)
    finally:
        os.close(fd)

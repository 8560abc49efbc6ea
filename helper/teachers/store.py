"""A folder of memory-mapped arrays built once and reused by later runs: the teacher cache
(helper/teachers/cache.py) and FKD's soft labels (helper/fkd_labels.py).

``manifest.json`` says what the folder holds and is written last, so a manifest means the
arrays exist; ``progress.bin`` holds one byte per piece of the build (a view, an epoch's chunk),
set once that piece is written and flushed, so an interrupted build continues where it stopped.

A build (``building``) logs its progress at most every ``PROGRESS_EVERY`` seconds and at its last
piece, and turns Ctrl-C into one line saying what is kept and that the same command continues.
"""
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from helper.core.errors import UserError
from helper.core.files import atomic_write

MANIFEST = "manifest.json"
PROGRESS = "progress.bin"
PROGRESS_EVERY = 10.0  # seconds between a build's progress lines


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


def refuse_other(found: dict, wanted: dict, *, label: str, what: str, this: str,
                 ignore=()) -> None:
    """One line when the manifest ``found`` differs from ``wanted`` (but for ``ignore``),
    naming the first field that does (``label``: the flag and folder; ``what``: the kind of
    folder, "cache"; ``this``: who wants it, "this run")."""
    key = mismatch(found, wanted, ignore=ignore)
    if key:
        raise UserError(f"{label} holds another {what} ({key}: {found.get(key)!r}, {this}: "
                        f"{wanted.get(key)!r}); give another folder, or delete it to rebuild")


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


def mark_done(folder, piece: int, arrays=()) -> None:
    """Flush ``arrays`` (the memory maps written), then set ``piece``'s mark, on disk."""
    for array in arrays:
        array.flush()
    fd = os.open(Path(folder) / PROGRESS, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\x01", int(piece))
        os.fsync(fd)
    finally:
        os.close(fd)


class Progress:
    """The clock of a build of ``total`` pieces (see ``building``)."""

    def __init__(self, total: int, log):
        self.total, self.log = total, log
        self.start = self.last = time.perf_counter()

    def step(self, done: int, line) -> None:
        """``done`` pieces of ``total`` are built: log ``line(seconds spent, seconds left)``
        when ``PROGRESS_EVERY`` seconds have passed since the last line, or at the last
        piece."""
        now = time.perf_counter()
        if now - self.last > PROGRESS_EVERY or done == self.total:
            self.last, spent = now, now - self.start
            self.log(line(spent, spent / done * (self.total - done)))

    def spent(self) -> float:
        return time.perf_counter() - self.start


@contextmanager
def building(total: int, log, interrupted):
    """A build of ``total`` pieces: yields its ``Progress``. Ctrl-C inside becomes a
    KeyboardInterrupt whose message is ``interrupted()`` (what is kept, and that running the
    same command again continues), without the traceback of where it struck."""
    progress = Progress(total, log)
    try:
        yield progress
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted()) from None

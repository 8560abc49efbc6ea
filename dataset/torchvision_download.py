"""Fetching a missing data set with torchvision, for the data sets read from torchvision's own
layout (``dataset/cifar.py``, ``dataset/mnist.py``): one download, its failures in one line."""
import shutil
from pathlib import Path

from helper.core.errors import UserError


def one_line(exc: BaseException) -> str:
    """``exc`` as ``Type: message`` on one line (``Type`` alone when it has no message)."""
    text = ' '.join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def download_missing(tv_class: str, root: Path, download: bool, *, title: str, where: str,
                     expected: str, hint: str, still_missing) -> None:
    """Download the train and test splits of ``torchvision.datasets.<tv_class>`` into ``root``,
    which lacks files of the data set; a ``UserError`` when that is not allowed or fails.

    ``download`` false refuses at once: ``"<title> not found in <where> (<expected>)<hint>"``.
    A failed download (offline, permission, corrupt archive, ...) removes ``root`` again when it
    did not exist before, so that nothing half-downloaded is left behind. ``still_missing()``,
    asked after the download, says what is still absent ("" or None: nothing); the download
    failed when it raised or left something absent: the refusal then goes on with
    ``" and the download failed: <reason><hint>"``.
    """
    if not download:
        raise UserError(f"{title} not found in {where} ({expected}){hint}")
    existed = root.exists()
    try:
        import torchvision.datasets
        cls = getattr(torchvision.datasets, tv_class)
        cls(root=str(root), train=True, download=True)
        cls(root=str(root), train=False, download=True)
        reason = None
    except Exception as e:  # offline, permission, corrupt archive, ...
        reason = one_line(e)
        if not existed:  # leave nothing half-downloaded behind in a folder we created
            shutil.rmtree(root, ignore_errors=True)
    missing = still_missing()
    if reason is None and missing:
        reason = missing
    if reason is not None:
        raise UserError(f"{title} not found in {where} ({expected}) and the download failed: "
                        f"{reason}{hint}")

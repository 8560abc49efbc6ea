"""MNIST and Fashion-MNIST from the original idx files, held in memory as uint8.

Layout (what ``torchvision.datasets.MNIST/FashionMNIST(root=data_folder, download=True)``
writes; the ``.gz`` files are accepted as well)::

    <data_folder>/MNIST/raw/{train-images-idx3-ubyte, train-labels-idx1-ubyte,
                             t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte}
    <data_folder>/FashionMNIST/raw/...   the same names

Fashion-MNIST is also found in ``/usr/share/datasets/fashion-mnist/`` (the Debian/Ubuntu package
``dataset-fashion-mnist``, which ships the same four files gzipped).

No augmentation by default; ``jitter > 0`` is a random translation of up to ``jitter`` pixels each
way (pad with zeros, random crop back, no flip), as used for the teacher of Hinton et al. 2015
("Distilling the knowledge in a neural network", jitter of up to 2 pixels).
"""
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from helper.core.errors import UserError

from .torchvision_download import download_missing, one_line

NORMALIZATION = {
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
}

FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}

SYSTEM_FASHION_MNIST = Path('/usr/share/datasets/fashion-mnist')

_SPECS = {
    'mnist': {'title': 'MNIST', 'folder': 'MNIST', 'tv_class': 'MNIST', 'system': []},
    'fashion_mnist': {'title': 'Fashion-MNIST', 'folder': 'FashionMNIST',
                      'tv_class': 'FashionMNIST', 'system': [SYSTEM_FASHION_MNIST]},
}


def _no_access(path, exc: OSError) -> UserError:
    """Permission denied on ``path`` or one of the folders above it: name the first one that
    this user cannot read, and the fix."""
    path = Path(path).absolute()
    blocked = path
    for step in [*reversed(path.parents), path]:
        if step.is_dir() and not os.access(step, os.R_OK | os.X_OK):
            blocked = step
            break
    kind, chmod = ('folder', 'chmod -R u+rX') if blocked.is_dir() else ('file', 'chmod u+r')
    return UserError(f"cannot read the {kind} {blocked} ({one_line(exc)}); give this user "
                     f"access ({chmod} {blocked}, or ask its owner) or pass another --data_folder")


def _bad(path, what: str) -> UserError:
    return UserError(f"idx file {path} {what}; it is corrupt or incomplete: delete it and "
                     f"download the data set again")


def read_idx(path, ndim: int) -> np.ndarray:
    """Read an idx file of unsigned bytes with ``ndim`` dimensions (plain or ``.gz``).

    The header is the magic number ``0x0000 08 <ndim>`` followed by ``ndim`` big-endian uint32
    sizes; the file must hold exactly that many bytes after it. Anything else is a
    ``UserError`` naming the file.
    """
    path = Path(path)
    try:
        if path.suffix == '.gz':
            with gzip.open(path, 'rb') as f:
                data = bytearray(f.read())
        else:
            data = bytearray(path.stat().st_size)
            with open(path, 'rb') as f:
                f.readinto(data)
    except PermissionError as e:
        raise _no_access(path, e) from None
    except (OSError, EOFError, zlib.error) as e:
        raise _bad(path, f"cannot be read ({one_line(e)})") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad(path, f"is only {len(data)} bytes long")
    magic = struct.unpack('>I', bytes(data[:4]))[0]
    if magic != 0x0800 + ndim:
        raise _bad(path, f"has magic number 0x{magic:08x}, expected 0x{0x0800 + ndim:08x} "
                         f"(unsigned bytes, {ndim} dimensions)")
    dims = struct.unpack('>' + 'I' * ndim, bytes(data[4:header]))
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) != header + size:
        raise _bad(path, f"holds {len(data) - header} data bytes, its header says "
                         f"{'x'.join(map(str, dims))} = {size}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, name: str):
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first), else None."""
    for candidate in (folder / name, folder / (name + '.gz')):
        if candidate.is_file():
            return candidate
    return None


def _complete(folder: Path):
    paths = {key: _find(folder, name) for key, name in FILES.items()}
    return paths if all(paths.values()) else None


def _locate(name: str, root: Path, download: bool):
    spec = _SPECS[name]
    folder = root / spec['folder'] / 'raw'
    for candidate in [folder] + spec['system']:
        try:
            paths = _complete(candidate)
        except PermissionError as e:  # Path.is_file() raises it, for a folder without r/x bits
            raise _no_access(candidate, e) from None
        if paths:
            return paths
    expected = f"expected {', '.join(FILES.values())} (or .gz) as in torchvision's layout"
    also = ''.join(f" or {p}" for p in spec['system'])
    if name == 'fashion_mnist':
        hint = "; download it, apt-get install dataset-fashion-mnist, or pass --data_folder"
    else:
        hint = "; download it or pass --data_folder"
    download_missing(spec['tv_class'], root, download, title=spec['title'],
                     where=f"{folder}{also}", expected=expected, hint=hint,
                     still_missing=lambda: None if _complete(folder) else
                     'files still missing after it')
    return _complete(folder)


def load_mnist(name: str, data_folder, download: bool = True):
    """Return ``(train_images, train_labels, test_images, test_labels, num_classes)``.

    ``name`` is 'mnist' or 'fashion_mnist'. Images are uint8 (N, 1, 28, 28), labels int64.
    """
    root = Path(os.path.expanduser(str(data_folder)))
    paths = _locate(name, root, download)
    out = []
    for split in ('train', 'test'):
        img_path, lab_path = paths[split + '_images'], paths[split + '_labels']
        images = read_idx(img_path, 3)
        labels = read_idx(lab_path, 1)
        if images.shape[1:] != (28, 28):
            raise _bad(img_path, f"holds images of {images.shape[1]}x{images.shape[2]} pixels, "
                                 f"expected 28x28")
        if len(labels) != len(images):
            raise UserError(f"{lab_path} has {len(labels)} labels but {img_path} has "
                            f"{len(images)} images; download the data set again")
        if len(labels) and labels.max() > 9:
            raise _bad(lab_path, f"has label {labels.max()}, expected 0..9")
        out.append(torch.from_numpy(images).unsqueeze(1))
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return out[0], out[1], out[2], out[3], 10

"""CIFAR-10 and CIFAR-100 from torchvision's python pickle layout, held in memory as uint8.

Layout (what ``torchvision.datasets.CIFAR10/100(root=data_folder, download=True)`` writes)::

    <data_folder>/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, batches.meta}
    <data_folder>/cifar-100-python/{train, test, meta}

Each file is a pickled dict with ``data`` ((N, 3072) uint8, channel-major 3x32x32) and
``labels`` (CIFAR-10) or ``fine_labels`` (CIFAR-100); keys may be ``str`` or ``bytes``
depending on how the file was written and read, both are accepted. The pickles are read by an
unpickler that builds only builtin containers and numpy arrays (``_DataUnpickler``), so a file
that names other code to run is refused instead of run (torchvision's full ``pickle.load``
would run it).

Augmentation and normalisation are RepDistiller's (``RandomCrop(32, padding=4)``,
``RandomHorizontalFlip()``, ``Normalize`` with the CIFAR-100 mean and std, which RepDistiller
and SimKD use for CIFAR-100 and which are used here for CIFAR-10 as well). Other sources'
constants are offered by ``--cifar_normalization`` (``NORMALIZATIONS``, ``normalization``).
"""
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from helper.core.errors import UserError

from .torchvision_download import download_missing, one_line

MEAN = (0.5071, 0.4867, 0.4408)
STD = (0.2675, 0.2565, 0.2761)
# --cifar_normalization (dataset/augment.py): the (mean, std) of each preset, per data set.
#   repdistiller  the default: RepDistiller's CIFAR-100 constants for both data sets
#   per_dataset   each data set its own, as hankyul2/KnowledgeDistillation src/dataset.py
#                 lines 27-32 (22f39c5, unchanged to f019dfc) writes them
#   reviewkd      CIFAR-10's, in /255 form, for both: dvlab-research/ReviewKD
#                 CIFAR-100/train.py lines 96-97 (49015fb)
_REVIEWKD = (tuple(v / 255 for v in (125.3, 123.0, 113.9)), tuple(v / 255 for v in (63.0, 62.1, 66.7)))
NORMALIZATIONS = {
    'repdistiller': {'cifar10': (MEAN, STD), 'cifar100': (MEAN, STD)},
    'per_dataset': {'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))},
    'reviewkd': {'cifar10': _REVIEWKD, 'cifar100': _REVIEWKD},
}


def normalization(name: str, preset: str = 'repdistiller'):
    """``(mean, std)`` that ``--cifar_normalization preset`` gives data set ``name``."""
    return NORMALIZATIONS[preset][name]
PADDING = 4

_SPECS = {
    'cifar10': {
        'title': 'CIFAR-10', 'folder': 'cifar-10-batches-py', 'num_classes': 10,
        'train': ['data_batch_%d' % i for i in range(1, 6)], 'test': ['test_batch'],
        'meta': 'batches.meta', 'label_key': 'labels', 'tv_class': 'CIFAR10',
    },
    'cifar100': {
        'title': 'CIFAR-100', 'folder': 'cifar-100-python', 'num_classes': 100,
        'train': ['train'], 'test': ['test'],
        'meta': 'meta', 'label_key': 'fine_labels', 'tv_class': 'CIFAR100',
    },
}


# What a CIFAR pickle may name: numpy's array and dtype reconstruction, as numpy 1 and 2 and
# Python 2's cPickle (the published files, protocol 2) write them, and the builtins with which
# Python 3's protocols 0-2 spell bytes. Nothing else is looked up, so nothing else can run.
_ALLOWED_GLOBALS = {
    ('numpy', 'ndarray'), ('numpy', 'dtype'),
    ('numpy.core.multiarray', '_reconstruct'), ('numpy._core.multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'), ('numpy._core.numeric', '_frombuffer'),
    ('_codecs', 'encode'), ('builtins', 'bytes'), ('__builtin__', 'bytes'),
    ('builtins', 'bytearray'), ('__builtin__', 'bytearray'),
}


class _CodeInPickle(pickle.UnpicklingError):
    """The pickle names something other than the data types of ``_ALLOWED_GLOBALS``."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _CodeInPickle(f"{module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, 'rb') as f:
            # latin1: Python 2's byte strings (the published files) become str, as torchvision
            obj = _DataUnpickler(f, encoding='latin1').load()
    except _CodeInPickle as e:
        raise UserError(f"CIFAR file {path} names code to run ({e}), which is not loaded "
                        f"(unsafe): a CIFAR file holds only arrays, lists and strings; delete it "
                        f"and download the data set again") from None
    except Exception as e:  # truncated or not a pickle
        raise UserError(f"cannot read CIFAR file {path} ({one_line(e)}); it is corrupt or "
                        f"incomplete: delete it and download the data set again") from None
    if not isinstance(obj, dict):
        raise UserError(f"CIFAR file {path} holds a {type(obj).__name__}, not a dict as in "
                        f"torchvision's layout; delete it and download the data set again")
    return {k.decode('latin1') if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _read_split(folder: Path, files, label_key: str, num_classes: int):
    images, labels = [], []
    for name in files:
        path = folder / name
        entry = _unpickle(path)
        if 'data' not in entry or label_key not in entry:
            raise UserError(f"CIFAR file {path} lacks the keys 'data' and '{label_key}' of "
                            f"torchvision's layout; delete it and download the data set again")
        data = np.asarray(entry['data'])
        lab = np.asarray(entry[label_key])
        if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
                or lab.ndim != 1 or len(lab) != len(data)):
            raise UserError(f"CIFAR file {path} has data {data.dtype} {data.shape} and "
                            f"{lab.shape} labels, expected uint8 (N, 3072) and N labels; "
                            f"delete it and download the data set again")
        if len(lab) and (lab.min() < 0 or lab.max() >= num_classes):
            raise UserError(f"CIFAR file {path} has labels outside 0..{num_classes - 1}; "
                            f"is it the other CIFAR? Download the right data set again")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab.astype(np.int64))
    x = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    y = torch.from_numpy(np.concatenate(labels))
    return x, y


def converted_from(name: str, data_folder):
    """What ``scripts/image_folder_to_cifar.py`` recorded that the data folder was made from
    (e.g. "image files (.jpg) by ..."), or None for torchvision's files (or none at all)."""
    spec = _SPECS[name]
    meta = Path(os.path.expanduser(str(data_folder))) / spec['folder'] / spec['meta']
    return _unpickle(meta).get('converted_from') if meta.is_file() else None


def load_cifar(name: str, data_folder, download: bool = True):
    """Return ``(train_images, train_labels, test_images, test_labels, num_classes)``.

    Images are uint8 (N, 3, 32, 32), labels int64. Missing files are downloaded with
    torchvision when ``download`` is true; anything that still cannot be loaded is a
    ``UserError`` naming the folder (or the bad file) and the expected layout.
    """
    spec = _SPECS[name]
    root = Path(os.path.expanduser(str(data_folder)))
    folder = root / spec['folder']
    required = spec['train'] + spec['test'] + [spec['meta']]
    expected = (f"expected {', '.join(required)} as in torchvision's layout")

    def still_missing():
        missing = [f for f in required if not (folder / f).is_file()]
        return f"{', '.join(missing)} still missing after it" if missing else None

    if still_missing():
        download_missing(spec['tv_class'], root, download, title=spec['title'], where=folder,
                         expected=expected, hint="; download it or pass --data_folder",
                         still_missing=still_missing)

    _unpickle(folder / spec['meta'])  # verify the whole folder loads, meta included
    n = spec['num_classes']
    train_x, train_y = _read_split(folder, spec['train'], spec['label_key'], n)
    test_x, test_y = _read_split(folder, spec['test'], spec['label_key'], n)
    return train_x, train_y, test_x, test_y, n

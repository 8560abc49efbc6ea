"""Folder data sets: ImageNet, CUB-200 and any ImageFolder, read from JPEGs on disk.

    train_loader, val_loader, info = build_folder_loaders('imagenet', './data', 256, device,
                                                          seed=0, num_workers=8)

Layouts (torchvision ``ImageFolder``: one folder per class, sorted class names give the
labels; the validation folder must hold the same class folders as ``train/``)::

    imagenet  <data_folder>/train/<wnid>/*.JPEG   <data_folder>/val/<wnid>/*.JPEG
              (PyTorch's ImageNet example; MGD's ``valid/`` is accepted as well)
    cub200    <data_folder>/train/<class>/*.jpg   <data_folder>/valid/<class>/*.jpg
              (MGD's README; ``val/`` is accepted as well)
    folder    <data_folder>/train/<class>/*       <data_folder>/val/ or <data_folder>/test/

Each may also sit one level down, in ``<data_folder>/imagenet/`` (SimKD/RepDistiller's
``./data/imagenet``) or ``<data_folder>/cub200/``.

Transforms are the standard ImageNet ones: ``RandomResizedCrop(224)`` +
``RandomHorizontalFlip()`` for training, ``Resize(256)`` + ``CenterCrop(224)`` for evaluation;
``--input_size N`` makes the crops N (and the resize ``int(N * 256 / 224)``), and the presets
of ``dataset/augment.py`` add their per-image transforms after the flip.
Workers return uint8 images (a quarter of the bytes of float through shared and pinned
memory); they are normalised with the ImageNet mean and std on ``device`` by the same
operations as ``ToTensor`` + ``Normalize`` (bit-identical results).

``FolderLoader`` is a ``Loader`` (``dataset/loader.py``): batches ``{'images', 'targets',
'index'}`` on ``device``, ``set_epoch``, ``__len__``, the sizes, and ``unaugmented()``.

Sharding and order (``EpochSampler``): the same as ``TensorLoader`` and as torch's
``DistributedSampler(seed=seed * 100003)``: one permutation per epoch from a generator
seeded with ``epoch_seed(seed, epoch)``, padded to a multiple of ``world_size`` by repeating
its start (training), rank ``r`` taking positions ``r::world_size`` (``loader.shard``).
Validation is not shuffled nor padded: each sample is seen by exactly one rank.

Reproducibility: the same generator then draws one seed per position of the epoch, and each
sample's augmentation runs with torch's RNG seeded with it (in the worker, or inside
``fork_rng`` in the main process). So an epoch -- order and every crop and flip -- is a
function of ``(seed, epoch)`` alone: the same with any ``num_workers``, persistent workers
or not, and after ``--resume``. (Seeding the DataLoader's generator is not enough: persistent
workers take their seeds once, when they start.)

``--dali cpu|gpu`` builds DALI pipelines over the same file lists instead (``dataset/dali.py``).
"""
import copy
import tarfile
from functools import partial
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler
from torchvision.datasets import ImageFolder

from helper.core.errors import UserError

from .dali import DaliLoader, check_dali
from .imagenet_transforms import CROP, IMAGENET_MEAN, IMAGENET_STD, eval_transform, train_transform
from .loader import batches_per_epoch, check_batch_and_rank, shard
from .tensor_loader import epoch_seed, normalize

# name: title, sub-folders tried below --data_folder, validation folder names in order
_SPECS = {
    'imagenet': {'title': 'ImageNet', 'subdirs': ('imagenet',), 'val': ('val', 'valid')},
    'cub200': {'title': 'CUB-200', 'subdirs': ('cub200',), 'val': ('valid', 'val')},
    'folder': {'title': 'the image folder', 'subdirs': (), 'val': ('val', 'test')},
}
FOLDER_DATASET_NAMES = list(_SPECS)


def canonical_folder_name(name):
    """'imagenet', 'cub200' or 'folder' for spellings such as 'ImageNet' or 'CUB-200', else None."""
    key = str(name).strip().lower().replace('-', '').replace('_', '')
    return key if key in _SPECS else None


# ----------------------------------------------------------------------------------------------
# Finding and scanning the folders

class IndexedImageFolder(ImageFolder):
    """``ImageFolder`` whose items are ``(image, target, index)``.

    ``class_to_idx``: use this mapping instead of the folder's own (the validation split takes
    the training split's, so that labels agree). An item is fetched by its index, or by a key
    ``(index, sample_seed)`` (what ``EpochSampler`` yields): the transform then runs with
    torch's RNG seeded with ``sample_seed``.
    """

    def __init__(self, root, transform=None, class_to_idx=None):
        self._fixed_classes = dict(class_to_idx) if class_to_idx is not None else None
        super().__init__(str(root), transform=transform)

    def find_classes(self, directory):
        if self._fixed_classes is None:
            return super().find_classes(directory)
        classes = sorted(self._fixed_classes, key=self._fixed_classes.get)
        return classes, dict(self._fixed_classes)

    def __getitem__(self, key):
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        path, target = self.samples[index]
        image = self.loader(path)
        if self.transform is not None:
            image = _seeded(self.transform, image, sample_seed)
        return image, target, index


def _seeded(transform, image, sample_seed):
    if sample_seed is None:
        return transform(image)
    if torch.utils.data.get_worker_info() is not None:  # a worker's RNG is its own
        torch.default_generator.manual_seed(sample_seed)
        return transform(image)
    with torch.random.fork_rng(devices=[]):  # main process (num_workers=0): leave its RNG alone
        torch.default_generator.manual_seed(sample_seed)
        return transform(image)


def _layout(name, data_folder):
    spec = _SPECS[name]
    val_names = ' or '.join(f"{v}/" for v in spec['val'])
    where = str(data_folder)
    if spec['subdirs']:
        where += f" (or {data_folder}/{spec['subdirs'][0]})"
    return f"expected {where} to hold train/<class>/<images> and {val_names}<class>/<images>"


def find_split_folders(name, data_folder):
    """``(train_dir, val_dir)`` of a folder data set, or a UserError naming what is missing."""
    spec = _SPECS[name]
    data_folder = Path(data_folder).expanduser()
    if not data_folder.is_dir():
        raise UserError(f"--data_folder {data_folder} does not exist; {_layout(name, data_folder)}")
    candidates = [data_folder / s for s in spec['subdirs']] + [data_folder]
    root = next((c for c in candidates if (c / 'train').is_dir()), None)
    if root is None:
        raise UserError(f"{spec['title']} not found: no train/ folder in {data_folder}; "
                        f"{_layout(name, data_folder)}")
    val = next((root / v for v in spec['val'] if (root / v).is_dir()), None)
    if val is None:
        names = ' or '.join(v + '/' for v in spec['val'])
        raise UserError(f"{spec['title']} in {root} has no {names} folder; "
                        f"{_layout(name, data_folder)}")
    return root / 'train', val


def scan_folder_dataset(name, data_folder):
    """The training and validation ``IndexedImageFolder`` (without transforms) of a data set."""
    name = canonical_folder_name(name) or name
    if name not in _SPECS:
        raise UserError(f"unknown folder data set {name!r}; choose one of: {', '.join(_SPECS)}")
    train_dir, val_dir = find_split_folders(name, data_folder)
    train = _image_folder(train_dir)
    val_classes = sorted(p.name for p in val_dir.iterdir() if p.is_dir())
    if val_classes != train.classes:
        extra = sorted(set(val_classes) - set(train.classes))
        missing = sorted(set(train.classes) - set(val_classes))
        detail = "; ".join(part for part in (
            f"not in train/: {', '.join(extra[:5])}" if extra else "",
            f"missing: {', '.join(missing[:5])}" if missing else "") if part)
        raise UserError(f"the class folders of {val_dir} differ from those of {train_dir} "
                        f"({detail}); both splits need the same class folders")
    val = _image_folder(val_dir, train.class_to_idx)
    return train, val


def _image_folder(folder, class_to_idx=None):
    try:
        return IndexedImageFolder(folder, class_to_idx=class_to_idx)
    except FileNotFoundError as e:  # no class folders, or class folders without images
        message = str(e).strip().rstrip('.')
        raise UserError(f"{folder}: {message}; every class needs a folder with at least one "
                        f"image in it") from None


# ----------------------------------------------------------------------------------------------
# Sampler and loader

class EpochSampler(Sampler):
    """Keys ``(index, sample_seed)`` of one rank for one epoch (see the module docstring).

    ``shuffle`` and ``pad`` as ``TensorLoader``; ``augment``: draw per-sample seeds (else the
    keys carry ``None``).
    """

    def __init__(self, n, *, shuffle, pad, augment, seed=0, rank=0, world_size=1):
        self.n = int(n)
        self.shuffle, self.pad, self.augment = bool(shuffle), bool(pad), bool(augment)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.epoch = 0
        self.positions, self.total_size = shard(self.n, self.rank, self.world_size, pad=self.pad)
        self.num_samples = len(self.positions)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def plan(self, epoch=None):
        """This rank's sample indices and per-sample seeds (or None) for ``epoch``."""
        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        seeds = None
        if self.augment:
            seeds = torch.randint(0, 2 ** 62, (self.total_size,), generator=g)[self.positions]
        return order[self.positions % self.n], seeds

    def __iter__(self):
        indices, seeds = self.plan()
        chunk = 1 << 16  # convert to Python ints piecewise (ImageNet: 1.28M keys per epoch)
        for start in range(0, len(indices), chunk):
            part = indices[start:start + chunk].tolist()
            if seeds is None:
                yield from ((i, None) for i in part)
            else:
                yield from zip(part, seeds[start:start + chunk].tolist())

    def __len__(self):
        return self.num_samples


class FolderLoader:
    """A torchvision ``DataLoader`` over an ``IndexedImageFolder``, yielding the toolbox's batch
    dicts on ``device`` (see the module docstring)."""

    def __init__(self, dataset, batch_size, device, *, train, seed=0, rank=0, world_size=1,
                 num_workers=0, drop_last=False, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 eval_transform=eval_transform):
        self.dataset = dataset
        self.eval_transform = eval_transform
        self.device = torch.device(device)
        self._cuda = self.device.type == 'cuda'
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.drop_last = bool(drop_last)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_workers = int(num_workers)
        self.epoch = 0
        self.sampler = EpochSampler(len(dataset), shuffle=train, pad=train, augment=train,
                                    seed=seed, rank=rank, world_size=world_size)
        self.generator = torch.Generator()
        self.loader = DataLoader(dataset, batch_size=self.batch_size, sampler=self.sampler,
                                 num_workers=num_workers, pin_memory=self._cuda,
                                 persistent_workers=num_workers > 0, generator=self.generator,
                                 drop_last=self.drop_last)
        self.dataset_size = len(dataset)
        self.num_samples = self.sampler.num_samples
        self.targets_cpu = torch.as_tensor(dataset.targets, dtype=torch.int64)
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(shape).to(self.device)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)
        self.sampler.set_epoch(epoch)

    def __len__(self):
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

    def __iter__(self):
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        yield from self._batches(self.loader)

    def unaugmented(self):
        """This rank's samples (padded as in training) in data-set order through the evaluation
        transform (``Resize(256)`` + ``CenterCrop(224)``, or the ``--input_size`` ones): MGD's
        matching pass."""
        dataset = copy.copy(self.dataset)  # shares the file list, not the transform
        dataset.transform = self.eval_transform()
        sampler = EpochSampler(len(dataset), shuffle=False, pad=self.train, augment=False,
                               rank=self.rank, world_size=self.world_size)
        loader = DataLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                            num_workers=self.num_workers, pin_memory=self._cuda)
        return self._batches(loader)

    def _batches(self, loader):
        for images, targets, index in loader:
            images = images.to(self.device, non_blocking=self._cuda)
            yield {'images': normalize(images, self.mean, self.std),
                   'targets': targets.to(self.device, non_blocking=self._cuda),
                   'index': index.to(self.device, non_blocking=self._cuda)}

    def __repr__(self):
        return (f"FolderLoader(root={self.dataset.root}, dataset_size={self.dataset_size}, "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, device={self.device})")


def build_folder_loaders(name, data_folder, batch_size, device, *, seed=0, rank=0, world_size=1,
                         num_workers=4, dali=None, drop_last=False, augment=None):
    """Training and validation loaders of a folder data set.

    Args:
        name: 'imagenet', 'cub200' or 'folder' (see the module docstring for the layouts).
        data_folder: the folder holding ``train/`` and the validation folder (or the
            data set's sub-folder, e.g. ``imagenet/``).
        batch_size: samples per batch and per process.
        device: where batches are produced.
        seed: with the epoch, seeds the order and augmentation of an epoch.
        rank, world_size: this process's shard (training padded like ``DistributedSampler``,
            validation split exactly).
        num_workers: DataLoader worker processes, or DALI threads with ``dali``.
        dali: None (torchvision DataLoader), 'cpu' or 'gpu' (``dataset/dali.py``).
        drop_last: drop the last, smaller training batch.
        augment: an ``AugmentConfig`` (``dataset/augment.py``): its ``input_size`` and per-image
            presets; None for the standard transforms.

    Returns:
        ``(train_loader, val_loader, info)`` with ``info = {'num_classes', 'input_size'
        (3, 224, 224; the ``--input_size`` otherwise), 'train_size', 'val_size'}``.
    """
    key = canonical_folder_name(name)
    if key is None:
        raise UserError(f"unknown folder data set {name!r}; choose one of: {', '.join(_SPECS)}")
    check_batch_and_rank(batch_size, rank, world_size)
    if num_workers is None or int(num_workers) < 0:
        raise UserError(f"--num_workers must be >= 0, got {num_workers!r}")
    if dali not in (None, 'cpu', 'gpu'):
        raise UserError(f"--dali must be cpu or gpu, got {dali!r}")
    num_workers = int(num_workers)
    device = torch.device(device)
    if dali is not None:
        check_dali(dali, device)  # fail before the (possibly long) folder scan

    train_set, val_set = scan_folder_dataset(key, data_folder)
    for split in (train_set, val_set):
        if len(split) < world_size:
            raise UserError(f"{split.root} holds {len(split)} images, fewer than the "
                            f"{world_size} processes; use fewer processes or more data")
    crop = (augment.input_size if augment is not None else None) or CROP
    info = {'num_classes': len(train_set.classes), 'input_size': (3, crop, crop),
            'train_size': len(train_set), 'val_size': len(val_set)}
    common = dict(seed=seed, rank=rank, world_size=world_size)
    if dali is not None:
        threads = max(1, num_workers)
        common.update(mode=dali, num_threads=threads, crop=crop)
        train_loader = DaliLoader(train_set.samples, batch_size, device, train=True,
                                  drop_last=drop_last, presets=augment, **common)
        val_loader = DaliLoader(val_set.samples, batch_size, device, train=False, **common)
        return train_loader, val_loader, info
    train_set.transform = train_transform(crop, augment)
    val_set.transform = eval_transform(crop)
    common.update(num_workers=num_workers, eval_transform=partial(eval_transform, crop))
    train_loader = FolderLoader(train_set, batch_size, device, train=True, drop_last=drop_last,
                                **common)
    val_loader = FolderLoader(val_set, batch_size, device, train=False, **common)
    return train_loader, val_loader, info


# ----------------------------------------------------------------------------------------------
# Archives (tests, benchmarks)

def extract_image_archive(archive, dest, *, per_class=None, classes=None, splits=None):
    """Extract an ImageFolder archive laid out as ``<top>/<split>/<class>/<file>`` (such as
    ``cifar10-jpeg.tar.gz``) into ``dest``, optionally only some splits and classes and the
    first ``per_class`` files of each class (in archive order). Returns ``dest/<top>``.

    One streaming pass; with ``splits``, ``classes`` and ``per_class`` all given it stops as
    soon as it has them all."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise UserError(f"archive {archive} does not exist")
    counts, top, done = {}, None, False
    # With splits, classes and per_class all given, stop reading once every pair is complete.
    wanted = ([(s, c) for s in splits for c in classes]
              if splits and classes and per_class is not None else None)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode='r|*') as tar:  # one streaming pass
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) != 4:
                continue
            top = top or parts[0]
            _, split, cls, _ = parts
            if (splits and split not in splits) or (classes and cls not in classes):
                continue
            n = counts.get((split, cls), 0)
            if per_class is not None and n >= per_class:
                continue
            counts[(split, cls)] = n + 1
            if wanted is not None and all(counts.get(k, 0) >= per_class for k in wanted):
                done = True
            try:
                tar.extract(member, dest, filter='data')
            except TypeError:  # Python without extraction filters
                tar.extract(member, dest)
            if done:
                break
    if top is None:
        raise UserError(f"{archive} holds no <top>/<split>/<class>/<file> images")
    return dest / top

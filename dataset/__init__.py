"""Data loading: ``build_loaders(name, ...)`` for the small data sets held in memory.

    train_loader, val_loader, info = build_loaders('cifar100', './data', 64, device)
    for epoch in range(start_epoch, epochs):
        train_loader.set_epoch(epoch)
        for batch in train_loader:      # {'images', 'targets', 'index'}, all on `device`
            ...

See ``dataset/tensor_loader.py`` for how batches are made and why an epoch is reproducible from
``(seed, epoch)`` alone, and ``dataset/loader.py`` for the interface every loader offers.
"""
from pathlib import Path

from helper.core.errors import UserError

from . import batch_keys, cifar, mnist
from .augment import AugmentConfig, MixLoader, SampleAugment
from .folder import FOLDER_DATASET_NAMES, build_folder_loaders
from .loader import check_batch_and_rank
from .options import DATASET_NAMES, DataOptions
from .tensor_loader import RandomCropFlip, TensorLoader, crop_flip, epoch_seed, normalize

__all__ = ['DATASET_NAMES', 'build_loaders', 'load_arrays', 'TensorLoader', 'RandomCropFlip',
           'crop_flip', 'normalize', 'epoch_seed', 'AugmentConfig', 'DataOptions']


def _canonical(name: str) -> str:
    key = str(name).strip().lower().replace('-', '').replace('_', '')  # also 'CIFAR-100'
    for known in DATASET_NAMES:
        if key == known.replace('_', ''):
            return known
    raise UserError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")


def load_arrays(name: str, data_folder, download: bool = True):
    """``(train_images, train_labels, test_images, test_labels, num_classes)`` of a data set,
    images uint8 (N, C, H, W) and labels int64, on the CPU."""
    name = _canonical(name)
    if name in FOLDER_DATASET_NAMES:
        raise UserError(f"{name} is a folder data set read from disk, not held in memory; "
                        "use build_loaders")
    if name.startswith('cifar'):
        return cifar.load_cifar(name, data_folder, download=download)
    return mnist.load_mnist(name, data_folder, download=download)


def _load_rank0_first(name, data_folder, world_size, rank):
    """Load the arrays; when a process group is up, rank 0 goes first (and downloads what is
    missing) while the others wait, so that ranks never download into the same folder at once."""
    import torch.distributed as dist
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return load_arrays(name, data_folder)
    if rank == 0:
        try:
            arrays = load_arrays(name, data_folder)
        finally:
            dist.barrier()  # release the other ranks even when loading failed
        return arrays
    dist.barrier()
    # Files rank 0 fetched are found here; a rank on another machine downloads its own copy.
    return load_arrays(name, data_folder)


def build_loaders(name, data_folder, batch_size, device, *, seed=0, rank=0, world_size=1,
                  jitter=0, drop_last=False, num_workers=4, dali=None, augment=None,
                  eval_drop_last=False):
    """Build the training and validation loaders of a data set.

    Args:
        name: one of ``DATASET_NAMES``.
        data_folder: root folder in torchvision's layout (see ``dataset/cifar.py``,
            ``dataset/mnist.py``); missing data is downloaded there with torchvision.
        batch_size: samples per batch and per process (training and validation).
        device: where batches are produced (augmentation and normalisation run there).
        seed: with the epoch, seeds the shuffle and augmentation of that epoch.
        rank, world_size: this process's shard; training pads the shared permutation to a
            multiple of ``world_size`` (like ``DistributedSampler``), validation does not pad,
            so each validation sample is counted exactly once over all ranks.
        jitter: MNIST / Fashion-MNIST only: random translation of up to ``jitter`` pixels.
        drop_last: drop the last, smaller training batch.
        augment: an ``AugmentConfig`` (``dataset/augment.py``: presets, erasing, rotation,
            MixUp/CutMix, folder input size, CIFAR padding mode and normalisation), or None
            for the standard augmentation.
        eval_drop_last: in-memory data sets: validate on the first ``floor(N / (batch_size *
            world_size)) * batch_size * world_size`` test images, the full batches of one
            process with the whole run's batch (``--eval_drop_last``); ``val_size`` is then
            that count.

    Returns:
        ``(train_loader, val_loader, info)`` with ``info = {'num_classes', 'input_size'
        (C, H, W), 'train_size', 'val_size'}`` (sizes of the whole data set, not of a shard).
    """
    name = _canonical(name)
    jitter = int(jitter or 0)
    check_batch_and_rank(batch_size, rank, world_size)
    if jitter < 0:
        raise UserError(f"--jitter must be >= 0 pixels, got {jitter}")
    augment = augment or AugmentConfig()
    augment.check_for(name, name in FOLDER_DATASET_NAMES, dali)
    if name in FOLDER_DATASET_NAMES:
        if jitter:
            raise UserError(f"--jitter applies to mnist and fashion_mnist only; {name} uses "
                            "RandomResizedCrop and flip: drop --jitter")
        if eval_drop_last:
            raise UserError(f"--eval_drop_last applies to the in-memory data sets; {name} "
                            "evaluates every image: drop --eval_drop_last")
        train_loader, val_loader, info = build_folder_loaders(
            name, data_folder, batch_size, device, seed=seed, rank=rank, world_size=world_size,
            num_workers=num_workers, dali=dali, drop_last=drop_last, augment=augment)
        return _mixed(train_loader, augment, info), val_loader, info
    if dali is not None:
        raise UserError(f"--dali applies to the folder data sets ({', '.join(FOLDER_DATASET_NAMES)}); "
                        f"{name} is held in memory and augmented on the device: drop --dali")

    if name.startswith('cifar'):
        if jitter:
            raise UserError(f"--jitter applies to mnist and fashion_mnist only; {name} always "
                            f"uses RepDistiller's random crop and flip: drop --jitter")
        mean, std = cifar.normalization(name, augment.cifar_normalization)
        transform = RandomCropFlip(cifar.PADDING, flip=True, padding_mode=augment.padding_mode)
    else:
        mean, std = mnist.NORMALIZATION[name]
        transform = RandomCropFlip(int(jitter), flip=False) if jitter else None

    data_folder = Path(data_folder).expanduser()
    train_x, train_y, test_x, test_y, num_classes = _load_rank0_first(
        name, data_folder, world_size, rank)
    if eval_drop_last:
        whole = batch_size * world_size
        keep = len(test_x) // whole * whole
        if keep == 0:
            raise UserError(f"--eval_drop_last leaves no test image: {len(test_x)} images are "
                            f"fewer than one batch of {whole}; drop --eval_drop_last")
        test_x, test_y = test_x[:keep], test_y[:keep]

    common = dict(device=device, mean=mean, std=std, seed=seed, rank=rank,
                  world_size=world_size)
    per_sample = SampleAugment(augment, mean) if augment.per_sample else None
    train_loader = TensorLoader(train_x, train_y, batch_size, shuffle=True, transform=transform,
                                pad=True, drop_last=drop_last, augment=per_sample, **common)
    val_loader = TensorLoader(test_x, test_y, batch_size, shuffle=False, transform=None,
                              pad=False, drop_last=False, **common)
    info = {'num_classes': num_classes, 'input_size': tuple(train_x.shape[1:]),
            'train_size': len(train_x), 'val_size': len(test_x)}
    return _mixed(train_loader, augment, info), val_loader, info


def _mixed(train_loader, augment, info):
    """The training loader, wrapped in MixUp/CutMix when ``augment`` asks for them."""
    if not augment.mixes:
        return train_loader
    return MixLoader(train_loader, info['num_classes'], mixup=augment.mixup, cutmix=augment.cutmix)

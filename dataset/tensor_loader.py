"""In-memory data loading for small image data sets (CIFAR, MNIST, Fashion-MNIST).

A whole data set is one uint8 tensor ``(N, C, H, W)`` plus int64 labels. ``TensorLoader``
yields whole batches: the uint8 batch is moved to the device first and augmented and
normalised there, all samples at once (no per-image PIL work, no worker processes).

Reproducibility: everything random in an epoch (the shuffle and every sample's augmentation)
is drawn at the start of the epoch from one ``torch.Generator`` seeded with
``seed * 100003 + epoch``, on the CPU, so an epoch is exactly reproducible from
``(seed, epoch)`` alone, on any device and with any batch size. The presets of
``dataset/augment.py`` (``augment``) draw one seed per sample from the same generator, after
the crop and flip parameters, and run each image's transforms seeded with it, on the CPU
(about 1,000-1,400 images/s per thread for 32x32 images). Call
``set_epoch(epoch)`` before each epoch, as with torch's ``DistributedSampler``; without it
every epoch repeats epoch 0.

Distributed: the permutation is shared by all ranks (same generator), padded to a multiple
of ``world_size`` by repeating its start (as ``DistributedSampler`` does), and rank ``r`` takes
positions ``r::world_size``. The augmentation parameters are drawn for the whole padded
permutation and sliced the same way, so ranks get different augmentations. Without padding
(validation) each sample is seen by exactly one rank.
"""
from typing import Optional, Sequence

import torch

from .loader import batches_per_epoch, shard

SEED_STRIDE = 100003
PADDING_MODES = ("constant", "reflect")  # --padding_mode (dataset/augment.py)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of the generator that draws everything random in ``epoch``."""
    return int(seed) * SEED_STRIDE + int(epoch)


def _reflect_index(n: int, p: int, device) -> torch.Tensor:
    """Source positions of a ``reflect`` padding of ``p`` around ``n`` positions (the edge is
    not repeated, as ``torchvision.transforms.Pad(padding_mode='reflect')`` and numpy's
    ``reflect``): ``-j -> j`` and ``n - 1 + j -> n - 1 - j``."""
    i = torch.arange(-p, n + p, device=device).abs()
    return torch.where(i > n - 1, 2 * (n - 1) - i, i)


def crop_flip(images: torch.Tensor, padding: int, params: torch.Tensor,
              padding_mode: str = "constant") -> torch.Tensor:
    """Pad ``images`` (B, C, H, W) with ``padding`` zeros on each side, crop back to H x W.
    ``padding_mode="reflect"`` pads with the reflection of the image instead (torchvision's
    ``Pad(padding, padding_mode='reflect')``; ``padding`` < H and W).

    ``params`` is an int64 tensor (B, 3) on the images' device: row offset, column offset
    (each in ``0..2*padding`` of the padded image; ``padding`` means the original image) and a
    horizontal flip flag (0/1), applied after the crop. This is torchvision's
    ``RandomCrop(H, padding)`` followed by ``RandomHorizontalFlip``, for given draws. Works on
    any dtype; done with two ``gather`` calls, no loop over samples.
    """
    b, c, h, w = images.shape
    if b == 0:
        return images.clone()
    p = int(padding)
    if p > 0 and padding_mode == "reflect":
        if not p < min(h, w):
            raise ValueError(f"reflect padding {p} needs images larger than it, got {h}x{w}")
        padded = images.index_select(2, _reflect_index(h, p, images.device)).index_select(
            3, _reflect_index(w, p, images.device))
    elif p > 0:
        padded = images.new_zeros((b, c, h + 2 * p, w + 2 * p))
        padded[:, :, p:p + h, p:p + w] = images
    else:
        padded = images
    rows = params[:, 0:1] + torch.arange(h, device=images.device)          # (B, H)
    ar = torch.arange(w, device=images.device)
    flip = params[:, 2:3].bool()
    cols = torch.where(flip, params[:, 1:2] + (w - 1 - ar), params[:, 1:2] + ar)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * p))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


class RandomCropFlip:
    """Random crop from a zero-padded image, and optionally a random horizontal flip.

    ``RandomCropFlip(4, flip=True)`` is RepDistiller's CIFAR augmentation
    (``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()``): offsets uniform in 0..8 in
    each direction, flip with probability 0.5. ``RandomCropFlip(j, flip=False)`` is a random
    translation of up to ``j`` pixels each way (the "jitter" of Hinton et al. 2015).
    ``padding_mode="reflect"`` (``--padding_mode reflect``) pads with the image's reflection:
    ``Pad(4, padding_mode='reflect')`` + ``RandomCrop(32)`` + flip, hankyul2/
    KnowledgeDistillation's ``src/dataset.py`` (line 35 at 22f39c5). The draws are the same.
    """

    def __init__(self, padding: int, flip: bool, padding_mode: str = "constant"):
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.padding_mode = padding_mode

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Parameters for ``n`` samples: int64 (n, 3) = row offset, column offset, flip."""
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        if self.flip:
            flips = torch.randint(0, 2, (n, 1), generator=generator)
        else:
            flips = torch.zeros((n, 1), dtype=torch.int64)
        return torch.cat([offsets, flips], dim=1)

    def apply(self, images: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        return crop_flip(images, self.padding, params, self.padding_mode)

    def __repr__(self):
        mode = "" if self.padding_mode == "constant" else f", padding_mode={self.padding_mode!r}"
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip}{mode})"


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std``.

    The same operations, in the same order, as torchvision's ``ToTensor`` + ``Normalize``, so
    the result is bit-identical to theirs. ``mean`` and ``std`` are float32 of shape (1, C, 1, 1).
    """
    return images.float().div_(255).sub_(mean).div_(std)


class TensorLoader:
    """Batches of an in-memory uint8 image tensor, as dicts of device tensors.

    Each batch is ``{'images': float32 (B, C, H, W), 'targets': int64 (B,), 'index': int64 (B,)}``
    on ``device``; ``index`` holds the sample indices into the data set (CRD uses them).

    Args:
        images: uint8 (N, C, H, W) on the CPU.
        targets: int64 (N,).
        batch_size: samples per batch on this rank.
        device: where batches are produced.
        mean, std: per-channel normalisation constants.
        shuffle: draw a new permutation each epoch (training).
        transform: an augmentation with ``draw(n, generator)`` and ``apply(images, params)``
            (e.g. ``RandomCropFlip``), or None.
        augment: a second one of the same interface that runs after ``transform`` on the
            uint8 images (``dataset/augment.py``'s ``SampleAugment``: rotation, AutoAugment,
            erasing, ... per sample), its draws made after ``transform``'s; or None.
        seed: with the epoch, seeds everything random in an epoch.
        rank, world_size: this process's shard.
        pad: pad the permutation to a multiple of ``world_size`` (training, as
            ``DistributedSampler``); without it each sample is on exactly one rank (validation).
        drop_last: drop the last batch if it is smaller than ``batch_size``.
    """

    def __init__(self, images: torch.Tensor, targets: torch.Tensor, batch_size: int, device,
                 mean: Sequence[float], std: Sequence[float], *, shuffle: bool = False,
                 transform=None, seed: int = 0, rank: int = 0, world_size: int = 1,
                 pad: bool = True, drop_last: bool = False, augment=None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        if targets.dim() != 1 or len(targets) != len(images):
            raise ValueError(f"targets must be (N,) with N={len(images)}, got {tuple(targets.shape)}")
        if len(images) == 0:
            raise ValueError("the data set is empty")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(mean) != images.shape[1] or len(std) != images.shape[1]:
            raise ValueError(f"mean and std need {images.shape[1]} values")

        self.device = torch.device(device)
        self._cuda = self.device.type == 'cuda'
        self.images = images.contiguous()
        self.targets_cpu = targets.to(torch.int64)
        self.targets = self.targets_cpu.to(self.device)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.transform = transform
        self.augment = augment
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.pad = bool(pad)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        shape = (1, len(mean), 1, 1)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(shape).to(self.device)
        self.std = torch.tensor(std, dtype=torch.float32).view(shape).to(self.device)

        self.dataset_size = len(images)
        self.positions, self.total_size = shard(self.dataset_size, self.rank, self.world_size,
                                                pad=self.pad)
        self.num_samples = len(self.positions)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

    def epoch_plan(self, epoch: Optional[int] = None):
        """This rank's sample indices for ``epoch`` and their augmentation parameters (CPU)."""
        return self._epoch_draws(epoch)[:2]

    def _epoch_draws(self, epoch: Optional[int] = None):
        """``epoch_plan`` and the ``augment`` draws (or None), from the epoch's generator."""
        epoch = self.epoch if epoch is None else int(epoch)
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        n = self.dataset_size
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        params = extra = None
        if self.transform is not None:
            params = self.transform.draw(self.total_size, g)[self.positions]
        if self.augment is not None:
            extra = self.augment.draw(self.total_size, g)[self.positions]
        return order[self.positions % n], params, extra

    def __iter__(self):
        indices, params, extra = self._epoch_draws()
        index_dev = indices.to(self.device, non_blocking=self._cuda)
        if params is not None:
            params = params.to(self.device, non_blocking=self._cuda)
        bs = self.batch_size
        for i in range(len(self)):
            sl = slice(i * bs, (i + 1) * bs)
            images = self._fetch(indices[sl])
            index = index_dev[sl]
            if params is not None:
                images = self.transform.apply(images, params[sl])
            if extra is not None:  # per-image work: on the CPU, so the same on any device
                images = self.augment.apply(images.cpu(), extra[sl]).to(self.device)
            yield {'images': normalize(images, self.mean, self.std),
                   'targets': self.targets[index],
                   'index': index}

    def unaugmented(self):
        """This rank's samples (the padded shard of ``epoch_plan``, in data-set order) in
        batches of ``batch_size``, normalised but not augmented: MGD's matching pass."""
        indices = self.positions % self.dataset_size
        index_dev = indices.to(self.device)
        for start in range(0, len(indices), self.batch_size):
            sl = slice(start, start + self.batch_size)
            yield {'images': normalize(self._fetch(indices[sl]), self.mean, self.std),
                   'targets': self.targets[index_dev[sl]], 'index': index_dev[sl]}

    def _fetch(self, idx: torch.Tensor) -> torch.Tensor:
        """The uint8 images at ``idx``, on the device."""
        if not self._cuda:
            return self.images.index_select(0, idx).to(self.device)
        # Gather into page-locked memory (torch's caching host allocator keeps it alive until
        # the asynchronous copy has finished), then copy without blocking.
        staging = torch.empty((len(idx),) + tuple(self.images.shape[1:]), dtype=torch.uint8,
                              pin_memory=True)
        torch.index_select(self.images, 0, idx, out=staging)
        return staging.to(self.device, non_blocking=True)

    def __repr__(self):
        return (f"TensorLoader(dataset_size={self.dataset_size}, num_samples={self.num_samples}, "
                f"batch_size={self.batch_size}, shuffle={self.shuffle}, transform={self.transform}, "
                f"augment={self.augment}, "
                f"rank={self.rank}/{self.world_size}, device={self.device})")

"""What every training and validation loader offers, and how all of them shard an epoch.

Loaders: ``TensorLoader`` (``dataset/tensor_loader.py``, in-memory data), ``FolderLoader``
(``dataset/folder.py``, JPEG folders through a torchvision DataLoader), ``DaliLoader``
(``dataset/dali.py``), and wrappers that add batch entries (``ContrastLoader``,
``dataset/crd.py``), which pass everything else on to the loader they wrap.
"""
import math
from typing import Dict, Iterable, Iterator, Protocol, Tuple, runtime_checkable

import torch

from helper.core.errors import UserError

Batch = Dict[str, torch.Tensor]


@runtime_checkable
class Loader(Protocol):
    """The loader interface.

    - ``set_epoch(epoch)`` before each epoch (as with ``DistributedSampler``): the order and
      the augmentation of an epoch are drawn from ``(seed, epoch)`` (DALI: see dali.py).
    - iteration yields dict batches on ``device``: ``'images'`` float32 (B, C, H, W),
      normalised; ``'targets'`` int64 (B,); ``'index'`` int64 (B,), the samples' indices
      into the data set. Wrappers add entries (``'contrast_index'``).
    - ``len(loader)``: batches this process runs per epoch (``batches_per_epoch``).
    - sizes: ``dataset_size`` (samples in the whole data set), ``num_samples`` (samples this
      process sees per epoch), ``batch_size`` (per process), ``targets_cpu`` (labels of the
      whole data set, int64).
    - sharding: process ``rank`` of ``world_size`` takes its part of each epoch (``shard``).
      Training pads like ``DistributedSampler``, so every rank runs the same number of steps;
      validation does not pad, so each sample is counted once over all ranks.
    - ``unaugmented()``: one pass over this process's samples, in data-set order, without
      augmentation or shuffling (evaluation transforms only), sharded and padded as
      iteration is; for MGD's matching pass. It does not change the epoch's state.
    """

    dataset_size: int
    num_samples: int
    batch_size: int
    seed: int
    rank: int
    world_size: int
    targets_cpu: torch.Tensor
    device: torch.device

    def set_epoch(self, epoch: int) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Batch]: ...

    def unaugmented(self) -> Iterable[Batch]: ...


def check_batch_and_rank(batch_size, rank: int, world_size: int) -> None:
    """A ``UserError`` unless ``batch_size`` is a positive integer and ``rank`` one of
    ``0..world_size-1``: the arguments every ``build_*loaders`` takes."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch_size must be a positive integer, got {batch_size!r}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"rank {rank} is not in 0..world_size-1 with world_size {world_size}; "
                        f"check --rank and --world-size")


def shard(n: int, rank: int, world_size: int, *, pad: bool,
          contiguous: bool = False) -> Tuple[torch.Tensor, int]:
    """``(positions, total)``: the positions in an epoch's order of ``n`` samples that ``rank``
    takes, and the length of the order all ranks share once padded.

    Position ``p`` stands for the sample ``order[p % n]``: padding repeats the order's start.

    - strided (``TensorLoader``, ``FolderLoader``; as ``DistributedSampler``): with ``pad`` the
      order is padded to ``total = ceil(n / world_size) * world_size``; rank ``r`` takes
      positions ``r, r + world_size, ...`` below ``total``.
    - ``contiguous`` (DALI's file reader): rank ``r`` takes ``[r * n // world_size,
      (r + 1) * n // world_size)``; with ``pad`` its last position is repeated up to
      ``ceil(n / world_size)``.

    Example, ``n=10``, 3 ranks: strided padded 0,3,6,9 / 1,4,7,10 / 2,5,8,11 (10 and 11 are
    samples 0 and 1 again); strided not padded 0,3,6,9 / 1,4,7 / 2,5,8; contiguous 0,1,2 /
    3,4,5 / 6,7,8,9, padded 0,1,2,2 / 3,4,5,5 / 6,7,8,9.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    per_rank = math.ceil(n / world_size)
    total = per_rank * world_size if pad else n
    if not contiguous:
        return torch.arange(rank, max(rank, total), world_size), total
    begin, end = (rank * n) // world_size, ((rank + 1) * n) // world_size
    positions = torch.arange(begin, end)
    if pad and end - begin < per_rank:
        positions = torch.cat([positions, positions[-1:].expand(per_rank - (end - begin))])
    return positions, total


def batches_per_epoch(num_samples: int, batch_size: int, drop_last: bool) -> int:
    """Batches of ``batch_size`` in ``num_samples``; ``drop_last`` drops a smaller last one."""
    if drop_last:
        return num_samples // batch_size
    return math.ceil(num_samples / batch_size)

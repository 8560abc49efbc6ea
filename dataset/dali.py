"""NVIDIA DALI pipelines for the folder data sets (``--dali cpu|gpu``).

The pipelines read the same file lists as the torchvision path (``dataset/folder.py``: the
same classes, labels and sample indices) with ``fn.readers.file`` and do the standard ImageNet
transforms:

- training: ``fn.decoders.image_random_crop`` (area 0.08..1, aspect ratio 3/4..4/3, as
  ``RandomResizedCrop``), resize to 224x224, random horizontal mirror;
- evaluation: ``fn.decoders.image``, resize the shorter side to 256, centre crop 224x224;
- ``fn.crop_mirror_normalize`` with the ImageNet mean and std times 255: float CHW.

``--dali gpu`` decodes with the ``mixed`` (nvJPEG) decoder and resizes on the GPU;
``--dali cpu`` runs everything on the CPU with ``device_id=None`` (no CUDA needed; where a GPU
is the training device the batch is copied there after the iterator, on the CPU nothing is
copied). ``--dali gpu`` without CUDA is a UserError.

Sample index: the reader gets the file list with each file's position in the list as its
"label", so every batch carries ``'index'`` (as the other loaders); ``'targets'`` are looked
up from it on the device. Batches are ``{'images', 'targets', 'index'}``.

Sharding and exact counts (checked against DALI 2.4's ``DALIGenericIterator``): the reader
is sharded by rank (``shard_id=rank, num_shards=world_size``; DALI's shards are contiguous
runs of its list, which ``random_shuffle`` permutes once with a fixed seed shared by all
ranks) with ``pad_last_batch=True``, which pads every shard to ``ceil(N / world_size)`` by
repeating its last sample, and ``reader_name="Reader"`` lets the iterator know the real
shard sizes.

- Validation: ``LastBatchPolicy.PARTIAL`` drops the padded entries, so each sample is
  counted exactly once over all ranks (in one process: exactly the data set). A shard one
  shorter than the padded size may end with an *empty* batch; it is skipped.
  ``stick_to_shard=True``: rank r always reads shard r.
- Training: every rank must run the same number of steps (DDP), so PARTIAL's exact but
  unequal shards will not do (and its empty last batch cannot be trained on). Training uses
  ``LastBatchPolicy.FILL`` and cuts the last batch so that each rank gets exactly
  ``ceil(N / world_size)`` samples: its shard plus at most one repeat of the shard's last
  sample, which is what ``DistributedSampler`` and ``TensorLoader`` do. In one process that
  is exactly the data set, once. Shards move to the next rank every epoch (DALI's default
  ``stick_to_shard=False``), and ``random_shuffle`` mixes within a 1024-sample buffer.

Seeds and reproducibility: the pipeline is built at the first iteration and seeded from
``(seed, epoch of that iteration, rank)``; ranks differ. A run's epochs are reproducible
from its start, but unlike the other loaders an epoch is not a function of
``(seed, epoch)`` alone (DALI's shuffle buffer and random streams carry over from epoch to
epoch), so a ``--resume``d run gets other (equally random) augmentations than the
uninterrupted one. Stopping in the middle of an epoch is allowed: the next ``iter()`` reads
the rest of the epoch away first (DALI cannot reset within an epoch).

Works in one process and in many, with or without a process group (SimKD's DALI path only
runs distributed).
"""
import math

import torch

from helper.errors import UserError

from .folder import CROP, IMAGENET_MEAN, IMAGENET_STD, RESIZE
from .tensor_loader import epoch_seed

READER = "Reader"


def check_dali(mode, device):
    """UserError unless DALI is installed and ``mode`` can run with ``device``."""
    if mode not in ('cpu', 'gpu'):
        raise UserError(f"--dali must be cpu or gpu, got {mode!r}")
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError as e:
        raise UserError(f"--dali needs NVIDIA DALI ({e}); install it with "
                        f"`pip install nvidia-dali-cuda120`, or drop --dali") from None
    if mode == 'gpu' and (torch.device(device).type != 'cuda' or not torch.cuda.is_available()):
        raise UserError("--dali gpu needs CUDA; use --dali cpu")


def shard_range(n, shard_id, num_shards):
    """DALI's shard ``[begin, end)`` of a list of ``n`` samples."""
    return (shard_id * n) // num_shards, ((shard_id + 1) * n) // num_shards


def _build_pipeline(files, *, train, mode, batch_size, num_threads, device_id, seed, shard_id,
                    num_shards):
    from nvidia.dali import fn, pipeline_def, types

    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    decoder = 'mixed' if mode == 'gpu' else 'cpu'

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed)
    def pipeline():
        encoded, index = fn.readers.file(
            files=files, labels=list(range(len(files))), shard_id=shard_id, num_shards=num_shards,
            random_shuffle=train, stick_to_shard=not train, pad_last_batch=True, name=READER)
        if train:
            images = fn.decoders.image_random_crop(
                encoded, device=decoder, output_type=types.RGB, random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=100)
            images = fn.resize(images, resize_x=CROP, resize_y=CROP, interp_type=types.INTERP_LINEAR)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=RESIZE, interp_type=types.INTERP_LINEAR)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(CROP, CROP), mean=mean, std=std, mirror=mirror)
        return images, index

    return pipeline()


class DaliLoader:
    """DALI pipeline + ``DALIGenericIterator`` behind the toolbox's loader interface.

    Args:
        samples: ``[(path, class_index), ...]`` (an ImageFolder's ``samples``).
        batch_size: samples per batch on this rank.
        device: where batches are delivered.
        train: training pipeline (random crop, mirror, shuffle) or evaluation pipeline.
        mode: 'cpu' or 'gpu'.
        seed, rank, world_size: see the module docstring.
        num_threads: DALI worker threads.
        drop_last: (training) drop the last batch when it is smaller than ``batch_size``.
    """

    def __init__(self, samples, batch_size, device, *, train, mode='cpu', seed=0, rank=0,
                 world_size=1, num_threads=2, drop_last=False):
        self.device = torch.device(device)
        check_dali(mode, self.device)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.files = [str(path) for path, _ in samples]
        self.targets_cpu = torch.as_tensor([t for _, t in samples], dtype=torch.int64)
        if len(self.files) == 0:
            raise ValueError("the data set is empty")
        self.targets = self.targets_cpu.to(self.device)
        self.batch_size = int(batch_size)
        self.train = bool(train)
        self.drop_last = bool(drop_last) and self.train
        self.mode = mode
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_threads = max(1, int(num_threads))
        self.epoch = 0
        self.dataset_size = len(self.files)
        if self.train:
            self.num_samples = math.ceil(self.dataset_size / self.world_size)
        else:
            begin, end = shard_range(self.dataset_size, self.rank, self.world_size)
            self.num_samples = end - begin
        self._iterator = None
        self._unfinished = False

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def pipeline_seed(self, epoch=None):
        epoch = self.epoch if epoch is None else int(epoch)
        return (epoch_seed(self.seed, epoch) * 1000003 + self.rank) % (2 ** 31 - 1)

    def _get_iterator(self):
        if self._iterator is None:
            from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
            if self.mode == 'gpu':
                device_id = self.device.index
                if device_id is None:
                    device_id = torch.cuda.current_device()
            else:
                device_id = None
            pipe = _build_pipeline(self.files, train=self.train, mode=self.mode,
                                   batch_size=self.batch_size, num_threads=self.num_threads,
                                   device_id=device_id, seed=self.pipeline_seed(),
                                   shard_id=self.rank, num_shards=self.world_size)
            policy = LastBatchPolicy.FILL if self.train else LastBatchPolicy.PARTIAL
            self._iterator = DALIGenericIterator([pipe], ['images', 'index'], reader_name=READER,
                                                 last_batch_policy=policy, auto_reset=False,
                                                 prepare_first_batch=False)
        return self._iterator

    def __iter__(self):
        it = self._get_iterator()
        if self._unfinished:  # the last epoch was left early: read it to its end
            while True:
                try:
                    next(it)
                except StopIteration:
                    break
        iter(it)  # resets the DALI iterator after a finished epoch
        self._unfinished = True
        remaining = len(self) * self.batch_size if self.drop_last else self.num_samples
        for out in it:
            batch = out[0]
            index = batch['index'].reshape(-1)
            keep = min(index.shape[0], remaining)
            remaining -= keep
            if keep == 0:
                continue  # an empty (validation) or all-padding batch
            images = batch['images'][:keep].to(self.device)
            index = index[:keep].to(self.device, torch.int64)
            yield {'images': images, 'targets': self.targets[index], 'index': index}
        self._unfinished = False

    def __repr__(self):
        return (f"DaliLoader(mode={self.mode}, dataset_size={self.dataset_size}, "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}, train={self.train}, "
                f"rank={self.rank}/{self.world_size}, device={self.device})")

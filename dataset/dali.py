"""NVIDIA DALI pipelines for the folder data sets (``--dali cpu|gpu``).

The pipelines read the same file lists as the torchvision path (``dataset/folder.py``: the
same classes, labels and sample indices) with ``fn.readers.file`` and do the standard ImageNet
transforms:

- training: ``fn.decoders.image_random_crop`` (area 0.08..1, aspect ratio 3/4..4/3, as
  ``RandomResizedCrop``), resize to 224x224, random horizontal mirror;
- evaluation: ``fn.decoders.image``, resize the shorter side to 256, centre crop 224x224;
- ``fn.crop_mirror_normalize`` with the ImageNet mean and std times 255: float CHW.

``--input_size N`` makes the crops N and the evaluation resize ``int(N * 256 / 224)``. The
presets of ``dataset/augment.py`` run after the training resize, before the mirror (their
operations' ranges are symmetric, so the order does not change their distribution), with
black fill and nearest-neighbour interpolation as torchvision's: ``--random_rotation`` as
``fn.rotate`` by a uniform angle, ``--aug`` as ``nvidia.dali.auto_aug``'s ``auto_augment``
(``image_net`` policy), ``rand_augment`` (n 2, m 9, 31 bins) or ``trivial_augment_wide``
(31 bins). ``--random_erasing`` is refused (``augment.AugmentConfig.check_for``); MixUp/CutMix
wrap the loader as on every path.

``--dali gpu`` decodes with the ``mixed`` (nvJPEG) decoder and resizes on the GPU;
``--dali cpu`` runs everything on the CPU with ``device_id=None`` (no CUDA needed; where a GPU
is the training device the batch is copied there after the iterator, on the CPU nothing is
copied). ``--dali gpu`` without CUDA is a UserError.

Sample index: the reader gets the file list with each file's position in the list as its
"label", so every batch carries ``'index'`` (as the other loaders); ``'targets'`` are looked
up from it on the device. Batches are ``{'images', 'targets', 'index'}``; ``DaliLoader`` is a
``Loader`` (``dataset/loader.py``).

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
- ``unaugmented()`` (MGD's matching pass): a second pipeline with the evaluation transforms,
  no shuffle and ``stick_to_shard=True``, cut like the loader it belongs to; rank r reads
  ``shard(N, r, world_size, pad=train, contiguous=True)`` of the file list, in order
  (``dataset/loader.py``).

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
import torch

from helper.core.errors import UserError

from .imagenet_transforms import CROP, IMAGENET_MEAN, IMAGENET_STD, eval_resize
from .loader import batches_per_epoch, shard
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


def _presets(images, presets):
    """The ``dataset/augment.py`` presets on a batch of uint8 HWC images (see the docstring)."""
    from nvidia.dali import fn, types
    if presets.random_rotation > 0:
        angle = fn.random.uniform(range=[-presets.random_rotation, presets.random_rotation])
        images = fn.rotate(images, angle=angle, keep_size=True, fill_value=0,
                           interp_type=types.INTERP_NN)
    if presets.aug == 'standard':
        return images
    try:
        from nvidia.dali.auto_aug import auto_augment, rand_augment, trivial_augment
    except ImportError as e:
        raise UserError(f"--aug {presets.aug} with --dali needs nvidia.dali.auto_aug ({e}); "
                        f"upgrade DALI, or drop --dali") from None
    common = dict(fill_value=0, interp_type=types.INTERP_NN)
    if presets.aug == 'autoaugment':
        return auto_augment.auto_augment(images, policy_name='image_net', **common)
    if presets.aug == 'randaugment':
        return rand_augment.rand_augment(images, n=2, m=9, num_magnitude_bins=31, **common)
    return trivial_augment.trivial_augment_wide(images, num_magnitude_bins=31, **common)


def _build_pipeline(files, *, augment, mode, batch_size, num_threads, device_id, seed, shard_id,
                    num_shards, crop=CROP, presets=None):
    from nvidia.dali import fn, pipeline_def, types

    mean = [255 * m for m in IMAGENET_MEAN]
    std = [255 * s for s in IMAGENET_STD]
    decoder = 'mixed' if mode == 'gpu' else 'cpu'

    presets = presets if augment and presets is not None and presets.per_sample else None
    conditionals = presets is not None and presets.aug != 'standard'  # auto_aug needs them

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id, seed=seed,
                  enable_conditionals=conditionals)
    def pipeline():
        encoded, index = fn.readers.file(
            files=files, labels=list(range(len(files))), shard_id=shard_id, num_shards=num_shards,
            random_shuffle=augment, stick_to_shard=not augment, pad_last_batch=True, name=READER)
        if augment:
            images = fn.decoders.image_random_crop(
                encoded, device=decoder, output_type=types.RGB, random_area=[0.08, 1.0],
                random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=100)
            images = fn.resize(images, resize_x=crop, resize_y=crop,
                               interp_type=types.INTERP_LINEAR)
            if presets is not None:
                images = _presets(images, presets)
            mirror = fn.random.coin_flip(probability=0.5)
        else:
            images = fn.decoders.image(encoded, device=decoder, output_type=types.RGB)
            images = fn.resize(images, resize_shorter=eval_resize(crop),
                               interp_type=types.INTERP_LINEAR)
            mirror = 0
        images = fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                          crop=(crop, crop), mean=mean, std=std, mirror=mirror)
        return images, index

    return pipeline()


class DaliLoader:
    """DALI pipeline + ``DALIGenericIterator`` behind the toolbox's loader interface.

    Args:
        samples: ``[(path, class_index), ...]`` (an ImageFolder's ``samples``).
        batch_size: samples per batch on this rank.
        device: where batches are delivered.
        train: training (padded shards, equal on all ranks) or validation (exact shards).
        augment: random crop, mirror and shuffle (default: ``train``), or the evaluation
            transforms in file order.
        mode: 'cpu' or 'gpu'.
        seed, rank, world_size: see the module docstring.
        num_threads: DALI worker threads.
        drop_last: (training) drop the last batch when it is smaller than ``batch_size``.
        crop: the crop size (``--input_size``).
        presets: an ``AugmentConfig`` whose per-image presets training adds, or None.
    """

    def __init__(self, samples, batch_size, device, *, train, augment=None, mode='cpu', seed=0,
                 rank=0, world_size=1, num_threads=2, drop_last=False, crop=CROP, presets=None):
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
        self.augment = self.train if augment is None else bool(augment)
        self.drop_last = bool(drop_last) and self.train
        self.mode = mode
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        self.num_threads = max(1, int(num_threads))
        self.crop, self.presets = int(crop), presets
        self.epoch = 0
        self.dataset_size = len(self.files)
        self.num_samples = len(shard(self.dataset_size, self.rank, self.world_size, pad=self.train,
                                     contiguous=True)[0])
        self._iterator = None
        self._unfinished = False
        self._unaugmented = None

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return batches_per_epoch(self.num_samples, self.batch_size, self.drop_last)

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
            pipe = _build_pipeline(self.files, augment=self.augment, mode=self.mode,
                                   batch_size=self.batch_size, num_threads=self.num_threads,
                                   device_id=device_id, seed=self.pipeline_seed(),
                                   shard_id=self.rank, num_shards=self.world_size,
                                   crop=self.crop, presets=self.presets)
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

    def unaugmented(self):
        """This rank's shard (padded as in training) in file order through the evaluation
        pipeline: MGD's matching pass. A second pipeline, built at the first call."""
        if self._unaugmented is None:
            samples = list(zip(self.files, self.targets_cpu.tolist()))
            self._unaugmented = DaliLoader(
                samples, self.batch_size, self.device, train=self.train, augment=False,
                mode=self.mode, seed=self.seed, rank=self.rank, world_size=self.world_size,
                num_threads=self.num_threads, crop=self.crop)
        return iter(self._unaugmented)

    def __repr__(self):
        return (f"DaliLoader(mode={self.mode}, dataset_size={self.dataset_size}, "
                f"num_samples={self.num_samples}, batch_size={self.batch_size}, train={self.train}, "
                f"augment={self.augment}, "
                f"rank={self.rank}/{self.world_size}, device={self.device})")

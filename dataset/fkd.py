"""FKD's crops (Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition",
ECCV 2022; szq0214/FKD): K ``RandomResizedCrop`` boxes and flips per image and epoch, drawn
once from ``(seed, epoch, image)`` when the soft labels are built (``helper/fkd_labels.py``),
and the training loader that replays them with the teacher's stored outputs.

Drawing: torch's RNG is seeded with ``crop_seed(seed, epoch, index)`` and torchvision's own
``RandomResizedCrop.get_params`` (our folder pipeline's scale 0.08..1 and ratio 3/4..4/3)
and ``RandomHorizontalFlip``'s ``torch.rand(1) < 0.5`` draw the K crops in turn, so a crop
is the standard training crop's distribution, drawn reproducibly. Boxes are stored in the
image's pixels (top, left, height, width); ``replay`` crops with ``F.resized_crop`` (bilinear,
antialiased, as ``RandomResizedCrop`` on a PIL image) and flips: the same pixels the standard
transform gives for those draws. FKD stores boxes relative to the image size, since its
teacher sees 475-pixel crops; here teacher and student see the same ``--input_size`` crop.

``FKDLoader`` (training): each batch holds ``batch_size / K`` images with all K of their crops
for the epoch (FKD's multi-crop batches, crop-major as train_FKD.py's ``torch.cat``), their
labels, and ``teacher_logits``, the teacher's stored output on each crop (the entry
``Distiller.forward_train`` reads in place of a teacher forward); with ``soft_ce`` also
``soft_targets``, its softmax, which the cross-entropy term takes in place of the labels. An
epoch is one pass over the images, K crops each: K times the samples of a plain epoch. The
order follows ``EpochSampler`` (``(seed, epoch)``, sharded and padded like the other
loaders), so ``--resume`` continues exactly.
"""
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as F

from helper.core.errors import UserError

from .folder import EpochSampler, FolderLoader
from .loader import batches_per_epoch
from .loader_wrapper import LoaderWrapper
from .tensor_loader import normalize

SCALE = (0.08, 1.0)  # torchvision's RandomResizedCrop defaults, as dataset/imagenet_transforms.py
RATIO = (3.0 / 4.0, 4.0 / 3.0)
FLIP_P = 0.5


def crop_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of image ``index``'s crops in stored epoch ``epoch`` (0-based)."""
    return (int(seed) * 1000003 + int(epoch)) * 2000003 + int(index)


def draw_crops(image, crops: int, seed: int, epoch: int, index: int):
    """``(boxes int32 (K, 4): top, left, height, width; flips uint8 (K,))`` for a PIL image."""
    boxes, flips = torch.zeros(crops, 4, dtype=torch.int32), torch.zeros(crops, dtype=torch.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(crop_seed(seed, epoch, index))
        for k in range(crops):
            boxes[k] = torch.tensor(RandomResizedCrop.get_params(image, list(SCALE), list(RATIO)))
            flips[k] = bool(torch.rand(1) < FLIP_P)
    return boxes, flips


def replay(image, boxes, flips, size: int) -> torch.Tensor:
    """The crops of ``image`` at ``boxes``/``flips``, uint8 (K, C, size, size)."""
    out = []
    for (top, left, height, width), flip in zip(boxes.tolist(), flips.tolist()):
        crop = F.resized_crop(image, top, left, height, width, [size, size],
                              InterpolationMode.BILINEAR, antialias=True)
        out.append(F.pil_to_tensor(F.hflip(crop) if flip else crop))
    return torch.stack(out)


class CropSet(Dataset):
    """Keys ``(index, epoch)`` of an ``IndexedImageFolder``'s images -> ``(crops, boxes, flips,
    target, index, epoch)``: the K crops drawn (``store`` None: the builder, with ``crops`` and
    ``seed``) or replayed from ``store.crops_of(epoch, index)``."""

    def __init__(self, folder, size: int, *, store=None, crops: int = 0, seed: int = 0):
        self.folder, self.size, self.store = folder, int(size), store
        self.crops, self.seed = int(crops), int(seed)

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, key):
        index, epoch = key
        path, target = self.folder.samples[index]
        image = self.folder.loader(path)
        if self.store is None:
            boxes, flips = draw_crops(image, self.crops, self.seed, epoch, index)
        else:
            boxes, flips = self.store.crops_of(epoch, index)
        return replay(image, boxes, flips, self.size), boxes, flips, target, index, epoch


class _EpochKeys(EpochSampler):
    """``EpochSampler``'s image order, each key carrying the stored epoch it replays."""

    slot = 0

    def __iter__(self):
        return ((index, self.slot) for index, _ in super().__iter__())


class FKDLoader(LoaderWrapper):
    """A ``FolderLoader``'s images as FKD's multi-crop batches with the stored teacher
    outputs (see the module docstring). ``store``: a ``helper.fkd_labels.SoftLabelStore``."""

    def __init__(self, loader, store, *, soft_ce: bool = False):
        if not isinstance(loader, FolderLoader):
            raise UserError("--fkd replays stored crops through torchvision's loader; drop "
                            "--dali (or --mixup/--cutmix) with --fkd")
        super().__init__(loader)
        self.store, self.soft_ce = store, bool(soft_ce)
        self.crops = store.crops
        if loader.batch_size % self.crops:
            raise UserError(f"--batch_size {loader.batch_size} (per process) is not a multiple of "
                            f"the {self.crops} crops per image of the --fkd store; use a multiple")
        self.images_per_batch = loader.batch_size // self.crops
        self.sampler = _EpochKeys(loader.dataset_size, shuffle=True, pad=True, augment=False,
                                  seed=loader.seed, rank=loader.rank, world_size=loader.world_size)
        self.num_samples = self.sampler.num_samples * self.crops
        crops = CropSet(loader.dataset, store.input_size, store=store)
        self.data = DataLoader(crops, batch_size=self.images_per_batch, sampler=self.sampler,
                               num_workers=loader.num_workers, pin_memory=loader._cuda,
                               persistent_workers=loader.num_workers > 0,
                               drop_last=loader.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``e`` (from 1) replays stored epoch ``(e - 1) mod E``."""
        super().set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        self.sampler.slot = self.store.slot_of(epoch)

    def __len__(self):
        return batches_per_epoch(self.sampler.num_samples, self.images_per_batch,
                                 self.loader.drop_last)

    def __iter__(self):
        device, cuda = self.loader.device, self.loader._cuda
        for crops, _, _, targets, index, epoch in self.data:
            k, b = self.crops, len(index)
            images = crops.transpose(0, 1).reshape(k * b, *crops.shape[2:])  # crop-major
            logits = self.store.teacher_logits(epoch, index).transpose(0, 1).reshape(k * b, -1)
            batch = {"images": normalize(images.to(device, non_blocking=cuda), self.loader.mean,
                                         self.loader.std),
                     "targets": targets.repeat(k).to(device, non_blocking=cuda),
                     "index": index.repeat(k).to(device, non_blocking=cuda),
                     "teacher_logits": logits.to(device, non_blocking=cuda)}
            if self.soft_ce:
                batch["soft_targets"] = batch["teacher_logits"].softmax(dim=1)
            yield batch

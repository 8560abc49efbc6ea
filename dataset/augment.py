"""Augmentation presets and batch mixing for every data path: ``--aug``, ``--random_erasing``,
``--random_rotation``, ``--mixup``, ``--cutmix`` and ``--input_size``.

What each flag adds to a data set's standard augmentation (CIFAR: ``RandomCrop(32, padding=4)``
+ flip; MNIST: none, or ``--jitter``; folder data sets: ``RandomResizedCrop`` + flip), in this
order, on the uint8 image:

- ``--random_rotation DEG``: ``RandomRotation(DEG)`` (nearest, black fill). Tf-KD's official
  CIFAR recipe (yuanli2333/Teacher-free-Knowledge-Distillation, ``data_loader.py``:
  ``RandomCrop(32, 4)``, flip, ``RandomRotation(15)``; 20 on Tiny-ImageNet).
- ``--aug autoaugment``: ``AutoAugment`` with the CIFAR-10 policy on the in-memory data sets
  and the ImageNet policy on the folder data sets (Cubuk et al. 2019; the policies of
  torchvision's ``references/classification``); ``randaugment``: ``RandAugment()`` (2 ops,
  magnitude 9; Cubuk et al. 2020); ``trivialaugment``: ``TrivialAugmentWide()`` (Muller &
  Hutter 2021). All ``torchvision.transforms.v2``'s, with their defaults. These are the
  "strong augmentation" building blocks of recipes such as MLKD's (Jin et al. CVPR 2023).
- ``--random_erasing P``: ``RandomErasing(p=P)`` (Zhong et al. 2020; torchvision's scale
  0.02..0.33 and ratio 0.3..3.3). torchvision erases with 0 after ``Normalize``, i.e. with the
  mean colour; here the box is filled with the data set's mean colour in uint8 before
  normalisation (within 0.5/255 of it).
- ``--mixup A`` / ``--cutmix A``: ``v2.MixUp(alpha=A)`` / ``v2.CutMix(alpha=A)`` on each
  normalised training batch; with both, each batch takes one of the two at random (p 0.5,
  as torchvision's reference and timm's ``switch_prob``). Batches then carry
  ``soft_targets`` (B, classes), the mixed one-hot labels, which the cross-entropy term of
  ``distillers/base.py`` uses (``--label_smoothing`` smooths them as timm's ``Mixup``
  does); ``targets`` hold each sample's dominant label (weight >= 0.5), which training
  accuracy and every method that needs class indices (DKD's target mask, CRD's relax-mode
  positives, Tf-KD's virtual teacher, SimKD's and SSKD's own CE, ...) see.
- ``--input_size N``: folder data sets only: train crop N, evaluation resize
  ``int(N * 256 / 224)`` and centre crop N (224 gives the standard 256/224; 64 for
  Tiny-ImageNet gives 73/64).
- ``--padding_mode reflect`` (CIFAR): the random crop's 4-pixel padding is the image's
  reflection instead of zeros: ``Pad(4, padding_mode='reflect')`` + ``RandomCrop(32)``, as
  hankyul2/KnowledgeDistillation ``src/dataset.py`` (line 35 at 22f39c5).
- ``--cifar_normalization``: which mean and std normalise CIFAR (``dataset/cifar.py``
  ``NORMALIZATIONS``): ``repdistiller`` (default: CIFAR-100's for both), ``per_dataset``
  (each its own, hankyul2's ``src/dataset.py`` lines 27-32), ``reviewkd`` (CIFAR-10's /255
  constants for both, ReviewKD's ``CIFAR-100/train.py`` lines 96-97). Training and
  evaluation use the same. A teacher is given the run's inputs: distil with the setting its
  checkpoint was trained with (the table scripts do).
- ``--eval_drop_last`` (data loading, in-memory data sets): evaluate on the first
  ``floor(N / B) * B`` test images only, ``B`` the batch of the whole run, as a
  ``DataLoader(test, batch_size=B, shuffle=False, drop_last=True)`` does (hankyul2's
  ``src/dataset.py`` line 8: 9,984 of CIFAR's 10,000 at batch 128).

Reproducibility: every draw is a function of ``(seed, epoch)`` (and the rank), so
``--resume`` continues exactly. In memory, each sample gets a seed from the epoch's generator
(after the crop and flip parameters, which stay as they were) and its transforms run with
torch's CPU generator seeded with it; the folder path seeds each sample's whole transform the
same way (``dataset/folder.py``); ``MixLoader`` seeds each batch from ``(seed, epoch, rank)``
and the batch's position. DALI's presets (``nvidia.dali.auto_aug``, ``fn.rotate``) follow
DALI's own seeding (``dataset/dali.py``); ``--random_erasing`` is refused there.
"""
from dataclasses import dataclass
from typing import Optional

import torch

from helper.core.argtypes import number
from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option

from .cifar import NORMALIZATIONS
from .loader_wrapper import LoaderWrapper
from .tensor_loader import PADDING_MODES

AUG_NAMES = ("standard", "autoaugment", "randaugment", "trivialaugment")
NORMALIZATION_NAMES = tuple(NORMALIZATIONS)
_MIX_SALT = 0x3A1  # keeps the mixing stream apart from the loader's own (same seed and epoch)


def _number(kind, low, high=None):
    """An argparse type for a ``kind`` in ``[low, high]``."""
    def parse(text):
        rule = f"in [{low:g}, {high:g}]" if high is not None else f"{low:g} or more"
        return number(kind, lambda v: v >= low and (high is None or v <= high), rule)(text)
    parse.__name__ = kind.__name__
    return parse


@dataclass(frozen=True)
class AugmentConfig(OptionGroup):
    """The augmentation flags of a run; the defaults add nothing to the standard path."""
    title = "augmentation (dataset/augment.py)"
    aug: str = option("standard", "on top of the standard crop and flip: autoaugment (CIFAR-10 "
                      "policy in memory, ImageNet policy on folders), randaugment (2 ops, "
                      "magnitude 9) or trivialaugment (wide), torchvision.transforms.v2's",
                      choices=AUG_NAMES)
    random_erasing: float = option(0.0, "RandomErasing with probability P (not with --dali)",
                                   "--random-erasing", type=_number(float, 0, 1), metavar="P")
    random_rotation: float = option(0.0, "RandomRotation of up to DEG degrees (Tf-KD's CIFAR "
                                    "recipe: 15)", "--random-rotation",
                                    type=_number(float, 0, 180), metavar="DEG")
    mixup: float = option(0.0, "MixUp with Beta(A, A) on each training batch (soft targets for "
                          "the CE)", type=_number(float, 0), metavar="A")
    cutmix: float = option(0.0, "CutMix with Beta(A, A); with --mixup each batch takes one of "
                           "the two", type=_number(float, 0), metavar="A")
    input_size: Optional[int] = option(None, "folder data sets: train crop and evaluation crop "
                                       "(default 224; e.g. 64 for Tiny-ImageNet)",
                                       "--input-size", type=_number(int, 1), metavar="N")
    padding_mode: str = option("constant", "CIFAR: pad the random crop with zeros (constant, "
                               "RepDistiller) or with the image's reflection (reflect, "
                               "hankyul2/KnowledgeDistillation)", "--padding-mode",
                               choices=PADDING_MODES)
    cifar_normalization: str = option(
        "repdistiller", "CIFAR mean/std: repdistiller (CIFAR-100's for both), per_dataset (each "
        "its own, hankyul2/KnowledgeDistillation), reviewkd (CIFAR-10's for both, ReviewKD's "
        "CIFAR-100/train.py); a teacher must have been trained with the same",
        "--cifar-normalization", choices=NORMALIZATION_NAMES)

    @property
    def per_sample(self) -> bool:
        """Whether anything beyond the standard augmentation runs on each image."""
        return self.aug != "standard" or self.random_erasing > 0 or self.random_rotation > 0

    @property
    def mixes(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    def changed_flags(self) -> list:
        """The augmentation flags (presets, erasing, rotation, mixing) set away from their
        defaults, as ``--flag``: what a store of teacher outputs on plain views cannot serve."""
        names = ("aug", "random_erasing", "random_rotation", "mixup", "cutmix")
        plain = AugmentConfig()
        return [f"--{n}" for n in names if getattr(self, n) != getattr(plain, n)]

    def check_for(self, dataset: str, folder: bool, dali: Optional[str] = None) -> None:
        """UserError for a setting the data path cannot take."""
        if self.aug not in AUG_NAMES:
            raise UserError(f"unknown --aug {self.aug!r}; choose one of: {', '.join(AUG_NAMES)}")
        for flag in ("random_erasing", "random_rotation", "mixup", "cutmix"):
            if not getattr(self, flag) >= 0:
                raise UserError(f"--{flag} must be 0 or more, got {getattr(self, flag)}")
        if self.random_erasing > 1:
            raise UserError(f"--random_erasing is a probability in [0, 1], "
                            f"got {self.random_erasing}")
        if self.random_rotation > 180:
            raise UserError(f"--random_rotation is at most 180 degrees, got {self.random_rotation}")
        if self.input_size is not None and not folder:
            raise UserError(f"--input_size applies to the folder data sets (imagenet, cub200, "
                            f"folder); {dataset} keeps its own image size: drop --input_size")
        if self.input_size is not None and self.input_size < 1:
            raise UserError(f"--input_size must be a positive number of pixels, "
                            f"got {self.input_size}")
        if dali is not None and self.random_erasing > 0:
            raise UserError("--random_erasing is not offered with --dali (DALI has no "
                            "RandomErasing); drop one of them")
        if self.padding_mode not in PADDING_MODES:
            raise UserError(f"unknown --padding_mode {self.padding_mode!r}; choose one of: "
                            f"{', '.join(PADDING_MODES)}")
        if self.cifar_normalization not in NORMALIZATION_NAMES:
            raise UserError(f"unknown --cifar_normalization {self.cifar_normalization!r}; choose "
                            f"one of: {', '.join(NORMALIZATION_NAMES)}")
        cifar = str(dataset).startswith("cifar")
        if self.padding_mode != "constant" and not cifar:
            raise UserError(f"--padding_mode applies to the CIFAR crop (cifar10, cifar100); "
                            f"{dataset} has no padded crop of that kind: drop --padding_mode")
        if self.cifar_normalization != "repdistiller" and not cifar:
            raise UserError(f"--cifar_normalization applies to cifar10 and cifar100; {dataset} "
                            "keeps its own constants: drop --cifar_normalization")


# ----------------------------------------------------------------------------------------------
# Per-image transforms

def sample_transforms(config: AugmentConfig, fill, folder: bool):
    """``(uint8 transforms, erasing)``: the v2 transforms ``config`` adds to one image, in
    order (rotation, then the policy), and the erasing (or None), which runs on the uint8
    tensor last; ``fill`` is the mean colour in uint8, one value per channel."""
    from torchvision.transforms import v2
    steps = []
    if config.random_rotation > 0:
        steps.append(v2.RandomRotation(config.random_rotation))
    if config.aug == "autoaugment":
        policy = v2.AutoAugmentPolicy.IMAGENET if folder else v2.AutoAugmentPolicy.CIFAR10
        steps.append(v2.AutoAugment(policy))
    elif config.aug == "randaugment":
        steps.append(v2.RandAugment())
    elif config.aug == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    erasing = None
    if config.random_erasing > 0:
        erasing = v2.RandomErasing(p=config.random_erasing, value=list(fill))
    return steps, erasing


def mean_fill(mean):
    """The mean colour as uint8 values (what 0 after normalisation is)."""
    return tuple(int(round(255 * m)) for m in mean)


class SampleAugment:
    """The per-image part of a preset for ``TensorLoader``: ``draw(n, generator)`` gives one
    seed per sample, ``apply(images, seeds)`` runs each uint8 image's transforms with torch's
    CPU generator seeded with its seed (the caller's RNG state is left as it was)."""

    def __init__(self, config: AugmentConfig, mean):
        from torchvision.transforms import v2
        steps, erasing = sample_transforms(config, mean_fill(mean), folder=False)
        self.transform = v2.Compose(steps + ([erasing] if erasing is not None else []))

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randint(0, 2 ** 62, (n,), generator=generator)

    def apply(self, images: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images)
        with torch.random.fork_rng(devices=[]):
            for i, seed in enumerate(seeds.tolist()):
                torch.default_generator.manual_seed(seed)
                out[i] = self.transform(images[i])
        return out

    def __repr__(self):
        return f"SampleAugment({self.transform})"


# ----------------------------------------------------------------------------------------------
# Batch mixing

def dominant_targets(targets: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
    """Each sample's label of weight >= 0.5 in ``soft``: its own, or its partner's (the batch
    rolled by one, as MixUp and CutMix pair samples)."""
    own = soft.gather(1, targets[:, None])[:, 0] >= 0.5
    return torch.where(own, targets, targets.roll(1, 0))


class MixLoader(LoaderWrapper):
    """Wraps a training ``Loader`` (``dataset/loader.py``): MixUp and/or CutMix on each batch,
    which then holds ``soft_targets`` and the dominant ``targets`` (module docstring);
    everything else is the wrapped loader's."""

    def __init__(self, loader, num_classes: int, mixup: float = 0.0, cutmix: float = 0.0):
        from torchvision.transforms import v2
        if not (mixup > 0 or cutmix > 0):
            raise ValueError("MixLoader needs mixup > 0 or cutmix > 0")
        super().__init__(loader)
        mixes = ([v2.MixUp(alpha=mixup, num_classes=num_classes)] if mixup > 0 else []) + \
                ([v2.CutMix(alpha=cutmix, num_classes=num_classes)] if cutmix > 0 else [])
        self.mix = mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

    def __iter__(self):
        seeds = torch.randint(0, 2 ** 62, (len(self.loader),),
                              generator=self.epoch_generator(_MIX_SALT)).tolist()
        for i, batch in enumerate(self.loader):  # the loader runs to its end (DALI needs that)
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(seeds[i])
                images, soft = self.mix(batch["images"], batch["targets"])
            batch["images"] = images
            batch["soft_targets"] = soft
            batch["targets"] = dominant_targets(batch["targets"], soft)
            yield batch

    def __repr__(self):
        return f"MixLoader({self.mix}, {self.loader!r})"

"""A checkpoint's input normalisation, and a teacher that sees its own.

A model is trained on images normalised per channel as ``(pixel - mean) / std``; which
``mean`` and ``std`` is part of the checkpoint, as torchvision's weights carry their transforms.
This toolbox's data pipelines normalise with the data set's constants (``data_normalization``:
CIFAR-10 and CIFAR-100 with RepDistiller's CIFAR-100 mean and std, MNIST and Fashion-MNIST
with their own, the folder data sets with ImageNet's). A checkpoint records its normalisation
under ``'normalization'`` (``{'mean': [...], 'std': [...]}``); one without it but with a
``'dataset'`` (every checkpoint this toolbox trains) was normalised as that data set's pipeline
does; a file of akamaster's trainer (``'state_dict'`` and ``'best_prec1'``) was normalised with
ImageNet's mean and std; any other file (RepDistiller's, a bare state dict) is taken to match
the run.

``renormalize(model, stored, run)`` makes a model trained on ``stored`` inputs take the run's:
with ``x_run = (p - m_run) / s_run`` and ``x_own = (p - m_own) / s_own`` for the same pixels
``p``, ``x_own = x_run * s_run / s_own + (m_run - m_own) / s_own``, one multiply-add per channel
applied to the input before the model's own forward (a forward pre-hook, so the model keeps its
class, feature API, state-dict keys and every method a distiller asks of it). The map is exact
up to float rounding (one multiply and one add per value, constants computed in float64). It
serves the teacher of a ``train_student.py`` run and ``--evaluate``
(``helper.run.checkpoint.load_teacher``); ``helper/teachers/forward.py``'s folded copy keeps it.

A student started from such a file (``--pretrained FILE``) is not re-normalised: it is
fine-tuned on the run's inputs, its first layer and BatchNorm statistics adapt to them, and its
own checkpoints record the run's data set, so it is later scored and distilled from
consistently.

Example: akamaster's CIFAR-10 ResNets were trained with ImageNet's mean and std
(``models.resnet_akamaster.AKAMASTER_MEAN``, ``AKAMASTER_STD``), ours normalise CIFAR-10 with
(0.5071, 0.4867, 0.4408) / (0.2675, 0.2565, 0.2761); an akamaster file, as published or
registered, scores here what akamaster's own code scores on the same images.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn

from dataset import DATASET_NAMES, cifar, mnist
from dataset.imagenet_transforms import IMAGENET_MEAN, IMAGENET_STD
from helper.core.errors import UserError

# What akamaster's pytorch_resnet_cifar10 trainer.py saves ({'state_dict', 'best_prec1'}, as
# PyTorch's ImageNet example it derives from); it normalises CIFAR-10 with ImageNet's mean/std.
AKAMASTER_LAYOUT = {"state_dict", "best_prec1"}


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` of ``(pixel / 255 - mean) / std``."""
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self):
        mean = tuple(float(m) for m in self.mean)
        std = tuple(float(s) for s in self.std)
        if not mean or len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"a normalisation needs one mean and one positive std per channel, "
                             f"got mean {mean} and std {std}")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    def as_dict(self):
        """What a checkpoint stores (plain lists: loadable with ``weights_only=True``)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    def __str__(self):
        def fmt(values):
            return "(" + ", ".join(f"{v:g}" for v in values) + ")"
        return f"mean {fmt(self.mean)} std {fmt(self.std)}"


def data_normalization(dataset) -> Normalization:
    """The normalisation this toolbox's pipeline applies to ``dataset``
    (``dataset.build_loaders``)."""
    name = str(dataset)
    if name.startswith("cifar"):
        return Normalization(cifar.MEAN, cifar.STD)
    if name in mnist.NORMALIZATION:
        return Normalization(*mnist.NORMALIZATION[name])
    if name in DATASET_NAMES:  # the folder data sets (ImageFolder and DALI pipelines)
        return Normalization(IMAGENET_MEAN, IMAGENET_STD)
    raise UserError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_NAMES)}")


def stored_normalization(checkpoint, where) -> Optional[Normalization]:
    """The normalisation a checkpoint was trained with: its ``'normalization'``, else its data
    set's, else None (a foreign file: taken to match the run)."""
    if not isinstance(checkpoint, dict):
        return None
    stored = checkpoint.get("normalization")
    if stored is not None:
        try:
            return Normalization(stored["mean"], stored["std"])
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{where} has an unreadable 'normalization' entry ({e}); it should "
                            "be {'mean': [...], 'std': [...]}, one value per channel") from None
    dataset = checkpoint.get("dataset")
    if isinstance(dataset, str):
        try:
            return data_normalization(dataset)
        except UserError:  # a data set this version does not know: no claim about its inputs
            return None
    if AKAMASTER_LAYOUT <= set(checkpoint):
        return Normalization(IMAGENET_MEAN, IMAGENET_STD)
    return None


def _renormalize_input(model, args):
    if not args:
        raise TypeError(f"{getattr(model, 'model_name', type(model).__name__)} re-normalises its "
                        "input: pass the images as the first positional argument")
    x = args[0]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = model.input_renorm_scale.to(x.dtype).view(shape)
    shift = model.input_renorm_shift.to(x.dtype).view(shape)
    return (x * scale + shift,) + tuple(args[1:])


def renormalize(model: nn.Module, stored: Optional[Normalization], run: Normalization,
                what: str = "teacher"):
    """Make ``model`` (trained on ``stored`` inputs) take inputs normalised as ``run``; returns
    it (unchanged when the two agree or ``stored`` is None). The map's constants are
    non-persistent buffers: they follow ``.to()`` and stay out of the state dict."""
    if stored is None or stored == run:
        return model
    if len(stored.mean) != len(run.mean):
        raise UserError(f"the {what} was trained on {len(stored.mean)}-channel inputs, this data "
                        f"set has {len(run.mean)} channels; use a {what} trained on it")
    if hasattr(model, "input_renorm_scale"):
        raise ValueError("the model already re-normalises its input")
    own_std = torch.tensor(stored.std, dtype=torch.float64)
    scale = torch.tensor(run.std, dtype=torch.float64) / own_std
    shift = (torch.tensor(run.mean, dtype=torch.float64)
             - torch.tensor(stored.mean, dtype=torch.float64)) / own_std
    device = next(iter(model.parameters()), torch.zeros(0)).device
    # kept in float64 (cast to the input's dtype at each call): exact for float64 inputs too
    model.register_buffer("input_renorm_scale", scale.to(device), persistent=False)
    model.register_buffer("input_renorm_shift", shift.to(device), persistent=False)
    model.register_forward_pre_hook(_renormalize_input)
    model.input_normalization = stored
    return model

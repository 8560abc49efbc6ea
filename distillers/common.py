"""Helpers shared by several methods: model names in messages, checks of the feature shapes,
pooling two maps to one size, attention maps, the teacher's reusable classifier, and
RepDistiller's init stage (AB, FSP, FT) with the parameter and mode choices of multi-stage
methods."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Stage
from .options import MethodOptions, option, require


def model_name(model) -> str:
    """The name a model was created under (``create_model``), else its class name."""
    return getattr(model, "model_name", type(model).__name__)


# ---- feature shapes ---------------------------------------------------------------------
def _require_maps(shapes, method, what, name):
    if not shapes or any(len(s) != 3 for s in shapes):
        raise UserError(f"--distill {method} needs convolutional {what}, which {name} does not "
                        "have; choose a convolutional model")
    return shapes


def stage_maps(model, shapes, method):
    """Check that ``shapes`` (of some ``feats`` entries) are all conv maps (C, H, W)."""
    return _require_maps(shapes, method, "feature maps", model_name(model))


def conv_maps_or_error(model, feats_shapes, method):
    """The intermediate stage maps ``feats[1:-1]``; a UserError when they are not maps."""
    return _require_maps(feats_shapes[1:-1], method, "stage maps", model_name(model))


def pool_to_smaller(f_s: torch.Tensor, f_t: torch.Tensor):
    """Adaptive-average-pool the larger of two maps to the other's size, as RepDistiller
    does for AT and VID (comparing heights)."""
    if f_s.shape[2] > f_t.shape[2]:
        f_s = F.adaptive_avg_pool2d(f_s, f_t.shape[2:])
    elif f_s.shape[2] < f_t.shape[2]:
        f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
    return f_s, f_t


class _ChannelMeanSquare(torch.autograd.Function):
    """``mean_c f^2`` with the one-pass backward ``f * (2 / C) * grad``; autograd's own
    backward (expand the mean's gradient, two products, a sum) makes four passes over the map
    and takes about three times as long on the CPU."""

    @staticmethod
    def forward(ctx, f):
        ctx.save_for_backward(f)
        return (f * f).mean(1)

    @staticmethod
    def backward(ctx, grad):
        (f,) = ctx.saved_tensors
        return f * (grad * (2.0 / f.shape[1])).unsqueeze(1)


def channel_mean_square(f: torch.Tensor) -> torch.Tensor:
    """``f.pow(2).mean(1)``: the attention map of AT (p = 2) and FT, (N, C, ...) -> (N, ...)."""
    return _ChannelMeanSquare.apply(f)


# ---- the teacher's classifier (SRRL, SimKD) ---------------------------------------------
def reusable_classifier(teacher, method: str, in_features: int) -> nn.Linear:
    """The teacher's final ``nn.Linear`` taking ``in_features`` inputs, or a UserError."""
    name = model_name(teacher)
    try:
        classifier = teacher.get_classifier()
    except NotImplementedError:
        classifier = None
    if not isinstance(classifier, nn.Linear):
        raise UserError(f"--distill {method} reuses the teacher's classifier, but {name} has no "
                        "single nn.Linear classifier; choose another teacher")
    if classifier.in_features != in_features:
        raise UserError(f"--distill {method} feeds the teacher's classifier a {in_features}-dim "
                        f"feature, but {name}'s classifier takes {classifier.in_features}; "
                        "choose another teacher")
    return classifier


# ---- stages -----------------------------------------------------------------------------
@dataclass(frozen=True)
class InitStageOptions(MethodOptions):
    """RepDistiller's init stage, shared by AB, FSP and FT (their ``Options`` derive from it)."""
    title = "init stage (ab, fsp, ft)"
    init_epochs: int = option(30, "epochs of the init stage of ab, ft and fsp (RepDistiller: 30)",
                              "--init-epochs")

    def check(self):
        require(self.init_epochs >= 0, f"--init_epochs must be 0 or more, got {self.init_epochs}")


def init_stages(init_epochs: int, main_epochs: int, init_lr=None):
    """RepDistiller's two stages (``helper/pretrain.py`` then the main loop): ``init`` for
    ``init_epochs`` epochs at a constant lr (``init_lr`` or ``--learning_rate``), with the
    main stage's momentum and weight decay, not competing for best.pth; then ``main``."""
    init = [Stage("init", init_epochs, lr=init_lr, lr_decay_epochs=(), selects_best=False)]
    return (init if init_epochs else []) + [Stage("main", main_epochs)]


def parameters_except(distiller, module):
    """The distiller's trainable parameters outside ``module`` (an extra of an earlier stage)."""
    skip = {id(p) for p in module.parameters()}
    return [p for p in distiller.trainable_parameters() if id(p) not in skip]


def train_feat_modules_only(student):
    """RepDistiller's init-stage modes: ``model_s.eval()`` then the feature modules back to
    train, so layers outside ``get_feat_modules()`` (the classifier, WRN's last BN) keep
    their running statistics."""
    student.eval()
    student.get_feat_modules().train()


class InitStageDistiller(Distiller):
    """A method with RepDistiller's init stage (AB, FSP, FT): ``init`` trains the method's
    own parameters (``init_parameters``) on ``init_step``'s loss alone, in ``init_train_mode``;
    then ``main`` trains everything but what ``main_parameters`` leaves out. A subclass's
    ``Options`` derive from ``InitStageOptions`` (``--init_epochs``)."""

    Options = InitStageOptions

    def has_init_stage(self) -> bool:
        return True

    def init_lr(self):
        """The init stage's constant lr; None: ``--learning_rate``."""
        return None

    def stages(self):
        epochs = self.options.init_epochs if self.has_init_stage() else 0
        return init_stages(epochs, self.run_info.epochs, self.init_lr())

    def init_parameters(self):
        raise NotImplementedError

    def main_parameters(self):
        return self.trainable_parameters()

    def stage_parameters(self, stage):
        return self.init_parameters() if stage.name == "init" else self.main_parameters()

    def init_train_mode(self):
        train_feat_modules_only(self.student)

    def train(self, mode=True):
        super().train(mode)
        if mode and self.stage == "init":
            self.init_train_mode()
        return self

    def uses_teacher_output(self):
        return self.stage == "init"

    def init_step(self, images):
        """``(student logits, {name: loss})`` of one init-stage batch."""
        raise NotImplementedError

    def forward_train(self, images, targets, **batch):
        if self.stage == "init":
            return self.init_step(images)
        return super().forward_train(images, targets, **batch)

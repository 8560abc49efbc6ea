"""Optimizers and learning-rate schedules, from ``torch.optim`` and ``torch.optim.lr_scheduler``.

Every schedule is stepped once per epoch, after the epoch: the lr of the stage's epoch ``e``
(from 1) is the scheduler's value after ``e - 1`` steps. Each stage of a method has its own
optimizer and its own scheduler over the stage's epochs, its own lr and, for ``multistep``,
its own decay epochs (counted from the stage's start).

- ``multistep`` (the default; RepDistiller/SimKD): ``MultiStepLR`` over ``--lr_decay_epochs``
  with ``--lr_decay_rate``: the lr is multiplied by the rate from the epoch after each listed
  one (``lr_decay_epochs 150`` trains epoch 150 at the full lr, epoch 151 decayed), exactly
  ``helper.run.loop.step_lr``.
- ``step``: ``StepLR``: multiplied by ``--lr_decay_rate`` every ``--lr_decay_step`` epochs
  (counted after the warm-up: epoch ``W + n * step + 1`` starts the n-th decay).
- ``cosine``: ``CosineAnnealingLR`` from the lr to 0 (``eta_min`` 0) over the stage's epochs
  after the warm-up; the last epoch trains at a small positive lr.
- ``linear``: ``LinearLR`` from the lr to 0 over the stage's epochs after the warm-up (the
  last epoch at lr / its epoch count).

``--warmup_epochs W`` puts a ``LinearLR`` warm-up before the main schedule (``SequentialLR``):
warm-up epoch ``k`` (1..W) trains at ``lr * k / (W + 1)``, the schedule starts at epoch
``W + 1`` with the full lr; ``multistep``'s decay epochs still count from the stage's start.
A stage of W epochs or fewer warms up for all but its last epoch.
"""
import argparse
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from helper.core.argtypes import non_negative, number, positive
from helper.core.option_groups import OptionGroup, option, require

OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("multistep", "step", "cosine", "linear")


def epochs_list(text):
    """``--lr_decay_epochs``: increasing positive epochs, comma-separated (150,180,210)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 150,180,210, "
                                         f"got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be positive (the lr decays after each), "
                                         f"got {text!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"epochs must be increasing, got {text!r}")
    return values


def _fraction(text):
    return number(float, lambda v: 0 <= v < 1, "in [0, 1)")(text)


@dataclass(frozen=True)
class OptimOptions(OptionGroup):
    """How the model learns: the optimizer, the learning-rate schedule, the epochs."""
    title = "optimisation"
    epochs: int = option(240, None, type=positive(int))
    learning_rate: Optional[float] = option(
        None, "default 0.05, or 0.01 for MobileNet/ShuffleNet as in SimKD", "--learning-rate",
        "--lr", type=positive(float))
    lr_decay_epochs: Tuple[int, ...] = option([150, 180, 210], None, "--lr-decay-epochs",
                                              type=epochs_list)
    lr_decay_rate: float = option(0.1, None, "--lr-decay-rate", type=positive(float))
    optimizer: str = option("sgd", "sgd (momentum, fused where available) or adamw (torch's "
                            "defaults)", choices=OPTIMIZERS)
    nesterov: bool = option(False, "Nesterov momentum (SGD)")
    lr_scheduler: str = option(
        "multistep", "per-epoch schedule: multistep (decay after --lr_decay_epochs), step "
        "(every --lr_decay_step epochs), cosine or linear (to 0 over the epochs)",
        "--lr-scheduler", choices=SCHEDULERS)
    lr_decay_step: Optional[int] = option(
        None, "--lr_scheduler step: decay by --lr_decay_rate every this many epochs",
        "--lr-decay-step", type=positive(int))
    warmup_epochs: int = option(0, "linear warm-up epochs before the schedule (epoch k at "
                                "lr*k/(N+1))", "--warmup-epochs", type=non_negative(int))
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy term",
                                    "--label-smoothing", type=_fraction)
    weight_decay: float = option(5e-4, None, "--weight-decay", type=non_negative(float))
    momentum: float = option(0.9, None, type=_fraction)

    def check(self):
        require(self.warmup_epochs < self.epochs,
                f"--warmup_epochs {self.warmup_epochs} must be less than --epochs {self.epochs}")
        require(not self.nesterov or self.optimizer == "sgd",
                "--nesterov is SGD's; drop it, or use --optimizer sgd")
        require(not self.nesterov or self.momentum != 0,
                "--nesterov needs momentum; give --momentum > 0 (e.g. 0.9)")
        require(self.lr_scheduler != "step" or self.lr_decay_step is not None,
                "--lr_scheduler step needs --lr_decay_step N (decay every N epochs)")
        if self.lr_scheduler == "multistep" and self.warmup_epochs:
            early = [m for m in self.lr_decay_epochs if m <= self.warmup_epochs]
            require(not early, f"--lr_decay_epochs {','.join(map(str, early))} fall within the "
                               f"--warmup_epochs {self.warmup_epochs}; decay after the warm-up")


def make_optimizer(params, *, name="sgd", lr, momentum=0.9, weight_decay=0.0, nesterov=False):
    """``--optimizer``: SGD with momentum (fused where PyTorch has a kernel for the device), or
    AdamW (its default betas and eps; torch picks its fused/foreach implementation)."""
    from helper.run.precision import make_sgd
    if name == "sgd":
        return make_sgd(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                        nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def warmup_for(stage_epochs, warmup_epochs):
    """The warm-up epochs of a stage of ``stage_epochs`` epochs: at most all but its last."""
    return max(0, min(int(warmup_epochs), stage_epochs - 1))


def make_scheduler(optimizer, *, name="multistep", epochs, decay_epochs=(), decay_rate=0.1,
                   decay_step=None, warmup_epochs=0):
    """The per-epoch scheduler of one stage of ``epochs`` epochs (see the module's docstring)."""
    sched = torch.optim.lr_scheduler
    warmup = warmup_for(epochs, warmup_epochs)
    main_epochs = epochs - warmup
    if name == "multistep":
        # the milestones count from the stage's start; SequentialLR restarts the main
        # scheduler's count at the warm-up's end
        milestones = [max(m - warmup, 1) for m in decay_epochs] if warmup else list(decay_epochs)
        make = lambda: MultiStepLR(optimizer, milestones=milestones, gamma=decay_rate)
    elif name == "step":
        if not decay_step:
            raise ValueError("--lr_scheduler step needs --lr_decay_step")
        make = lambda: StepLR(optimizer, step_size=decay_step, gamma=decay_rate)
    elif name == "cosine":
        make = lambda: sched.CosineAnnealingLR(optimizer, T_max=max(main_epochs, 1), eta_min=0.0)
    elif name == "linear":
        make = lambda: sched.LinearLR(optimizer, start_factor=1.0, end_factor=0.0,
                                      total_iters=max(main_epochs, 1))
    else:
        raise ValueError(f"unknown lr scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
    if not warmup:
        return make()
    warm = sched.LinearLR(optimizer, start_factor=1.0 / (warmup + 1), end_factor=1.0,
                          total_iters=warmup)
    return sched.SequentialLR(optimizer, [warm, make()], milestones=[warmup])


class MultiStepLR(torch.optim.lr_scheduler.MultiStepLR):
    """torch's MultiStepLR, its lr computed in closed form, ``base_lr * gamma ** passed``, as
    ``helper.run.loop.step_lr`` (and SimKD) compute it: torch's running product drifts by an ulp
    after two decays (0.01 * 0.1 * 0.1 != 0.01 * 0.1 ** 2), which would change reruns."""

    def get_lr(self):
        return self._get_closed_form_lr()


class StepLR(torch.optim.lr_scheduler.StepLR):
    """torch's StepLR, its lr computed in closed form (as ``MultiStepLR`` above)."""

    def get_lr(self):
        return self._get_closed_form_lr()


def current_lr(optimizer):
    return optimizer.param_groups[0]["lr"]

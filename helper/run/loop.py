"""The one training loop and the one validation, for teachers and students of every method."""
import math
import time

import torch
import torch.nn.functional as F

from helper.core.errors import UserError
from helper.run.precision import Precision


class NonFiniteLoss(UserError):
    """A loss became NaN or infinite; the message names the epoch, iteration and term."""


def step_lr(epoch, base_lr, decay_epochs, decay_rate):
    """SimKD/RepDistiller's step schedule: multiply by ``decay_rate`` once per milestone
    passed, where epochs count from 1 and the decay applies from epoch ``milestone + 1``.
    The reference of ``--lr_scheduler multistep`` (helper/run/schedule.py), which gives exactly
    these values."""
    return base_lr * decay_rate ** sum(epoch > m for m in decay_epochs)


def _check_finite(first_bad, bad_terms, names, epoch):
    it = int(first_bad.item())
    if it >= 0:
        values = bad_terms.tolist()
        which = [n for n, v in zip(names, values) if not math.isfinite(v)] or names
        raise NonFiniteLoss(f"loss became non-finite at epoch {epoch}, iteration {it + 1} "
                            f"(term {', '.join(which)}); lower the learning rate or the loss "
                            "weights; last.pth still holds the last good epoch")


def _no_loss_term(model):
    """The error for a step without loss terms: every weight that applies is 0."""
    d = getattr(model, "module", model)  # unwrap DDP
    name, beta = getattr(d, "name", "?"), getattr(d, "beta", 0)
    if beta:
        return UserError(f"no loss term is active: -c and -d are 0 and --distill {name} has no "
                         f"loss of its own for -b {beta:g} to weigh; give -c or -d a positive "
                         "weight")
    return UserError(f"no loss term is active: -c, -d and -b are all 0 for --distill {name}; "
                     "give one a positive weight")


def train_one_epoch(model, loader, optimizer, epoch, *, print_freq=100, log=print,
                    world_size=1, precision=None, channels_last=False):
    """Train ``model`` (a Distiller, possibly wrapped in DDP) for one epoch.

    Loss values stay on the device and are read only every ``print_freq`` iterations and at
    the end, so a GPU never waits for the host. Returns the epoch's mean loss terms and top-1.
    """
    precision = precision or Precision()
    model.train()
    device = next(model.parameters()).device
    n_batches = len(loader)
    sums, names = None, None
    correct = torch.zeros((), device=device)
    seen = 0
    first_bad = torch.full((), -1, device=device, dtype=torch.long)
    bad_terms = None
    start = time.time()
    for i, batch in enumerate(loader):
        images, targets = _images(batch, channels_last), batch["targets"]
        extra = {k: v for k, v in batch.items() if k not in ("images", "targets")}
        with precision.autocast():
            logits, losses = model(images, targets, **extra)
        if not losses:
            raise _no_loss_term(model)
        if names is None:
            names = list(losses)
            sums = torch.zeros(len(names), device=device)
            bad_terms = torch.zeros(len(names), device=device)
        terms = torch.stack([losses[n].detach().float() for n in names])
        total = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        precision.step(total, optimizer)

        bs = targets.shape[0]
        finite = torch.isfinite(terms).all()
        newly_bad = (~finite) & (first_bad < 0)
        first_bad = torch.where(newly_bad, torch.full_like(first_bad, i), first_bad)
        bad_terms = torch.where(newly_bad, terms, bad_terms)
        sums += terms * bs
        correct += (logits.detach().argmax(1) == targets).sum()
        seen += bs
        if (i + 1) % print_freq == 0 or i + 1 == n_batches:
            _check_finite(first_bad, bad_terms, names, epoch)
            elapsed = time.time() - start
            rate = seen * world_size / max(elapsed, 1e-9)
            eta = elapsed / (i + 1) * (n_batches - i - 1)
            means = (sums / seen).tolist()
            log(f"Epoch {epoch} [{i + 1}/{n_batches}] loss {sum(means):.4f} "
                + " ".join(f"{n} {v:.4f}" for n, v in zip(names, means))
                + f" acc@1 {100.0 * correct.item() / seen:.2f} {rate:.0f} img/s ETA {eta:.0f}s")
    if names is None:
        raise UserError("the training data is empty; check --data_folder and --batch_size")
    stats = torch.cat([sums, correct.reshape(1), torch.tensor([float(seen)], device=device)])
    stats = _all_reduce_sum(stats)
    seen_all = stats[-1].item()
    terms = {n: v / seen_all for n, v in zip(names, stats[:len(names)].tolist())}
    return {"loss": sum(terms.values()), "terms": terms,
            "acc": 100.0 * stats[len(names)].item() / seen_all}


def _images(batch, channels_last):
    images = batch["images"]
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images


@torch.no_grad()
def validate(forward, loader, device, precision=None, channels_last=False):
    """Top-1, top-5 and cross-entropy of ``forward(images)`` over the whole ``loader``.

    Counts are summed over processes, so accuracy is exact in distributed runs.
    """
    precision = precision or Precision()
    totals = torch.zeros(4, device=device)  # loss sum, top-1, top-5, samples
    for batch in loader:
        images, targets = _images(batch, channels_last), batch["targets"]
        with precision.autocast():
            logits = forward(images)
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == targets[:, None]
        totals += torch.stack([F.cross_entropy(logits.float(), targets, reduction="sum"),
                               hit[:, 0].sum().float(), hit.any(1).sum().float(),
                               torch.tensor(float(targets.shape[0]), device=device)])
    totals = _all_reduce_sum(totals)
    loss, top1, top5, n = totals.tolist()
    if n == 0:
        raise UserError("the validation data is empty; check --data_folder")
    return {"acc": 100.0 * top1 / n, "acc_top5": 100.0 * top5 / n, "loss": loss / n}


def _all_reduce_sum(t):
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t

"""Set-up shared by both entry scripts, and ``fit``: stages, epochs, validation, logs and
checkpoints, in named steps (restore, enter a stage, one epoch, save)."""
import random
import sys
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from helper.run.checkpoint import FORMAT, rng_state, set_rng_state
from helper.run.distributed import Context, sync_buffers, wrap
from helper.run import config_file
from helper.run.precision import Precision, compile_models, use_channels_last
from helper.core.errors import UserError
from helper.run.loggers import RunLoggers, train_log
from helper.run.loop import train_one_epoch, validate
from helper.run.resume import plain, resume_checkpoint
from helper.run.run_folder import RunFolder, deferred_interrupt
from helper.run.schedule import current_lr, make_optimizer, make_scheduler


class Interrupted(SystemExit, KeyboardInterrupt):
    """Ctrl-C, once reported: exit code 130 without a traceback, and still a KeyboardInterrupt
    to a caller of ``main`` that catches one."""


@contextmanager
def user_errors(rank=0):
    """Turn a UserError into one line on stderr and exit code 2, and Ctrl-C into one line
    (where the run stopped) and exit code 130."""
    try:
        yield
    except UserError as e:
        where = f" (rank {rank})" if rank else ""
        print(f"error{where}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as e:
        if not rank:
            print(str(e) or "interrupted", file=sys.stderr, flush=True)
        raise Interrupted(130) from None


def trial_seed(run):
    """``--seed`` plus the trial id, so that trials differ and reruns repeat (``run``: the
    ``RunOptions``)."""
    trial = str(run.trial)
    offset = int(trial) if trial.isdigit() else zlib.crc32(trial.encode()) % 100003
    return run.seed + offset


def seed_everything(run, rank=0):
    """Seed the global RNGs (each process its own stream) and return the seed shared by all
    processes, which drives the data order."""
    seed = trial_seed(run)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    if run.deterministic:
        # CUDA has no deterministic backward for adaptive pooling: warn there instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    return seed


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def build_data(config, ctx):
    """This process's configuration, and its loaders: ``(config, train_loader, val_loader)``.

    The returned configuration has the per-process batch and learning rate and the data sizes.
    """
    from dataset import build_loaders
    config = config.for_process(ctx.local_size, ctx.world_size)
    data = config.data
    seed = seed_everything(config.run, ctx.rank)
    train_loader, val_loader, info = build_loaders(
        data.dataset, data.data_folder, config.batch_per_process, ctx.device, seed=seed,
        rank=ctx.rank, world_size=ctx.world_size, jitter=data.jitter,
        num_workers=data.num_workers, dali=data.dali, augment=config.augment,
        eval_drop_last=data.eval_drop_last)
    return config.with_data(info), train_loader, val_loader


def train(config, distiller, train_loader, val_loader, run_path, meta, ctx, before_fit=None):
    """Take the run folder (refused while another run holds it), check it (continue it with
    --resume, or refuse to overwrite it), call ``before_fit()`` (work worth doing only for a
    run that goes ahead, such as scoring the teachers), then fit."""
    with RunFolder(run_path, write=ctx.is_main, log=ctx.log) as run, train_log(run, ctx):
        resume = resume_checkpoint(config, run_path, meta)
        if before_fit is not None:
            before_fit()
        return fit(config, distiller, train_loader, val_loader, run_path, meta, ctx=ctx,
                   resume=resume, run=run)


def stage_at(stages, epoch):
    """The index of the stage holding global ``epoch`` (from 1), the stage, and the epoch
    counted within it."""
    for index, stage in enumerate(stages):
        if epoch <= stage.epochs:
            return index, stage, epoch
        epoch -= stage.epochs
    raise ValueError("epoch beyond the last stage")


def stage_lr(config, stage):
    """A stage's own lr, or the run's learning rate."""
    return config.learning_rate if stage.lr is None else stage.lr


def stage_optimizer(config, distiller, stage):
    """The fresh optimizer a stage starts with, over its parameters (``--optimizer``)."""
    optim = config.optim
    return make_optimizer(distiller.stage_parameters(stage), name=optim.optimizer,
                          lr=stage_lr(config, stage), momentum=optim.momentum,
                          weight_decay=optim.weight_decay, nesterov=optim.nesterov)


def stage_scheduler(config, optimizer, stage):
    """The per-epoch lr scheduler of a stage (``--lr_scheduler``, helper/run/schedule.py), over
    its epochs, with its own decay epochs when it has them; created with its optimizer."""
    optim = config.optim
    decay = optim.lr_decay_epochs if stage.lr_decay_epochs is None else stage.lr_decay_epochs
    return make_scheduler(optimizer, name=optim.lr_scheduler, epochs=stage.epochs,
                          decay_epochs=decay, decay_rate=optim.lr_decay_rate,
                          decay_step=optim.lr_decay_step, warmup_epochs=optim.warmup_epochs)


@dataclass
class Progress:
    """What ``fit`` carries from epoch to epoch (and restores from a checkpoint)."""
    start_epoch: int = 1
    best_acc: float = 0.0
    best_epoch: int = 0
    wall: float = 0.0
    optimizer: Optional[torch.optim.Optimizer] = None
    scheduler: Optional[object] = None
    stage_index: Optional[int] = None
    summary: dict = field(default_factory=dict)
    extra_best: dict = field(default_factory=dict)  # {extra model: [best top-1, its epoch]}


class Fit:
    """One run of every stage of a distiller: the steps of ``fit``."""

    def __init__(self, config, distiller, train_loader, val_loader, run_path, meta, ctx, log):
        self.config = config
        self.distiller, self.train_loader, self.val_loader = distiller, train_loader, val_loader
        self.run_path, self.meta, self.ctx, self.log = run_path, meta, ctx, log
        self.precision = Precision.from_options(config.precision, ctx.device)
        self.channels_last = use_channels_last(config.precision, distiller.student, ctx.device)
        if self.channels_last:
            distiller.to(memory_format=torch.channels_last)
        if config.precision.compile:
            compile_models(distiller)
        self.stages = distiller.stages()
        self.total = sum(stage.epochs for stage in self.stages)
        self.progress = Progress()
        self.stored_args = plain(config.effective_args())

    def restore(self, checkpoint):
        """Continue from a last.pth: weights, extras, RNG, optimizer, scaler and progress."""
        d, p = self.distiller, self.progress
        if checkpoint["epoch"] > self.total:
            done = checkpoint["epoch"] - (self.total - self.config.optim.epochs)  # less other stages'
            raise UserError(f"this run already has {done} epochs; pass --epochs > {done} to "
                            "continue it")
        d.student.load_state_dict(checkpoint["model"], strict=True)
        d.load_extra_state_dict(checkpoint["extras"])
        set_rng_state(checkpoint["rng"])
        p.start_epoch = checkpoint["epoch"] + 1
        p.best_acc, p.best_epoch = checkpoint["best_acc"], checkpoint["best_epoch"]
        p.wall = checkpoint["wall_time"]
        p.extra_best = dict(checkpoint.get("extra_best", {}))
        p.stage_index, stage, stage_epoch = stage_at(self.stages, checkpoint["epoch"])
        d.stage = stage.name
        p.optimizer = stage_optimizer(self.config, self.distiller, stage)
        p.scheduler = stage_scheduler(self.config, p.optimizer, stage)
        epochs = self.config.optim.epochs
        stored_epochs = (checkpoint.get("args") or {}).get("epochs", epochs)
        if checkpoint.get("scheduler") is not None and stored_epochs == epochs:
            p.optimizer.load_state_dict(checkpoint["optimizer"])
            p.scheduler.load_state_dict(checkpoint["scheduler"])
        else:  # a last.pth from before the schedulers, or --epochs grown (a cosine or linear
            # schedule then spans the new epochs): replay the stage's epochs done
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "scheduler stepped before the optimizer"
                for _ in range(stage_epoch):
                    p.scheduler.step()
            lrs = [(g["lr"], g["initial_lr"]) for g in p.optimizer.param_groups]
            p.optimizer.load_state_dict(checkpoint["optimizer"])
            for group, (lr, initial) in zip(p.optimizer.param_groups, lrs):
                group["lr"], group["initial_lr"] = lr, initial
        self.precision.load_state_dict(checkpoint.get("scaler", {}))
        if self.ctx.rank:  # every process continues its own random stream, not rank 0's
            torch.manual_seed(trial_seed(self.config.run) + checkpoint["epoch"] * self.ctx.world_size
                              + self.ctx.rank)
        self.log(f"resumed from epoch {checkpoint['epoch']} (best top-1 {p.best_acc:.2f})")

    def enter_stage(self, index, stage):
        """A fresh optimizer over the stage's parameters when the stage changes."""
        p = self.progress
        if index != p.stage_index:
            p.optimizer, p.stage_index = stage_optimizer(self.config, self.distiller, stage), index
            p.scheduler = stage_scheduler(self.config, p.optimizer, stage)
            if len(self.stages) > 1:
                self.log(f"stage {stage.name}: {stage.epochs} epochs")

    def one_epoch(self, model, epoch, stage, stage_epoch):
        """Train one epoch and validate: ``(lr, train metrics, validation metrics)``."""
        d, p = self.distiller, self.progress
        lr = current_lr(p.optimizer)  # the scheduler's, stepped once after each epoch
        self.train_loader.set_epoch(epoch)
        d.on_epoch_start(stage_epoch, self.train_loader, stage)
        t0 = time.time()
        train = train_one_epoch(model, self.train_loader, p.optimizer, epoch,
                                print_freq=self.config.run.print_freq, log=self.log,
                                world_size=self.ctx.world_size, precision=self.precision,
                                channels_last=self.channels_last)
        sync_buffers(d)
        d.eval()
        val = validate(d.forward_test, self.val_loader, self.ctx.device, self.precision,
                       self.channels_last)
        val["models"] = {name: validate(module, self.val_loader, self.ctx.device, self.precision,
                                        self.channels_last)
                         for name, (_, module) in d.extra_models().items()}
        p.scheduler.step()
        p.wall += time.time() - t0
        self.log(f"Epoch {epoch}: lr {lr:g} train loss {train['loss']:.4f} acc@1 {train['acc']:.2f} | "
                 f"test loss {val['loss']:.4f} acc@1 {val['acc']:.2f} acc@5 {val['acc_top5']:.2f} "
                 f"| {p.wall:.0f}s")
        for name, scores in val["models"].items():
            self.log(f"Epoch {epoch}: {name} test acc@1 {scores['acc']:.2f} "
                     f"acc@5 {scores['acc_top5']:.2f}")
        return lr, train, val

    def save(self, run, epoch, stage, lr, train, val):
        """Log the epoch, write best.pth (when it is the best), last.pth and summary.json."""
        d, p = self.distiller, self.progress
        values = {"train/loss": train["loss"], "train/acc": train["acc"],
                  **{f"train/loss_{k}": v for k, v in train["terms"].items()},
                  "test/acc": val["acc"], "test/acc_top5": val["acc_top5"],
                  "test/loss": val["loss"], "lr": lr,
                  **{f"test/acc_{k}": v["acc"] for k, v in val["models"].items()}}
        run.scalars(values, epoch)
        weights = {"format": FORMAT, **self.meta, "model": d.student.state_dict(),
                   "extras": d.extra_state_dict(), "epoch": epoch, "stage": stage.name,
                   "accuracy": val["acc"], "deploy": d.deploy_state()}
        if stage.selects_best and (p.best_epoch == 0 or val["acc"] > p.best_acc):
            p.best_acc, p.best_epoch = val["acc"], epoch
            run.save({**weights, "best_acc": p.best_acc}, "best.pth")
        self.loggers.epoch(values, epoch, p.best_acc, finished=epoch == self.total)
        extra_models = self.save_extra_models(run, epoch, stage, val["models"])
        run.save({**weights, "best_acc": p.best_acc, "best_epoch": p.best_epoch,
                  "extra_best": p.extra_best, "wall_time": p.wall,
                  "optimizer": p.optimizer.state_dict(),
                  "scheduler": p.scheduler.state_dict(),
                  "scaler": self.precision.state_dict(), "rng": rng_state(),
                  "args": self.stored_args}, "last.pth")
        p.summary.update(epochs_done=epoch, finished=epoch == self.total, stage=stage.name,
                         best_acc=p.best_acc, best_epoch=p.best_epoch, last_acc=val["acc"],
                         last_train_loss=train["loss"], last_acc_top5=val["acc_top5"],
                         wall_time=p.wall)
        if extra_models:
            p.summary["extra_models"] = extra_models
        run.summary(p.summary)

    def save_extra_models(self, run, epoch, stage, scores):
        """Each whole network the method trains beside the student (``extra_models``, e.g.
        DML's peers) as a checkpoint that loads alone: ``<name>_last.pth`` every epoch,
        ``<name>_best.pth`` at its own best top-1. Returns their summary entries."""
        p, entries = self.progress, {}
        for name, (model_name, module) in self.distiller.extra_models().items():
            acc = scores[name]["acc"]
            state = {"format": FORMAT, **self.meta, "model_name": model_name, "extras": {},
                     "model": module.state_dict(), "epoch": epoch, "stage": stage.name,
                     "accuracy": acc, "deploy": None}
            if stage.selects_best and (name not in p.extra_best or acc > p.extra_best[name][0]):
                p.extra_best[name] = [acc, epoch]
                run.save({**state, "best_acc": acc}, f"{name}_best.pth")
            best, best_epoch = p.extra_best.get(name, [acc, 0])
            run.save({**state, "best_acc": best}, f"{name}_last.pth")
            entries[name] = {"model_name": model_name, "best_acc": best,
                             "best_epoch": best_epoch, "last_acc": acc}
        return entries

    def first_summary(self):
        d = self.distiller
        return {"args": self.config.summary_args(), "config": self.config.summary(),
                **self.meta, "stages": [s.name for s in self.stages], "parameters": {
                    "student": count_parameters(d.student),
                    "extras": count_parameters(d) - count_parameters(d.student),
                    "teacher": count_parameters(d.teacher) if d.teacher is not None else 0}}

    def write_config(self, run):
        """config.yaml: the run's effective options, to rerun it with ``--config``."""
        if not run.write:
            return
        path = Path(run.path) / config_file.FILE_NAME
        teacher = self.meta.get("distill") == "vanilla"
        command = "train_teacher.py" if teacher else "train_student.py"
        try:
            config_file.write(path, self.config.file_args(), command)
        except OSError as e:
            raise UserError(f"cannot write {path} ({e.strerror or e}); free disk space and "
                            "start the run again") from e

    def run(self, run, resume=None):
        """Every epoch from the start (or ``resume``'s checkpoint), written to ``run``."""
        if resume is not None:
            self.restore(resume)
        distiller = self.distiller
        if self.config.dist.sync_bn:
            distiller = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller)
        model = wrap(distiller, self.ctx, find_unused_parameters=len(self.stages) > 1)
        self.progress.summary = self.first_summary()
        self.write_config(run)
        epoch = self.progress.start_epoch
        try:  # HParams session and --logger (helper/run/loggers.py)
            with RunLoggers(run, self.config, self.meta, self.log) as self.loggers:
                for epoch in range(self.progress.start_epoch, self.total + 1):
                    index, stage, stage_epoch = stage_at(self.stages, epoch)
                    self.enter_stage(index, stage)
                    lr, train, val = self.one_epoch(model, epoch, stage, stage_epoch)
                    with deferred_interrupt():  # Ctrl-C: after the epoch's files
                        self.save(run, epoch, stage, lr, train, val)
        except KeyboardInterrupt:
            saved = run.saved or resume is not None
            then = "continue with --resume" if saved else "nothing was saved"
            raise KeyboardInterrupt(f"interrupted at epoch {epoch}; {then}") from None
        p = self.progress
        self.log(f"best top-1 {p.best_acc:.2f} at epoch {p.best_epoch}; run folder {self.run_path}")
        return p.summary


def fit(config, distiller, train_loader, val_loader, run_path, meta, *, ctx=None, resume=None,
        log=None, run=None):
    """Train every stage of ``distiller`` and write the run folder (``run``, an entered
    ``RunFolder``, or one opened here on ``run_path``). Returns the summary.

    Epochs are counted over all stages (TensorBoard steps, checkpoints); each stage gets a
    fresh optimizer and its own scheduler (helper/run/schedule.py).
    """
    ctx = ctx or Context()
    if run is not None:
        return Fit(config, distiller, train_loader, val_loader, run_path, meta, ctx,
                   log or ctx.log).run(run, resume)
    with RunFolder(run_path, write=ctx.is_main, log=log or ctx.log) as run, train_log(run, ctx):
        return Fit(config, distiller, train_loader, val_loader, run_path, meta, ctx,
                   log or ctx.log).run(run, resume)

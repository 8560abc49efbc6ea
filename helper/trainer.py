"""Set-up shared by both entry scripts, and ``fit``: epochs, validation, logs, checkpoints."""
import random
import sys
import time
import zlib
from contextlib import contextmanager

import numpy as np
import torch

from helper.checkpoint import FORMAT, load_file, rng_state, set_rng_state
from helper.distributed import Context, per_process_batch, sync_buffers, wrap
from helper.precision import Precision, compile_models, make_sgd
from helper.errors import UserError
from helper.loop import set_lr, step_lr, train_one_epoch, validate
from helper.run_folder import RunFolder


@contextmanager
def user_errors(rank=0):
    """Turn a UserError into one line on stderr and exit code 2."""
    try:
        yield
    except UserError as e:
        where = f" (rank {rank})" if rank else ""
        print(f"error{where}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def trial_seed(args):
    """``--seed`` plus the trial id, so that trials differ and reruns repeat."""
    trial = str(args.trial)
    offset = int(trial) if trial.isdigit() else zlib.crc32(trial.encode()) % 100003
    return args.seed + offset


def seed_everything(args, rank=0):
    """Seed the global RNGs (each process its own stream) and return the seed shared by all
    processes, which drives the data order."""
    seed = trial_seed(args)
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)
    if args.deterministic:
        # CUDA has no deterministic backward for adaptive pooling: warn there instead of failing.
        torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    return seed


def count_parameters(module):
    return sum(p.numel() for p in module.parameters())


def resume_checkpoint(args, run_path, meta):
    """The checkpoint ``--resume`` continues from, checked against this run; or None.

    Without ``--resume`` an existing run in ``run_path`` is an error rather than being
    silently overwritten.
    """
    last = run_path / "last.pth"
    if args.resume is None:
        if last.exists():
            raise UserError(f"{run_path} already holds a run; pass --resume to continue it, "
                            "or another --trial or --save_folder to start a new one")
        return None
    path = last if args.resume == "auto" else args.resume
    if args.resume == "auto" and not last.exists():
        raise UserError(f"nothing to resume: {last} does not exist; drop --resume to start the run")
    checkpoint = load_file(path, "checkpoint to resume")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "optimizer" not in checkpoint:
        raise UserError(f"{path} is not a last.pth written by this toolbox; --resume needs one")
    for key in ("model_name", "distill", "dataset"):
        if checkpoint.get(key) != meta.get(key):
            raise UserError(f"cannot resume from {path}: it was written for {key} "
                            f"{checkpoint.get(key)!r}, this run uses {meta.get(key)!r}")
    return checkpoint


def build_data(args, ctx):
    """Seed this process and build its loaders: ``(train_loader, val_loader, info)``."""
    from dataset import build_loaders
    batch_size = per_process_batch(args, ctx)
    seed = seed_everything(args, ctx.rank)
    return build_loaders(args.dataset, args.data_folder, batch_size, ctx.device, seed=seed,
                         rank=ctx.rank, world_size=ctx.world_size, jitter=args.jitter,
                         num_workers=args.num_workers, dali=args.dali)


def train(args, distiller, train_loader, val_loader, run_path, meta, ctx):
    """Check the run folder (continue it with --resume, or refuse to overwrite it), then fit."""
    resume = resume_checkpoint(args, run_path, meta)
    return fit(args, distiller, train_loader, val_loader, run_path, meta, ctx=ctx, resume=resume)


def _stage_at(stages, epoch):
    """The stage holding global ``epoch`` (from 1), and the epoch counted within it."""
    for index, stage in enumerate(stages):
        if epoch <= stage.epochs:
            return index, stage, epoch
        epoch -= stage.epochs
    raise ValueError("epoch beyond the last stage")


def _optimizer(args, distiller, stage):
    return make_sgd(distiller.stage_parameters(stage),
                    lr=args.learning_rate if stage.lr is None else stage.lr,
                    momentum=args.momentum, weight_decay=args.weight_decay)


def fit(args, distiller, train_loader, val_loader, run_path, meta, *, ctx=None, resume=None,
        log=None):
    """Train every stage of ``distiller`` and write the run folder. Returns the summary.

    Epochs are counted over all stages (TensorBoard steps, checkpoints); each stage gets a
    fresh optimizer and its own step schedule.
    """
    ctx = ctx or Context()
    log = log or ctx.log
    precision = Precision.from_args(args, ctx.device)
    channels_last = getattr(args, "channels_last", False)
    if channels_last:
        distiller.to(memory_format=torch.channels_last)
    if getattr(args, "compile", False):
        compile_models(distiller)
    stages = distiller.stages(args)
    total = sum(stage.epochs for stage in stages)
    start_epoch, best_acc, best_epoch, wall = 1, 0.0, 0, 0.0
    optimizer, optimizer_stage = None, None
    if resume is not None:
        distiller.student.load_state_dict(resume["model"], strict=True)
        distiller.load_extra_state_dict(resume["extras"])
        set_rng_state(resume["rng"])
        start_epoch = resume["epoch"] + 1
        best_acc, best_epoch, wall = resume["best_acc"], resume["best_epoch"], resume["wall_time"]
        optimizer_stage, stage, _ = _stage_at(stages, resume["epoch"])
        distiller.stage = stage.name
        optimizer = _optimizer(args, distiller, stage)
        optimizer.load_state_dict(resume["optimizer"])
        precision.load_state_dict(resume.get("scaler", {}))
        if ctx.rank:  # every process continues its own random stream, not rank 0's
            torch.manual_seed(trial_seed(args) + resume["epoch"] * ctx.world_size + ctx.rank)
        log(f"resumed from epoch {resume['epoch']} (best top-1 {best_acc:.2f})")
    if getattr(args, "sync_bn", False):
        distiller = torch.nn.SyncBatchNorm.convert_sync_batchnorm(distiller)
    model = wrap(distiller, ctx, find_unused_parameters=len(stages) > 1)
    run = RunFolder(run_path, write=ctx.is_main, purge_step=start_epoch)
    summary = {"args": vars(args), **meta, "stages": [s.name for s in stages], "parameters": {
        "student": count_parameters(distiller.student),
        "extras": count_parameters(distiller) - count_parameters(distiller.student),
        "teacher": count_parameters(distiller.teacher) if distiller.teacher is not None else 0}}
    try:
        for epoch in range(start_epoch, total + 1):
            index, stage, stage_epoch = _stage_at(stages, epoch)
            if index != optimizer_stage:
                optimizer, optimizer_stage = _optimizer(args, distiller, stage), index
                if len(stages) > 1:
                    log(f"stage {stage.name}: {stage.epochs} epochs")
            decay = args.lr_decay_epochs if stage.lr_decay_epochs is None else stage.lr_decay_epochs
            lr = step_lr(stage_epoch, args.learning_rate if stage.lr is None else stage.lr, decay, args.lr_decay_rate)
            set_lr(optimizer, lr)
            train_loader.set_epoch(epoch)
            distiller.on_epoch_start(stage_epoch, train_loader, stage)
            t0 = time.time()
            train = train_one_epoch(model, train_loader, optimizer, epoch,
                                    print_freq=args.print_freq, log=log, world_size=ctx.world_size,
                                    precision=precision, channels_last=channels_last)
            sync_buffers(distiller)
            distiller.eval()
            val = validate(distiller.forward_test, val_loader, ctx.device, precision, channels_last)
            wall += time.time() - t0
            log(f"Epoch {epoch}: lr {lr:g} train loss {train['loss']:.4f} acc@1 {train['acc']:.2f} | "
                f"test loss {val['loss']:.4f} acc@1 {val['acc']:.2f} acc@5 {val['acc_top5']:.2f} "
                f"| {wall:.0f}s")
            run.scalars({"train/loss": train["loss"], "train/acc": train["acc"],
                         **{f"train/loss_{k}": v for k, v in train["terms"].items()},
                         "test/acc": val["acc"], "test/acc_top5": val["acc_top5"],
                         "test/loss": val["loss"], "lr": lr}, epoch)
            weights = {"format": FORMAT, **meta, "model": distiller.student.state_dict(),
                       "extras": distiller.extra_state_dict(), "epoch": epoch, "stage": stage.name,
                       "accuracy": val["acc"], "deploy": distiller.deploy_state()}
            if stage.selects_best and (best_epoch == 0 or val["acc"] > best_acc):
                best_acc, best_epoch = val["acc"], epoch
                run.save({**weights, "best_acc": best_acc}, "best.pth")
            run.save({**weights, "best_acc": best_acc, "best_epoch": best_epoch, "wall_time": wall,
                      "optimizer": optimizer.state_dict(), "scaler": precision.state_dict(),
                      "rng": rng_state()}, "last.pth")
            summary.update(epochs_done=epoch, finished=epoch == total, stage=stage.name,
                           best_acc=best_acc, best_epoch=best_epoch, last_acc=val["acc"],
                           last_train_loss=train["loss"],
                           last_acc_top5=val["acc_top5"], wall_time=wall)
            run.summary(summary)
    finally:
        run.close()
    log(f"best top-1 {best_acc:.2f} at epoch {best_epoch}; run folder {run_path}")
    return summary

"""``--evaluate CHECKPOINT``: score a checkpoint on the test split of ``--dataset`` without
training and without a run folder.

Any file ``--path_t`` accepts can be scored: the toolbox's ``best.pth``/``last.pth`` (the
architecture and class count are stored; a SimKD student's deploy state loads as the whole
deployed model), RepDistiller/SimKD's ``{'model': state_dict}`` (the architecture from their
folder-name convention, else ``--model`` / ``--model_t``), bare state dicts. One line is
printed (top-1, top-5, loss, images/s) and the result is written as JSON beside the checkpoint
(``<file>.eval.json``), or into ``--save_folder`` when that folder is not writable.
Distributed runs score each process's shard and sum the counts (``helper.loop.validate``).
"""
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from helper.checkpoint import load_teacher, model_name_from_path
from helper.errors import UserError
from helper.files import atomic_write, load_file
from helper.loop import validate
from helper.precision import Precision
from helper.trainer import build_data
from models.base import fit_to_data


def _architecture(checkpoint, path, model_name, fallback):
    """The model name to pass to ``load_teacher``: ``model_name`` when given (``--model_t``),
    None when the file (or its path) names the architecture, else ``fallback`` (``--model``,
    ``--model_s``)."""
    if model_name is not None:
        return model_name
    stored = checkpoint.get("model_name") if isinstance(checkpoint, dict) else None
    if stored or model_name_from_path(path):
        return None
    return fallback


def load_for_evaluation(path, num_classes, model_name=None, fallback=None, flag="--model",
                        checkpoint=None):
    """``(model, checkpoint)`` as ``load_teacher`` builds it; its errors name ``flag``.
    ``checkpoint``: the file's contents, when already read."""
    if checkpoint is None:
        checkpoint = load_file(path, "checkpoint to evaluate")
    try:
        return load_teacher(path, num_classes,
                            _architecture(checkpoint, path, model_name, fallback), checkpoint)
    except UserError as e:
        text = str(e).replace("teacher checkpoint", "checkpoint").replace("--model_t", flag)
        raise UserError(text) from None


def result_path(checkpoint_path, save_folder):
    """``<file>.eval.json`` beside the checkpoint, or ``<folder>_<file>.eval.json`` in
    ``save_folder`` when the checkpoint's folder is not writable."""
    path = Path(checkpoint_path)
    name = path.name + ".eval.json"
    folder = path.resolve().parent
    if os.access(folder, os.W_OK | os.X_OK):
        return path.parent / name
    return Path(save_folder) / (f"{folder.name}_{name}" if folder.name else name)


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(config, ctx, path, model_name=None, fallback=None, flag="--model"):
    """Score ``path`` on the test split (``build_data``'s validation loader) and report it.

    The architecture is ``model_name`` when given, else the one the file or its path names,
    else ``fallback``; errors name ``flag`` as the way to choose it.
    Returns the result dict (also written as JSON by rank 0).
    """
    args = config.args
    checkpoint = load_file(path, "checkpoint to evaluate")  # fails before the data is built
    config, _, val_loader = build_data(config, ctx)
    info = config.data
    model, checkpoint = load_for_evaluation(path, info["num_classes"], model_name, fallback, flag,
                                            checkpoint)
    model = fit_to_data(model.to(ctx.device), info["input_size"], "model")
    model.eval()
    channels_last = args.channels_last
    if channels_last:
        model.to(memory_format=torch.channels_last)
    precision = Precision.from_args(args, ctx.device)
    _synchronize(ctx.device)
    start = time.perf_counter()
    metrics = validate(model, val_loader, ctx.device, precision, channels_last)
    _synchronize(ctx.device)
    seconds = time.perf_counter() - start
    images = info.get("val_size")
    rate = images / seconds if images and seconds > 0 else None
    stored = checkpoint if isinstance(checkpoint, dict) else {}
    result = {
        "checkpoint": str(Path(path).resolve()), "model_name": model.model_name,
        "dataset": args.dataset, "num_classes": info["num_classes"],
        "acc": metrics["acc"], "acc_top5": metrics["acc_top5"], "loss": metrics["loss"],
        "images": images, "seconds": seconds, "images_per_s": rate,
        "world_size": ctx.world_size, "device": str(ctx.device),
        "amp": precision.dtype is not None and str(precision.dtype).replace("torch.", ""),
        "recorded": {k: stored[k] for k in ("accuracy", "best_acc", "published_acc", "epoch",
                                            "distill")
                     if isinstance(stored.get(k), (int, float, str))},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if ctx.is_main:
        out = result_path(path, args.save_folder)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
        except OSError as e:
            raise UserError(f"cannot write {out} ({e.strerror or e}); pass a writable "
                            "--save_folder") from e
        speed = f"{rate:.0f} img/s" if rate else "? img/s"
        published = result["recorded"].get("published_acc")
        if isinstance(published, (int, float)):
            speed += f" (published top-1 {published:.2f})"
        ctx.log(f"evaluate {path}: {model.model_name} on {args.dataset} test ({images} images): "
                f"top-1 {metrics['acc']:.2f} top-5 {metrics['acc_top5']:.2f} "
                f"loss {metrics['loss']:.4f} {speed}; written to {out}")
    return result

"""``--evaluate CHECKPOINT``: score a checkpoint on the test split of ``--dataset`` without
training and without a run folder.

Any file ``--path_t`` accepts can be scored: the toolbox's ``best.pth``/``last.pth`` (the
architecture and class count are stored; a SimKD student's deploy state loads as the whole
deployed model), RepDistiller/SimKD's ``{'model': state_dict}`` (the architecture from their
folder-name convention, else ``--model`` / ``--model_t``), bare state dicts. A checkpoint
trained on inputs normalised otherwise than ``--dataset``'s pipeline (e.g. akamaster's, with
ImageNet's mean and std) sees its own normalisation (``helper.teachers.normalization``). One line is
printed (top-1, top-5, loss, images/s) and the result is written as JSON: into
``--save_folder`` when it is given (``<folder>_<file>.eval.json``), else beside the checkpoint
(``<file>.eval.json``), unless that folder is not writable or holds a record to keep (a
teacher's registration record, or one over more test images), which then also go into
``--save_folder``.
Distributed runs score each process's shard and sum the counts (``helper.run.loop.validate``).
With ``--linear_probe DATASET`` the entry scripts call ``helper.run.probe.linear_probe`` instead:
a linear classifier on the checkpoint's frozen features of DATASET.

``check_published`` scores a teacher the zoo just wrote (``helper/teachers/zoo.py``) the same way
and compares it with its published top-1 (more than 0.5 points off: a warning line); its
record, beside the checkpoint, is the registration record (``"registration": true``).
"""
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from dataset import load_arrays
from dataset.folder import FOLDER_DATASET_NAMES, find_split_folders
from helper.run.checkpoint import load_teacher, model_name_from_path
from helper.run.distributed import Context
from helper.core.errors import UserError
from dataset.cifar import converted_from
from helper.core.files import atomic_write, load_file
from helper.run.loop import validate
from helper.teachers.normalization import data_normalization
from helper.run.options import RunConfig, RunOptions
from helper.run.precision import Precision, use_channels_last
from helper.run.trainer import build_data
from models.base import fit_to_data


def architecture_to_load(checkpoint, path, model_name, fallback):
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
                        checkpoint=None, dataset=None):
    """``(model, checkpoint)`` as ``load_teacher`` builds it (taking ``dataset``'s inputs); its
    errors name ``flag``. ``checkpoint``: the file's contents, when already read."""
    if checkpoint is None:
        checkpoint = load_file(path, "checkpoint to evaluate")
    try:
        name = architecture_to_load(checkpoint, path, model_name, fallback)
        return load_teacher(path, num_classes, name, checkpoint, dataset=dataset)
    except UserError as e:
        text = str(e).replace("teacher checkpoint", "checkpoint").replace("--model_t", flag)
        raise UserError(text) from None


def record_beside(checkpoint_path):
    """``<file>.eval.json`` beside the checkpoint."""
    path = Path(checkpoint_path)
    return path.parent / (path.name + ".eval.json")


def record_in(save_folder, checkpoint_path):
    """``<folder>_<file>.eval.json`` in ``save_folder``: the checkpoint's folder in the name
    keeps the records of many ``best.pth`` apart."""
    path = Path(checkpoint_path)
    name = path.name + ".eval.json"
    folder = path.resolve().parent
    return Path(save_folder) / (f"{folder.name}_{name}" if folder.name else name)


def save_folder_given(run):
    """Whether ``--save_folder`` names a folder (its default, ./save, counts as not given)."""
    return run.save_folder != RunOptions().save_folder


def kept_record(record, result):
    """Why the record at ``record`` must not be replaced by ``result`` (None: it may be): a
    teacher's registration record (``check_published``), or, from before those were marked, a
    record of another data set or of more test images."""
    try:
        old = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):  # none, or not JSON (a write cut short)
        return None
    except OSError as e:
        return f"it cannot be read ({e.strerror or e})"
    if not isinstance(old, dict):
        return None
    if old.get("registration") is True:
        return "it is the teacher's registration record"
    if "dataset" in old and old["dataset"] != result["dataset"]:
        return f"it scores {old['dataset']}"
    images, ours = old.get("images"), result["images"]
    if isinstance(images, int) and isinstance(ours, int) and images > ours:
        return f"it scores {images} test images, this run {ours}"
    return None


def result_path(checkpoint_path, run, result):
    """``(where --evaluate writes result, why not beside the checkpoint or None)``: into
    ``--save_folder`` when given, else beside the checkpoint unless its folder is not writable
    or the record there is kept (``kept_record``)."""
    if save_folder_given(run):
        return record_in(run.save_folder, checkpoint_path), None
    beside = record_beside(checkpoint_path)
    if not os.access(beside.resolve().parent, os.W_OK | os.X_OK):
        return record_in(run.save_folder, checkpoint_path), f"{beside.parent} is not writable"
    kept = kept_record(beside, result)
    if kept:
        return record_in(run.save_folder, checkpoint_path), f"{beside} is kept: {kept}"
    return beside, None


def input_normalization_record(model, dataset):
    """The data's normalisation, and the checkpoint's own where the model re-normalises."""
    out = {"data": data_normalization(dataset).as_dict()}
    own = getattr(model, "input_normalization", None)
    if own is not None:
        out["checkpoint"] = own.as_dict()
    return out


def _synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def evaluate(config, ctx, path, model_name=None, fallback=None, flag="--model",
             registration=False):
    """Score ``path`` on the test split (``build_data``'s validation loader) and report it.

    The architecture is ``model_name`` when given, else the one the file or its path names,
    else ``fallback``; errors name ``flag`` as the way to choose it.
    Returns the result dict (also written as JSON by rank 0: beside the checkpoint, marked as
    its registration record, with ``registration``; else where ``result_path`` says).
    """
    dataset = config.data.dataset
    checkpoint = load_file(path, "checkpoint to evaluate")  # fails before the data is built
    config, _, val_loader = build_data(config, ctx)
    info = config.data_info
    model, checkpoint = load_for_evaluation(path, info["num_classes"], model_name, fallback, flag,
                                            checkpoint, dataset=dataset)
    model = fit_to_data(model.to(ctx.device), info["input_size"], "model")
    model.eval()
    channels_last = use_channels_last(config.precision, model, ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    precision = Precision.from_options(config.precision, ctx.device)
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
        "dataset": dataset, "num_classes": info["num_classes"],
        "acc": metrics["acc"], "acc_top5": metrics["acc_top5"], "loss": metrics["loss"],
        "images": images, "seconds": seconds, "images_per_s": rate,
        "world_size": ctx.world_size, "device": str(ctx.device),
        "normalization": input_normalization_record(model, dataset),
        "amp": precision.dtype is not None and str(precision.dtype).replace("torch.", ""),
        "recorded": {k: stored[k] for k in ("accuracy", "best_acc", "published_acc", "epoch",
                                            "distill")
                     if isinstance(stored.get(k), (int, float, str))},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if registration:
        result["registration"] = True
    if ctx.is_main:
        if registration:
            out, moved = record_beside(path), None
        else:
            out, moved = result_path(path, config.run, result)
        write_record(out, result)
        speed = f"{rate:.0f} img/s" if rate else "? img/s"
        own = getattr(model, "input_normalization", None)
        if own is not None:
            speed += f" (inputs re-normalised to the checkpoint's {own})"
        published = result["recorded"].get("published_acc")
        if isinstance(published, (int, float)):
            speed += f" (published top-1 {published:.2f})"
        ctx.log(f"evaluate {path}: {model.model_name} on {dataset} test ({images} images): "
                f"top-1 {metrics['acc']:.2f} top-5 {metrics['acc_top5']:.2f} "
                f"loss {metrics['loss']:.4f} {speed}; written to {out}"
                + (f" ({moved})" if moved else ""))
    return result


# ---- a fetched teacher against its published accuracy ------------------------------------
PUBLISHED_TOLERANCE = 0.5  # points of top-1 (issue 15)


def write_record(out, result):
    """Write the JSON record ``result`` of a scored checkpoint to ``out``, atomically; a failed
    write is one line."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write((json.dumps(result, indent=2) + "\n").encode()))
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); pass a writable "
                        "--save_folder") from e


def data_missing(dataset, data_folder):
    """Why the test split of ``dataset`` is not in ``data_folder``, or None when it is (nothing
    is downloaded)."""
    try:
        if dataset in FOLDER_DATASET_NAMES:
            find_split_folders(dataset, data_folder)
        else:
            load_arrays(dataset, data_folder, download=False)
    except UserError as e:
        return str(e)
    return None


def check_published(path, dataset, data_folder, save_folder, log=print):
    """Score a fetched or registered teacher once on the test split of ``dataset`` (the line
    and ``<file>.eval.json`` of ``--evaluate``) and compare its top-1 with the accuracy its
    source publishes (else the one the file records). Returns ``(top-1, reference or None,
    within PUBLISHED_TOLERANCE)``; a difference beyond it is reported, not an error."""
    config = RunConfig.create(None, data={"dataset": dataset, "data_folder": str(data_folder),
                                          "batch_size": 256},
                              run={"evaluate": str(path), "save_folder": str(save_folder)})
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    result = evaluate(config, Context(device=device), path, registration=True)
    acc, recorded = result["acc"], result["recorded"]
    name = result["model_name"]
    reference, what = recorded.get("published_acc"), "published"
    if not isinstance(reference, (int, float)):
        reference, what = recorded.get("accuracy"), "recorded in the file"
    if not isinstance(reference, (int, float)):
        log(f"{name}: test top-1 {acc:.2f} (no published accuracy to compare with)")
        return acc, None, True
    diff = acc - reference
    if abs(diff) > PUBLISHED_TOLERANCE:
        log(f"warning: {name}: test top-1 {acc:.2f} is {abs(diff):.2f} points "
            f"{'below' if diff < 0 else 'above'} the {what} {reference:.2f} (more than "
            f"{PUBLISHED_TOLERANCE} off): {_why_off(dataset, data_folder)}")
        return acc, reference, False
    log(f"{name}: test top-1 {acc:.2f} agrees with the {what} {reference:.2f} ({diff:+.2f})")
    return acc, reference, True


def _why_off(dataset, data_folder):
    """Why a teacher whose weights loaded strict may score off its published accuracy."""
    source = converted_from(dataset, data_folder) if dataset in ("cifar10", "cifar100") else None
    if source:
        return (f"{data_folder} holds a {dataset} made from {source}, not the original pixels; "
                "images stored lossily (JPEG) lose detail the teacher was trained on and score "
                "lower (akamaster's resnet20: 81.03 on CIFAR-10's test set as quality-75 JPEGs, "
                "91.73 published); the weights loaded strict, so the teacher is the published one")
    return (f"check that {data_folder} holds the original {dataset} test set and that the "
            "teacher is the one published")

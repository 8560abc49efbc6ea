"""``--resume``: the checkpoint a run continues from, checked against the run (the models,
method and data set through the checkpoint's meta; the flags of ``RESUME_FIXED`` and every KD
and method option through the arguments last.pth stores)."""
import dataclasses
import json
import os
from pathlib import Path

from helper.checkpoint import FORMAT
from helper.errors import UserError
from helper.files import load_file


# The flags a resumed run must share with the run it continues, besides the models, method
# and data set (checked through the checkpoint's meta) and the method's options. --epochs may grow.
RESUME_FIXED = ("path_t", "batch_size", "learning_rate", "lr_decay_epochs", "lr_decay_rate",
                "weight_decay", "momentum", "cls", "div", "beta", "optimizer", "nesterov",
                "lr_scheduler", "lr_decay_step", "warmup_epochs", "label_smoothing", "aug",
                "random_erasing", "random_rotation", "mixup", "cutmix", "input_size")


def plain(data):
    """``data`` as JSON has it (tuples as lists, odd types as strings): what last.pth stores of
    the arguments, compared by ``--resume``."""
    return json.loads(json.dumps(data, default=str))


def resume_checkpoint(config, run_path, meta):
    """The checkpoint ``--resume`` continues from, checked against this run; or None.

    Without ``--resume`` an existing run in ``run_path`` is an error rather than being
    silently overwritten.
    """
    args = config.args
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
    for key in ("model_name", "distill", "dataset", "teacher"):
        if checkpoint.get(key) != meta.get(key):
            raise UserError(f"cannot resume from {path}: it was written for {key} "
                            f"{checkpoint.get(key)!r}, this run uses {meta.get(key)!r}")
    check_same_args(config, checkpoint.get("args") or _summary_args(path), path)
    return checkpoint


def check_same_args(config, stored, path):
    """Refuse to resume with a flag of ``RESUME_FIXED`` or the method's options changed."""
    method = config.method
    keys = (*RESUME_FIXED, *(f.name for f in dataclasses.fields(method.kd)),
            *method.option_values())
    now = plain(config.effective_args())
    for key in keys:
        if key not in (stored or {}):
            continue  # a checkpoint older than the flag
        old, new = stored[key], now.get(key)
        if key == "path_t" and old and new:  # the same files in order, however spelt
            same = _real_paths(old) == _real_paths(new)
        else:
            same = old == new
        if not same:
            raise UserError(f"cannot resume from {path}: it was trained with --{key} "
                            f"{_flag_value(old)}, this run has {_flag_value(new)}; resume with "
                            f"the same --{key}, or start a new run (another --trial)")


def _real_paths(value):
    """``--path_t``'s file or files, resolved, as a list."""
    return [os.path.realpath(p) for p in ([value] if isinstance(value, str) else value)]


def _flag_value(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _summary_args(path):
    """The arguments in the summary.json beside ``path``, for a last.pth that has none."""
    try:
        return json.loads((Path(path).parent / "summary.json").read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

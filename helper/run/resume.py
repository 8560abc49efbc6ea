"""``--resume``: the checkpoint a run continues from, checked against the run: the models,
method and data set, and the teacher files' SHA-256, through the checkpoint's meta; every other
option the run uses through the arguments last.pth stores, but those declared free
(``RESUME_FREE``)."""
import dataclasses
import json
import os
from pathlib import Path

from distillers import option_owners
from distillers.base import WeightOptions
from helper.run.checkpoint import FORMAT
from helper.core.errors import UserError
from helper.core.files import load_file


# The options a resumed run may change: where and how it runs, not what it trains. --resume
# refuses a change of every other option the run uses (``fixed_options`` walks the parser), so
# a flag added later is fixed unless it is named here.
RESUME_FREE = frozenset({
    "epochs",                                                   # may grow
    "resume", "config", "evaluate",                             # how this process starts
    "linear_probe", "probe_data_folder", "logger",              # --evaluate's probe; logs
    "data_folder", "save_folder", "num_workers", "print_freq", "gpu_id",
    # the processes: a run may continue on other machines (but not on more or fewer of them:
    # each machine has its --batch_size, so --world-size sets the total batch)
    "multiprocessing_distributed", "rank", "dist_url", "dist_backend", "nproc", "dist_timeout",
    # speed: the same training, computed otherwise
    "deterministic", "memory_format", "channels_last", "compile", "teacher_forward",
    "teacher_compile", "teacher_cache",
    # the teachers: compared by their checkpoints' model names and SHA-256 instead
    "path_t", "model_t",
})


def plain(data):
    """``data`` as JSON has it (tuples as lists, odd types as strings): what last.pth stores of
    the arguments, compared by ``--resume``."""
    return json.loads(json.dumps(data, default=str))


def resume_checkpoint(config, run_path, meta):
    """The checkpoint ``--resume`` continues from, checked against this run; or None.

    Without ``--resume`` an existing run in ``run_path`` is an error rather than being
    silently overwritten.
    """
    resume = config.run.resume
    last = run_path / "last.pth"
    refuse_overwrite(config, run_path)
    if resume is None:
        return None
    path = last if resume == "auto" else resume
    if resume == "auto" and not last.exists():
        raise UserError(f"nothing to resume: {last} does not exist; drop --resume to start the run")
    checkpoint = load_file(path, "checkpoint to resume")
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "optimizer" not in checkpoint:
        raise UserError(f"{path} is not a last.pth written by this toolbox; --resume needs one")
    for key in ("model_name", "distill", "dataset", "teacher"):
        if checkpoint.get(key) != meta.get(key):
            raise UserError(f"cannot resume from {path}: it was written for {key} "
                            f"{checkpoint.get(key)!r}, this run uses {meta.get(key)!r}")
    check_same_teacher_files(checkpoint, meta, path)
    check_same_args(config, checkpoint.get("args") or _summary_args(path), path)
    return checkpoint


def refuse_overwrite(config, run_path):
    """Without --resume, a run folder that holds a run is an error, never overwritten."""
    if config.run.resume is None and (run_path / "last.pth").exists():
        raise UserError(f"{run_path} already holds a run; pass --resume to continue it, "
                        "or another --trial or --save_folder to start a new one")


def check_same_teacher_files(checkpoint, meta, path):
    """Refuse to resume when a teacher file's bytes differ from those the run started with
    (a file replaced at its path); a teacher moved or copied elsewhere is the same."""
    if "teacher_sha256" not in checkpoint:  # a checkpoint from before the hashes: by path
        if _real_paths(checkpoint.get("path_t")) != _real_paths(meta.get("path_t")):
            raise UserError(f"cannot resume from {path}: it was trained with --path_t "
                            f"{_flag_value(checkpoint.get('path_t'))}, this run has "
                            f"{_flag_value(meta.get('path_t'))}; resume with the same --path_t")
        return
    old, new = checkpoint["teacher_sha256"], meta.get("teacher_sha256")
    if old != new:
        raise UserError(f"cannot resume from {path}: "
                        f"{_changed_teacher(old, new, _real_paths(meta.get('path_t')))}; give "
                        "the teacher the run started with as --path_t, or start a new run "
                        "(another --trial)")


def _changed_teacher(old, new, files):
    """What differs between the teacher files' SHA-256 ``old`` and ``new``, in words."""
    for file, was, now in zip(files, old, new):
        if was != now:
            return (f"the teacher file {file} is not the one the run started with (SHA-256 "
                    f"{now[:12]}..., was {was[:12]}...)")
    return f"it was trained with {len(old)} teacher files, this run has {len(new)}"


def fixed_options(config):
    """The options a resumed run must share with the run it continues: every option of its
    parser (``config.option_names``) but those of ``RESUME_FREE``, and of the methods' own
    options only those of this run's methods."""
    method = config.method
    used = {*method.option_values(), *(f.name for f in dataclasses.fields(method.kd)),
            *(f.name for f in dataclasses.fields(WeightOptions))}
    unused = {f.name for _, options in option_owners()
              for f in dataclasses.fields(options)} - used
    names = config.option_names or tuple(config.effective_args())
    return [name for name in names if name not in RESUME_FREE and name not in unused]


def check_same_args(config, stored, path):
    """Refuse to resume with an option of ``fixed_options`` changed."""
    now = plain(config.effective_args())
    for key in fixed_options(config):
        if key not in (stored or {}):
            continue  # a checkpoint older than the option
        old, new = stored[key], now.get(key)
        if old != new:
            raise UserError(f"cannot resume from {path}: it was trained with --{key} "
                            f"{_flag_value(old)}, this run has {_flag_value(new)}; resume with "
                            f"the same --{key}, or start a new run (another --trial)")


def _real_paths(value):
    """``--path_t``'s file or files, resolved, as a list (none: an empty list)."""
    if value is None:
        return []
    return [os.path.realpath(p) for p in ([value] if isinstance(value, str) else value)]


def _flag_value(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def _summary_args(path):
    """The arguments in the summary.json beside ``path``, for a last.pth that has none."""
    try:
        return json.loads((Path(path).parent / "summary.json").read_text())["args"]
    except (OSError, ValueError, KeyError, TypeError):
        return None

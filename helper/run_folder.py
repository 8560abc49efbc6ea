"""The run folder (DESIGN.md, "Run folder"): TensorBoard events, last/best checkpoints and
summary.json, all written atomically and by rank 0 only."""
import json
import os
import sys
from pathlib import Path

from helper.files import atomic_save
from helper.errors import UserError

SEP = "~" if sys.platform.startswith("win") else ":"


def teacher_run_name(config):
    """SimKD's teacher folder name: ``<model>_vanilla_<dataset>_trial_<trial>``."""
    return f"{config.model}_vanilla_{config.args.dataset}_trial_{config.args.trial}"


def student_run_name(config, teacher_name):
    """SimKD's student folder name: ``S:<s>_T:<t>_<dataset>_<method>_r:<c>_a:<d>_b:<b>_<trial>``,
    with the method's canonical name and its effective weights."""
    s, args, w = SEP, config.args, config.method.weights
    return (f"S{s}{config.model}_T{s}{teacher_name}_{args.dataset}_{config.method.name}_"
            f"r{s}{w.cls:g}_a{s}{w.div:g}_b{s}{w.beta:g}_{args.trial}")


class RunFolder:
    """Writes one run's files. On ranks other than 0 every method does nothing."""

    def __init__(self, path, write=True, purge_step=None):
        self.path = Path(path)
        self.write = write
        self.writer = None
        if write:
            self.path.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.path), purge_step=purge_step)

    def scalars(self, values, step):
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def save(self, state, name):
        if not self.write:
            return
        try:
            atomic_save(state, self.path / name)
        except OSError as e:
            raise UserError(f"cannot write {self.path / name} ({e.strerror or e}); the previous "
                            f"{name} is kept; free disk space and continue with --resume") from e

    def summary(self, data):
        if not self.write:
            return
        tmp = self.path / f".summary.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps(data, indent=2, default=str))
        os.replace(tmp, self.path / "summary.json")

    def close(self):
        if self.writer is not None:
            self.writer.close()

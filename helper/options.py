"""The command line of train_teacher.py and train_student.py (SimKD's flag names), and the
read-only run configuration derived from it.

Parsing returns a ``RunConfig``: the parsed flags as a read-only namespace, and what the run
derives from them, computed once (the method's options and effective weights, the learning
rate's default; per process, the batch and the ``--adjust_lr`` learning rate; after the data
is built, its sizes). Nothing writes to the namespace after parsing. A method's flags are
generated from its ``Options`` dataclass (``distillers/options.py``).
"""
import argparse
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from dataset import DATASET_NAMES, FOLDER_DATASET_NAMES, augment
from helper import (config_file, distributed, fkd_labels, precision, schedule, teacher_cache,
                    teacher_forward)
from helper.argtypes import OneLineParser as _Parser
from helper.argtypes import non_negative as _non_negative, number as _number, positive as _positive
from helper.errors import UserError
from distillers import MethodConfig, RunInfo, distiller_names, option_owners
from distillers.combine import configure, split_methods
from distillers.options import add_options
from models.registry import model_name as model_arg

SMALL_LR_MODELS = ("MobileNetV2", "MobileNetV2_1_0", "mobile_half", "ShuffleV1", "ShuffleV2",
                   "ShuffleV2_1_5")


# The options a resumed run may change: where and how it runs, not what it trains. --resume
# refuses a change of every other option the run uses (helper/resume.py walks the parser), so
# a flag added later is fixed unless it is named here.
RESUME_FREE = frozenset({
    "epochs",                                                   # may grow
    "resume", "config", "evaluate",                             # how this process starts
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

# numpy's seed range. --seed plus a numeric --trial, times the loaders' stride (100003) plus the
# epoch, then stays within torch's 64-bit generator seeds.
MAX_SEED = 2**32 - 1


def _epochs_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 150,180,210, got {text!r}")
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"epochs must be positive (the lr decays after each), "
                                         f"got {text!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"epochs must be increasing, got {text!r}")
    return values


def _method_spec(text):
    """``--distill``: one registered method, or several joined by ``+``."""
    try:
        split_methods(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(f"invalid choice: {e}") from None
    return text


def _common(parser):
    g = parser.add_argument_group("data and optimisation")
    g.add_argument("--dataset", default="cifar100", choices=DATASET_NAMES)
    g.add_argument("--data_folder", "--data-folder", default="./data",
                   help="folder holding the data set (downloaded there when missing and online)")
    g.add_argument("--batch_size", "--batch-size", type=_positive(int), default=64)
    g.add_argument("--num_workers", "--num-workers", type=_non_negative(int), default=8,
                   help="loader workers for folder data sets (in-memory data sets need none)")
    g.add_argument("--epochs", type=_positive(int), default=240)
    g.add_argument("--learning_rate", "--learning-rate", "--lr", type=_positive(float), default=None,
                   help="default 0.05, or 0.01 for MobileNet/ShuffleNet as in SimKD")
    g.add_argument("--lr_decay_epochs", "--lr-decay-epochs", type=_epochs_list, default=[150, 180, 210])
    g.add_argument("--lr_decay_rate", "--lr-decay-rate", type=_positive(float), default=0.1)
    g.add_argument("--optimizer", choices=schedule.OPTIMIZERS, default="sgd",
                   help="sgd (momentum, fused where available) or adamw (torch's defaults)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD)")
    g.add_argument("--lr_scheduler", "--lr-scheduler", choices=schedule.SCHEDULERS,
                   default="multistep",
                   help="per-epoch schedule: multistep (decay after --lr_decay_epochs), step "
                        "(every --lr_decay_step epochs), cosine or linear (to 0 over the epochs)")
    g.add_argument("--lr_decay_step", "--lr-decay-step", type=_positive(int), default=None,
                   help="--lr_scheduler step: decay by --lr_decay_rate every this many epochs")
    g.add_argument("--warmup_epochs", "--warmup-epochs", type=_non_negative(int), default=0,
                   help="linear warm-up epochs before the schedule (epoch k at lr*k/(N+1))")
    g.add_argument("--label_smoothing", "--label-smoothing",
                   type=_number(float, lambda v: 0 <= v < 1, "in [0, 1)"), default=0.0,
                   help="label smoothing of the cross-entropy term")
    g.add_argument("--weight_decay", "--weight-decay", type=_non_negative(float), default=5e-4)
    g.add_argument("--momentum", type=_number(float, lambda v: 0 <= v < 1, "in [0, 1)"),
                   default=0.9)
    g.add_argument("--dali", choices=["cpu", "gpu"], default=None,
                   help="DALI pipelines for folder data sets (imagenet, cub200, folder): decode on cpu or gpu")
    g.add_argument("--pretrained", default=None,
                   help="start the trained model from a weight file, or torchvision's weights by name "
                        "(ImageNet models, e.g. IMAGENET1K_V1); a classifier of another class count "
                        "starts fresh (MGD's --use-pretrained)")
    g.add_argument("--jitter", type=int, default=0,
                   help="MNIST only: random translation of up to this many pixels (Hinton et al.: 2)")
    r = parser.add_argument_group("run")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="start from a config.yaml (a run folder's); flags given override it")
    r.add_argument("--trial", default="0", help="trial id, part of the run folder name and the seed")
    r.add_argument("--print_freq", "--print-freq", type=_positive(int), default=100)
    r.add_argument("--gpu_id", "--gpu-id", type=_non_negative(int), default=0,
                   help="CUDA device used when CUDA is present")
    r.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical reruns on CPU)")
    r.add_argument("--seed", type=_number(int, lambda v: 0 <= v <= MAX_SEED, f"in 0..{MAX_SEED}"),
                   default=12345, help="base seed; the trial id is added to it")
    r.add_argument("--save_folder", "--save-folder", default="./save")
    r.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from this run's last.pth, or from the given checkpoint")
    r.add_argument("--evaluate", metavar="FILE", help="score FILE on the test split; no training")
    distributed.add_arguments(parser)
    precision.add_arguments(parser)
    augment.add_arguments(parser)


def teacher_parser():
    parser = _Parser(description="Train a model with cross-entropy (a teacher or a baseline).")
    parser.add_argument("--model", default="resnet32x4", type=model_arg)
    _common(parser)
    return parser


def _each(kind):
    """An argparse type: comma-separated values, each converted by ``kind``; one value as it
    is, several as a list (``--path_t``/``--model_t`` given in a config file)."""
    def parse(text):
        parts = [kind(v.strip()) if v.strip() else None for v in str(text).split(",")]
        if None in parts:
            raise argparse.ArgumentTypeError(f"empty name in {text!r}; separate values by single "
                                             "commas or spaces")
        return parts[0] if len(parts) == 1 else parts
    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


class _OneOrSeveral(argparse.Action):
    """``nargs="+"`` kept as one string when one value is given, so that a run with one
    teacher keeps its ``--path_t FILE`` in summary.json, config.yaml and the --resume checks."""

    def __call__(self, parser, namespace, values, option_string=None):
        flat = [v for value in values for v in ([value] if isinstance(value, str) else value)]
        setattr(namespace, self.dest, flat[0] if len(flat) == 1 else flat)


def student_parser():
    parser = _Parser(description="Distil a student from a trained teacher.")
    g = parser.add_argument_group("distillation")
    g.add_argument("--model_s", "--model-s", default="resnet8x4", type=model_arg)
    g.add_argument("--path_t", "--path-t", default=None, nargs="+", type=_each(str),
                   action=_OneOrSeveral, metavar="CHECKPOINT",
                   help="teacher checkpoint; several (space- or comma-separated) distil from "
                        "their mean logit, or with --distill camkd")
    g.add_argument("--model_t", "--model-t", default=None, nargs="+", type=_each(model_arg),
                   action=_OneOrSeveral, metavar="MODEL",
                   help="teacher architecture, when the checkpoint does not name it (several: "
                        "one per --path_t, in order)")
    g.add_argument("--distill", default="kd", type=_method_spec, metavar="METHOD[+METHOD...]",
                   help=f"the method, or several joined by '+' (e.g. dkd+reviewkd, each with "
                        f"its own -b NAME=B): {', '.join(distiller_names())}")
    add_options(parser, option_owners())
    _common(parser)
    teacher_forward.add_arguments(parser)
    teacher_cache.add_arguments(parser)
    fkd_labels.add_arguments(parser)
    return parser


class FrozenNamespace(argparse.Namespace):
    """The parsed flags, read-only: what a run derives goes into ``RunConfig`` instead."""

    def __init__(self, parsed: argparse.Namespace):
        self.__dict__.update(vars(parsed))

    def __setattr__(self, name, value):
        raise AttributeError(f"the parsed arguments are read-only (tried to set {name!r}); "
                             "derive values into RunConfig")

    def __delattr__(self, name):
        raise AttributeError(f"the parsed arguments are read-only (tried to delete {name!r})")


@dataclass(frozen=True)
class RunConfig:
    """One run's configuration: the flags as given (``args``) and what is derived from them."""
    args: FrozenNamespace
    model: str                      # the model this run trains (--model or --model_s)
    method: MethodConfig            # the method, its options, effective weights and KD term
    learning_rate: float            # --learning_rate, its default by model, --adjust_lr scaled
    batch_size: int                 # the batch of one process (--batch_size is one machine's)
    data: Optional[dict] = None     # num_classes, input_size, train_size, val_size
    flag_learning_rate: Optional[float] = None  # the learning rate before --adjust_lr
    option_names: tuple = ()        # the parser's option names (config.yaml's keys)

    def for_process(self, local_size: int, world_size: int) -> "RunConfig":
        """Split ``--batch_size`` over this machine's ``local_size`` processes; with
        ``--adjust_lr``, scale the learning rate with the total batch (torchdistill)."""
        total = self.args.batch_size
        if total % local_size:
            raise UserError(f"--batch_size {total} does not split evenly over {local_size} "
                            f"processes per node; use a multiple of {local_size}")
        batch = total // local_size
        lr = self.learning_rate * batch * world_size / total if self.args.adjust_lr else self.learning_rate
        return dataclasses.replace(self, batch_size=batch, learning_rate=lr)

    def with_data(self, info: dict) -> "RunConfig":
        return dataclasses.replace(self, data=dict(info))

    @property
    def run_info(self) -> RunInfo:
        """What the method may know of the run."""
        data = self.data or {}
        return RunInfo(epochs=self.args.epochs, batch_size=self.batch_size,
                       **{k: data[k] for k in ("num_classes", "input_size", "train_size",
                                               "val_size") if k in data})

    def effective_args(self) -> dict:
        """The flags as this run uses them (summary.json's ``args``): defaults that depend on
        the model or the method filled in."""
        w = self.method.weights
        return {**vars(self.args), "learning_rate": self.learning_rate, "cls": w.cls,
                "div": w.div, "beta": self.method.beta_value(), "kd_T": self.method.kd.kd_T,
                **self.method.option_values()}

    def file_args(self) -> dict:
        """What config.yaml holds: the effective flags, with the learning rate as given (before
        ``--adjust_lr`` scales it per process), without ``--resume`` and ``--config``."""
        values = self.effective_args()
        if self.flag_learning_rate is not None:
            values["learning_rate"] = self.flag_learning_rate
        keep = set(self.option_names or values) - set(config_file.NOT_WRITTEN)
        return {k: v for k, v in values.items() if k in keep}

    def summary(self) -> dict:
        """Derived values summary.json records beside the flags."""
        return {"batch_size_per_process": self.batch_size, "learning_rate": self.learning_rate}


def _parse(parser, argv):
    """Parse ``argv``; with ``--config FILE``, the file's options are the defaults."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = _Parser(prog=parser.prog, add_help=False)
    pre.add_argument("--config", default=None)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            parser.set_defaults(**config_file.load(known.config, parser))
        except UserError as e:
            parser.error(str(e))
    return FrozenNamespace(parser.parse_args(argv))


def parse_teacher_args(argv=None) -> RunConfig:
    parser = teacher_parser()
    args = _parse(parser, argv)
    return _config(parser, args, args.model, MethodConfig.create("vanilla"))


def parse_student_args(argv=None) -> RunConfig:
    parser = student_parser()
    args = _parse(parser, argv)
    try:
        method = configure(args.distill, args)
    except UserError as e:
        parser.error(str(e))
    teacher_forward.check_arguments(parser, args)
    teacher_cache.check_arguments(parser, args)
    fkd_labels.check_arguments(parser, args)
    return _config(parser, args, args.model_s, method)


def _config(parser, args, model_name, method) -> RunConfig:
    """Check combinations and derive the run configuration (for one process per machine)."""
    distributed.check_arguments(parser, args)
    precision.check_arguments(parser, args)
    augment.check_arguments(parser, args, args.dataset in FOLDER_DATASET_NAMES)
    if args.jitter < 0:
        parser.error(f"--jitter must be 0 or more, got {args.jitter}")
    if not (math.isfinite(args.dist_timeout) and args.dist_timeout > 0):
        parser.error(f"--dist-timeout must be a positive number of minutes, "
                     f"got {args.dist_timeout:g}")
    _check_paths(parser, args)
    _check_schedule(parser, args)
    _check_batch_split(parser, args)
    _check_weights(parser, method)
    lr = args.learning_rate
    if lr is None:
        lr = 0.01 if model_name in SMALL_LR_MODELS else 0.05
    return RunConfig(args, model_name, method, lr, args.batch_size, flag_learning_rate=lr,
                     option_names=tuple(a.dest for a in parser._actions if a.dest != "help"))


def _check_schedule(parser, args):
    """The optimizer and schedule flags' combinations."""
    if args.warmup_epochs >= args.epochs:
        parser.error(f"--warmup_epochs {args.warmup_epochs} must be less than --epochs "
                     f"{args.epochs}")
    if args.nesterov and args.optimizer != "sgd":
        parser.error("--nesterov is SGD's; drop it, or use --optimizer sgd")
    if args.nesterov and args.momentum == 0:
        parser.error("--nesterov needs momentum; give --momentum > 0 (e.g. 0.9)")
    if args.lr_scheduler == "step" and args.lr_decay_step is None:
        parser.error("--lr_scheduler step needs --lr_decay_step N (decay every N epochs)")
    if args.lr_scheduler == "multistep" and args.warmup_epochs:
        early = [m for m in args.lr_decay_epochs if m <= args.warmup_epochs]
        if early:
            parser.error(f"--lr_decay_epochs {','.join(map(str, early))} fall within the "
                         f"--warmup_epochs {args.warmup_epochs}; decay after the warm-up")


def _check_paths(parser, args):
    """No empty paths; the run folder stays inside --save_folder."""
    for flag in ("save_folder", "data_folder", "path_t", "resume", "pretrained"):
        if getattr(args, flag, None) == "":
            parser.error(f"--{flag} is empty; give a path")
    _check_trial(parser, args.trial)


def _check_trial(parser, trial):
    """The trial, the one free-text part of the run folder's name, is a plain name; a numeric
    one is added to the seed."""
    if any(sep in trial for sep in ("/", "\\", os.sep)) or ".." in trial:
        parser.error(f"--trial {trial!r} must be a plain name without '/', '\\' or '..': it names "
                     "the run folder inside --save_folder")
    if trial.isdigit() and (not trial.isdecimal() or int(trial) > MAX_SEED):
        parser.error(f"a numeric --trial is added to the seed and must be in 0..{MAX_SEED}, "
                     f"got {trial}")


def _check_batch_split(parser, args):
    """--batch_size splits over the processes of a node, when their count is known here
    (``RunConfig.for_process`` checks torchrun's)."""
    if not args.multiprocessing_distributed:
        return
    procs = args.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
    if args.batch_size % procs:
        parser.error(f"--batch_size {args.batch_size} does not split evenly over {procs} "
                     f"processes per node; use a multiple of {procs}")


def _check_weights(parser, method):
    """The effective -c/-d/-b: none negative (that would maximise its loss), not all 0."""
    w = method.weights
    betas = [(f"-b {p.name}" if len(method.parts) > 1 else "-b", p.weights.beta)
             for p in method.parts]
    for flag, value in (("-c", w.cls), ("-d", w.div), *betas):
        if not (math.isfinite(value) and value >= 0):
            parser.error(f"{flag} must be 0 or more (a negative weight maximises its loss), "
                         f"got {value:g}")
    if not (w.cls or w.div or any(b for _, b in betas)):
        parser.error(f"no loss term is active: -c, -d and -b are all 0 for --distill "
                     f"{method.name}; give one a positive weight")

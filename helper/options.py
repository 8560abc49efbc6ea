"""The command line of train_teacher.py and train_student.py (SimKD's flag names), and the
read-only run configuration derived from it.

Parsing returns a ``RunConfig``: the parsed flags as a read-only namespace, and what the run
derives from them, computed once (the method's options and effective weights, the learning
rate's default; per process, the batch and the ``--adjust_lr`` learning rate; after the data
is built, its sizes). Nothing writes to the namespace after parsing. A method's flags are
generated from its ``Options`` dataclass (``distillers/options.py``).

What a run records is scoped to it: ``option_names`` are the run-wide flags and the options of
the methods it uses, not other methods' (config.yaml, summary.json, the --resume checks); an
older config.yaml with every method's options loads (``_current_options``). ``--help`` shows
the common flags (``BRIEF_HELP``), ``--distill X --help`` adds X's options, ``--help_all``
every flag.
"""
import argparse
import copy
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from dataset import DATASET_NAMES, FOLDER_DATASET_NAMES, augment
from helper import (config_file, distributed, fkd_labels, loggers, precision, schedule,
                    teacher_cache, teacher_forward)
from helper.argtypes import OneLineParser as _Parser
from helper.argtypes import non_negative as _non_negative, number as _number, positive as _positive
from helper.errors import UserError
from distillers import (KDOptions, MethodConfig, RunInfo, get_distiller,
                        option_owners)
from distillers.combine import configure, split_methods
from distillers.options import add_options, group_titles
from distillers.registry import method_option_names, renamed_options
from models.registry import model_name as model_arg

SMALL_LR_MODELS = ("MobileNetV2", "MobileNetV2_1_0", "mobile_half", "ShuffleV1", "ShuffleV2",
                   "ShuffleV2_1_5")


# What plain --help shows, in this order: the flags most runs set, in one screen.
BRIEF_HELP = ("model", "model_s", "path_t", "model_t", "distill", "cls", "div", "beta", "kd_T",
              "dataset", "data_folder", "batch_size", "epochs", "learning_rate",
              "lr_decay_epochs", "lr_decay_rate", "lr_scheduler", "optimizer", "weight_decay",
              "momentum", "aug", "amp", "config", "trial", "seed", "deterministic",
              "save_folder", "resume", "evaluate", "linear_probe", "logger")

# Options naming files or folders: config.yaml keeps them as given, summary.json resolved.
PATH_OPTIONS = ("data_folder", "save_folder", "path_t", "teacher_cache", "fkd")

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
    r.add_argument("--linear_probe", "--linear-probe", choices=DATASET_NAMES, metavar="DATASET",
                   help="with --evaluate: linear-probe top-1 on DATASET")
    r.add_argument("--probe_data_folder", "--probe-data-folder", metavar="DIR",
                   help="--linear_probe's data (default --data_folder)")
    r.add_argument("--logger", choices=loggers.LOGGERS, default=None,
                   help="mirror scalars and config (optional package)")
    distributed.add_arguments(parser)
    precision.add_arguments(parser)
    augment.add_arguments(parser)


class _BriefFormatter(argparse.HelpFormatter):
    """--help's layout: a flag under its short aliases and main spelling only."""

    def _format_action_invocation(self, action):
        shown = [s for s in action.option_strings if not s.startswith("--")]
        shown.append(next(s for s in action.option_strings if s.startswith("--")))
        if action.nargs == 0:
            return ", ".join(shown)
        metavar = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(shown)} {metavar}"


def _with_default(action):
    """A copy of ``action`` whose help ends with its default (when it has one to show)."""
    text, default = action.help or "", action.default
    if not any(default is v for v in (None, False, argparse.SUPPRESS)) and "default" not in text:
        shown = ",".join(map(str, default)) if isinstance(default, (list, tuple)) else default
        text = f"{text} (default {str(shown).replace('%', '%%')})".lstrip()
    brief = copy.copy(action)
    brief.help = text
    return brief


class _Help(argparse.Action):
    """``-h/--help``: the common flags (``brief_help``); ``--help_all``: every flag."""

    def __init__(self, option_strings, dest, every=False, help=None):
        super().__init__(option_strings, dest="help", nargs=0, default=argparse.SUPPRESS,
                         help=help)
        self.every = every

    def __call__(self, parser, namespace, values, option_string=None):
        _print_and_exit(parser, parser.format_help() if self.every else brief_help(parser))


def _print_and_exit(parser, text):
    """Help on stdout, as argparse's own, then exit 0."""
    sys.stdout.write(text)
    parser.exit(0)


def _add_help(parser):
    parser.add_argument("-h", "--help", action=_Help,
                        help="the common flags (--distill METHOD --help: also its options)")
    parser.add_argument("--help_all", "--help-all", action=_Help, every=True,
                        help="every flag, each method's under its name")


def _method_titles(spec):
    """The help groups of the methods in ``spec`` (``--distill``) and of the KD term."""
    owners = [(None, KDOptions)] + [(n, get_distiller(n).Options) for n in split_methods(spec)]
    return [title for name, options in owners for title in group_titles(name, options)]


def brief_help(parser, spec=None):
    """The ``--help`` text: the common flags (``BRIEF_HELP``) and, for ``--distill spec``, the
    options of its methods and of the KD term; how to see every flag."""
    fmt = _BriefFormatter(parser.prog)
    fmt.add_usage(parser.usage, [], [])
    fmt.add_text(parser.description)
    actions = {a.dest: a for a in parser._actions}
    common = [actions[d] for d in BRIEF_HELP if d in actions]
    fmt.start_section("common options")
    fmt.add_arguments([_with_default(a) for a in common])
    fmt.end_section()
    titles = _method_titles(spec) if spec else []
    for group in parser._action_groups:
        if group.title in titles:
            fmt.start_section(group.title)
            fmt.add_arguments([_with_default(a) for a in group._group_actions if a not in common])
            fmt.end_section()
    fmt.add_text(_more_help(parser, spec))
    return fmt.format_help()


def _more_help(parser, spec):
    flags = sum(1 for a in parser._actions if a.dest != "help")
    groups = sum(1 for g in parser._action_groups if g._group_actions)
    lines = [f"--help_all lists all {flags} flags in {groups} groups."]
    if "distill" in {a.dest for a in parser._actions}:
        if not spec:
            lines.insert(0, "--distill METHOD --help adds the method's own options.")
        lines.append("python -m distillers lists the methods with their papers, reference "
                     "code and defaults.")
    return " ".join(lines)


def teacher_parser():
    parser = _Parser(description="Train a model with cross-entropy (a teacher or a baseline).",
                     usage="%(prog)s [--model MODEL] [--dataset NAME] [options]", add_help=False)
    _add_help(parser)
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
    parser = _Parser(description="Distil a student from a trained teacher.", add_help=False,
                     usage="%(prog)s [--path_t CHECKPOINT] [--distill METHOD] [--model_s MODEL] "
                           "[options]")
    _add_help(parser)
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
                   help="the method, or several joined by '+' (e.g. dkd+reviewkd, each with "
                        "its own -b NAME=B); python -m distillers lists them")
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
    option_names: tuple = ()        # the options this run uses (config.yaml's keys)

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
        the model or the method filled in; other methods' options left out."""
        w = self.method.weights
        own = {k: v for k, v in vars(self.args).items()
               if not self.option_names or k in self.option_names}
        return {**own, "learning_rate": self.learning_rate, "cls": w.cls,
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

    def summary_args(self) -> dict:
        """summary.json's ``args``: the effective flags, with paths resolved."""
        return {k: _resolved(v) if k in PATH_OPTIONS else v
                for k, v in self.effective_args().items()}

    def summary(self) -> dict:
        """Derived values summary.json records beside the flags."""
        return {"batch_size_per_process": self.batch_size, "learning_rate": self.learning_rate}


def _resolved(value):
    """A path option's value (one path or several) as absolute, resolved paths."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [os.path.realpath(v) for v in value]
    return os.path.realpath(value)


def _others_options(spec):
    """The options of the methods ``spec`` (``--distill``) does not name: not this run's."""
    return method_option_names() - method_option_names(split_methods(spec))


def _current_options(data, spec):
    """A config file's options as this run names them: other methods' options dropped (a
    config.yaml written before the scoping holds every method's), an old name of one of the
    run's methods' options under its new one."""
    others = _others_options(spec)
    renamed = renamed_options(split_methods(spec))
    current = {k: v for k, v in data.items() if k not in others and k not in renamed}
    for old, new in renamed.items():
        if old in data and new not in data:
            current[new] = data[old]
    return current


def _pre_parse(parser, argv):
    """``--config``, ``--distill`` and the help flags of ``argv``, before the whole parse."""
    pre = _Parser(prog=parser.prog, add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("-h", "--help", action="store_true")
    pre.add_argument("--help_all", "--help-all", action="store_true")
    if "distill" in {a.dest for a in parser._actions}:
        pre.add_argument("--distill", type=_method_spec, default=None)
    known, _ = pre.parse_known_args(argv)
    return known


def _parse(parser, argv):
    """Parse ``argv``; with ``--config FILE``, the file's options are the defaults."""
    argv = sys.argv[1:] if argv is None else list(argv)
    known = _pre_parse(parser, argv)
    spec = getattr(known, "distill", None)
    if known.help_all:
        _print_and_exit(parser, parser.format_help())
    if known.help:
        _print_and_exit(parser, brief_help(parser, spec))
    if known.config is not None:
        try:
            data = config_file.read(known.config)
            if hasattr(known, "distill"):
                data = _current_options(data, spec or str(data.get("distill") or
                                                          parser.get_default("distill")))
            parser.set_defaults(**config_file.convert(data, parser, known.config))
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
    if args.linear_probe is not None and args.evaluate is None:
        parser.error("--linear_probe probes a checkpoint: give --evaluate FILE with it")
    if args.probe_data_folder is not None and args.linear_probe is None:
        parser.error("--probe_data_folder is the data of --linear_probe DATASET; give it too")
    loggers.check_arguments(parser, args)
    augment.check_arguments(parser, args,  # --linear_probe: --input_size is the probe data's
                            (args.linear_probe or args.dataset) in FOLDER_DATASET_NAMES)
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
    others = _others_options(method.name)
    names = tuple(a.dest for a in parser._actions if a.dest != "help" and a.dest not in others)
    return RunConfig(args, model_name, method, lr, args.batch_size, flag_learning_rate=lr,
                     option_names=names)


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
    for flag in ("save_folder", "data_folder", "path_t", "resume", "pretrained",
                 "probe_data_folder"):
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

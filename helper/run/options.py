"""The command line of train_teacher.py and train_student.py (SimKD's flag names), and the
read-only run configuration derived from it.

Every flag is a field of a frozen dataclass declared beside the code that uses it
(helper/core/option_groups.py), a method's (``distillers/``) as the run's: ``DataOptions``
(dataset/options.py), ``AugmentConfig`` (dataset/augment.py), ``OptimOptions``
(helper/run/schedule.py), ``PrecisionOptions`` (helper/run/precision.py), ``DistributedOptions``
(helper/run/distributed.py), the teacher's (``TeacherOptions``: its files, forward, mode, cache and
FKD labels) and ``RunOptions`` (seed, trial, run folder, logging, --evaluate). Parsing returns a
``RunConfig`` holding the groups and what the run derives from them, computed once (the
method's options and effective weights, the learning rate's default; per process, the batch
and the ``--adjust_lr`` learning rate; after the data is built, its sizes). No module reads the
parsed namespace; ``RunConfig.create`` builds a configuration in code, without argv.

What a run records is scoped to it: ``option_names`` are the run-wide flags and the options of
the methods it uses, not other methods' (config.yaml, summary.json, the --resume checks); an
older config.yaml with every method's options loads (``_current_options``). ``--help`` shows
the common flags (``BRIEF_HELP``), ``--distill X --help`` adds X's options, ``--help_all``
every flag. A method of the user's own (``--distill FILE.py:CLASS``, distillers/sources.py) is
imported before the student parser is built (``_load_user_methods``), so that its options are
flags like a built-in's.
"""
import argparse
import copy
import dataclasses
import math
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Union

import torch

from dataset import DATASET_NAMES, AugmentConfig, DataOptions
from helper.run import config_file, loggers
from helper.core.argtypes import OneLineParser as _Parser
from helper.core.argtypes import number as _number, positive as _positive
from helper.run.distributed import DistributedOptions
from helper.core.errors import UserError
from helper.fkd_labels import FkdOptions
from helper.core.option_groups import (OptionGroup, add_fields, add_options, group_titles, option,
                                  options_from, require)
from helper.run.precision import PrecisionOptions
from helper.run.schedule import OptimOptions, epochs_list as _epochs_list  # noqa: F401
from helper.teachers.cache import CacheOptions
from helper.teachers.forward import ForwardOptions, TeacherModeOptions
from distillers import (KDOptions, MethodConfig, RunInfo, get_distiller,
                        option_owners)
from distillers.combine import configure, split_methods
from distillers.sources import canonical_spec, forgotten_on_error, load as load_user_methods
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


def _method_spec(text):
    """``--distill``: one registered method, or several joined by ``+``; a method of the
    user's own (loaded by ``_load_user_methods``) with its file as an absolute path."""
    try:
        split_methods(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(f"invalid choice: {e}") from None
    return canonical_spec(text)


def _check_trial(trial):
    """The trial, the one free-text part of the run folder's name, is a plain name; a numeric
    one is added to the seed."""
    require(not (any(sep in trial for sep in ("/", "\\", os.sep)) or ".." in trial),
            f"--trial {trial!r} must be a plain name without '/', '\\' or '..': it names the "
            "run folder inside --save_folder")
    require(not (trial.isdigit() and (not trial.isdecimal() or int(trial) > MAX_SEED)),
            f"a numeric --trial is added to the seed and must be in 0..{MAX_SEED}, got {trial}")


@dataclass(frozen=True)
class RunOptions(OptionGroup):
    """The run itself: its seed and trial, its folder, how it starts, what it logs."""
    title = "run"
    config: Optional[str] = option(None, "start from a config.yaml (a run folder's); flags "
                                   "given override it", metavar="FILE")
    trial: str = option("0", "trial id, part of the run folder name and the seed")
    print_freq: int = option(100, None, "--print-freq", type=_positive(int))
    deterministic: bool = option(False, "deterministic algorithms (bit-identical reruns on CPU)")
    seed: int = option(12345, "base seed; the trial id is added to it",
                       type=_number(int, lambda v: 0 <= v <= MAX_SEED, f"in 0..{MAX_SEED}"))
    save_folder: str = option("./save", None, "--save-folder")
    resume: Optional[str] = option(None, "continue from this run's last.pth, or from the given "
                                   "checkpoint", nargs="?", const="auto")
    pretrained: Optional[str] = option(
        None, "start the trained model from a weight file, or torchvision's weights by name "
        "(ImageNet models, e.g. IMAGENET1K_V1); a classifier of another class count starts "
        "fresh (MGD's --use-pretrained)")
    evaluate: Optional[str] = option(None, "score FILE on the test split; no training",
                                     metavar="FILE")
    linear_probe: Optional[str] = option(None, "with --evaluate: linear-probe top-1 on DATASET",
                                         "--linear-probe", choices=DATASET_NAMES,
                                         metavar="DATASET")
    probe_data_folder: Optional[str] = option(None, "--linear_probe's data (default "
                                              "--data_folder)", "--probe-data-folder",
                                              metavar="DIR")
    logger: Optional[str] = option(None, "mirror scalars and config (optional package)",
                                   choices=loggers.LOGGERS)

    def check(self):
        for flag in ("save_folder", "resume", "pretrained", "probe_data_folder"):
            require(getattr(self, flag) != "", f"--{flag} is empty; give a path")
        _check_trial(self.trial)
        require(self.linear_probe is None or self.evaluate is not None,
                "--linear_probe probes a checkpoint: give --evaluate FILE with it")
        require(self.probe_data_folder is None or self.linear_probe is not None,
                "--probe_data_folder is the data of --linear_probe DATASET; give it too")
        loggers.check_installed(self.logger)


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


@dataclass(frozen=True)
class TeacherFiles(OptionGroup):
    """The teachers' checkpoints and architectures (one value, or a list of several)."""
    title = "distillation"
    path_t: Optional[Union[str, List[str]]] = option(
        None, "teacher checkpoint; several (space- or comma-separated) for the methods "
        "python -m distillers marks 'several --path_t'", "--path-t", nargs="+", type=_each(str),
        action=_OneOrSeveral, metavar="CHECKPOINT")
    model_t: Optional[Union[str, List[str]]] = option(
        None, "teacher architecture, when the checkpoint does not name it (several: one per "
        "--path_t, in order)", "--model-t", nargs="+", type=_each(model_arg),
        action=_OneOrSeveral, metavar="MODEL")

    def check(self):
        require(self.path_t != "", "--path_t is empty; give a path")

    @property
    def paths(self) -> list:
        """``--path_t`` as a list (empty without one)."""
        return [] if self.path_t is None else (
            [self.path_t] if isinstance(self.path_t, str) else list(self.path_t))


# the teacher's groups after its files (which --help shows under "distillation")
TEACHER_GROUPS = (ForwardOptions, TeacherModeOptions, CacheOptions, FkdOptions)


@dataclass(frozen=True)
class TeacherOptions(FkdOptions, CacheOptions, TeacherModeOptions, ForwardOptions, TeacherFiles):
    """A student run's teacher: its files, forward, mode, cache and stored FKD labels."""

    def check(self):
        for group in (TeacherFiles,) + TEACHER_GROUPS:
            group.check(self)
        if self.teacher_train:
            require(not self.teacher_cache, "--teacher_cache holds the outputs of the teacher "
                    "in eval mode; drop --teacher_train or --teacher_cache")
            require(not self.fkd, "--fkd trains on stored teacher outputs (no teacher runs); "
                    "drop --teacher_train or --fkd")


# The groups every run has, by RunConfig attribute, in --help_all's order after the method's.
RUN_GROUPS = (("data", DataOptions), ("optim", OptimOptions), ("augment", AugmentConfig),
              ("precision", PrecisionOptions), ("dist", DistributedOptions),
              ("run", RunOptions))


def _common(parser):
    for _, group in RUN_GROUPS:
        add_options(parser, [(group.title, group)])


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


def student_parser():
    parser = _Parser(description="Distil a student from a trained teacher.", add_help=False,
                     usage="%(prog)s [--path_t CHECKPOINT] [--distill METHOD] [--model_s MODEL] "
                           "[options]")
    _add_help(parser)
    g = parser.add_argument_group("distillation")
    g.add_argument("--model_s", "--model-s", default="resnet8x4", type=model_arg)
    add_fields(g, TeacherFiles)
    g.add_argument("--distill", default="kd", type=_method_spec, metavar="METHOD[+METHOD...]",
                   help="the method, or several joined by '+' (e.g. dkd+reviewkd, each with "
                        "its own -b NAME=B; python -m distillers lists them); your own: "
                        "FILE.py:CLASS or MODULE:CLASS; a '+' in FILE's path is kept unless "
                        "a method's name precedes it")
    add_options(parser, option_owners())
    _common(parser)
    add_options(parser, [(None, group) for group in TEACHER_GROUPS])
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
    """One run's configuration: the model, the method, the option groups, and what is derived
    from them. ``batch_per_process`` is one process's batch; ``data.batch_size`` (the flag)
    is one machine's."""
    model: str                      # the model this run trains (--model or --model_s)
    method: MethodConfig            # the method, its options, effective weights and KD term
    learning_rate: float            # --learning_rate, its default by model, --adjust_lr scaled
    batch_per_process: int          # the batch of one process (--batch_size split over them)
    data: DataOptions = DataOptions()
    optim: OptimOptions = OptimOptions()
    augment: AugmentConfig = AugmentConfig()
    precision: PrecisionOptions = PrecisionOptions()
    dist: DistributedOptions = DistributedOptions()
    run: RunOptions = RunOptions()
    teacher: Optional[TeacherOptions] = None   # a student run's teacher; None for a teacher's
    data_info: Optional[dict] = None  # num_classes, input_size, train_size, val_size
    flag_learning_rate: Optional[float] = None  # the learning rate before --adjust_lr
    option_names: tuple = ()        # the options this run uses (config.yaml's keys)
    args: Optional[FrozenNamespace] = None  # the flags as parsed (None when built in code)

    @classmethod
    def create(cls, model: str, method: MethodConfig = None, *, teacher=None, **groups):
        """A configuration built in code, without argv: ``groups`` by attribute (``data=``,
        ``optim=``, ...; each an options object, or a dict of its fields), the rest defaults."""
        kinds = dict(RUN_GROUPS)
        values = {}
        for name, value in groups.items():
            if name not in kinds:
                raise TypeError(f"RunConfig has no option group {name!r}")
            values[name] = options_from(kinds[name], **value) if isinstance(value, dict) else value
        if isinstance(teacher, dict):
            teacher = options_from(TeacherOptions, **teacher)
        optim = values.get("optim", OptimOptions())
        data = values.get("data", DataOptions())
        lr = default_learning_rate(model, optim.learning_rate)
        method = method or MethodConfig.create("vanilla", label_smoothing=optim.label_smoothing)
        return cls(model, method, lr, data.batch_size,
                   teacher=teacher, flag_learning_rate=lr, **values)

    def for_process(self, local_size: int, world_size: int) -> "RunConfig":
        """Split ``--batch_size`` over this machine's ``local_size`` processes; with
        ``--adjust_lr``, scale the learning rate with the total batch (torchdistill)."""
        total = self.data.batch_size
        if total % local_size:
            raise UserError(f"--batch_size {total} does not split evenly over {local_size} "
                            f"processes per node; use a multiple of {local_size}")
        batch = total // local_size
        lr = self.learning_rate
        if self.dist.adjust_lr:
            lr = lr * batch * world_size / total
        return dataclasses.replace(self, batch_per_process=batch, learning_rate=lr)

    def with_data(self, info: dict) -> "RunConfig":
        return dataclasses.replace(self, data_info=dict(info))

    @property
    def run_info(self) -> RunInfo:
        """What the method may know of the run."""
        data = self.data_info or {}
        return RunInfo(epochs=self.optim.epochs, batch_size=self.batch_per_process,
                       teacher_train=bool(self.teacher and self.teacher.teacher_train),
                       **{k: data[k] for k in ("num_classes", "input_size", "train_size",
                                               "val_size") if k in data})

    def groups(self) -> list:
        """The option groups of this run (the teacher's last, for a student)."""
        return [getattr(self, name) for name, _ in RUN_GROUPS] + (
            [self.teacher] if self.teacher is not None else [])

    def effective_args(self) -> dict:
        """The flags as this run uses them (summary.json's ``args``): defaults that depend on
        the model or the method filled in; other methods' options left out."""
        w = self.method.weights
        values = dict(vars(self.args)) if self.args is not None else {}
        for group in self.groups():
            values.update({k: list(v) if isinstance(v, tuple) else v
                           for k, v in dataclasses.asdict(group).items()})
        values["model_s" if self.teacher is not None else "model"] = self.model
        own = {k: v for k, v in values.items()
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
        return {"batch_size_per_process": self.batch_per_process,
                "learning_rate": self.learning_rate}


def default_learning_rate(model: str, given: Optional[float]) -> float:
    """``--learning_rate``, or its default: 0.01 for MobileNet/ShuffleNet, else 0.05 (SimKD)."""
    if given is not None:
        return given
    return 0.01 if model in SMALL_LR_MODELS else 0.05


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
    method = MethodConfig.create("vanilla", label_smoothing=args.label_smoothing)
    return _config(parser, args, args.model, method)


def _load_user_methods(argv):
    """Import the methods of the user's own that ``--distill`` names, and those of an explicit
    ``--config`` file's ``distill`` (whose options the file holds, dropped when ``--distill``
    names another method), before the parser is built, so that their options are flags; one
    line (after the user's traceback) when one cannot be used."""
    pre = _Parser(add_help=False)
    pre.add_argument("--config", default=None)
    pre.add_argument("--distill", default=None)
    known, _ = pre.parse_known_args(argv)
    specs = [known.distill]
    if known.config is not None:
        try:
            specs.append(config_file.read(known.config).get("distill"))
        except (UserError, AttributeError):
            pass  # _parse reports the file's errors
    for spec in specs:
        if isinstance(spec, str):
            try:
                load_user_methods(spec)
            except UserError as e:
                pre.error(str(e))


def parse_student_args(argv=None) -> RunConfig:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with forgotten_on_error():  # a method that cannot be used leaves no trace
            _load_user_methods(argv)
            parser = student_parser()
    except argparse.ArgumentError as e:  # a user's method declares a flag others have
        _Parser(add_help=False).error(f"--distill: your method's options clash with the "
                                      f"toolbox's flags ({e}); rename the option")
    args = _parse(parser, argv)
    try:
        method = configure(args.distill, args)
    except UserError as e:
        parser.error(str(e))
    return _config(parser, args, args.model_s, method, teacher=True)


def _config(parser, args, model_name, method, teacher=False) -> RunConfig:
    """The groups of the parsed flags, checked alone and together, and the run configuration
    derived from them (for one process per machine)."""
    try:
        groups = {name: options_from(kind, args) for name, kind in RUN_GROUPS}
        if teacher:
            groups["teacher"] = options_from(TeacherOptions, args)
        _check_together(**groups)
    except UserError as e:
        parser.error(str(e))
    _check_weights(parser, method)
    lr = default_learning_rate(model_name, groups["optim"].learning_rate)
    others = _others_options(method.name)
    names = tuple(a.dest for a in parser._actions if a.dest != "help" and a.dest not in others)
    return RunConfig(model_name, method, lr, groups["data"].batch_size, **groups,
                     flag_learning_rate=lr, option_names=names, args=args)


def _check_together(data, optim, augment, precision, dist, run, teacher=None):
    """The combinations of flags from several groups."""
    # --linear_probe: --input_size is the probe data's
    probed = DataOptions(dataset=run.linear_probe) if run.linear_probe else data
    augment.check_for(data.dataset, probed.folder, data.dali)
    if dist.multiprocessing_distributed:  # torchrun's count is checked by RunConfig.for_process
        procs = dist.nproc or (torch.cuda.device_count() if torch.cuda.is_available() else 1)
        require(data.batch_size % procs == 0,
                f"--batch_size {data.batch_size} does not split evenly over {procs} processes "
                f"per node; use a multiple of {procs}")
    if teacher is None:
        return
    require(not (teacher.teacher_compile and precision.compile),
            "--compile already compiles the teacher; drop --teacher_compile")
    require(not (augment.padding_mode != "constant" and teacher.teacher_cache),
            "--teacher_cache holds the views of the zero-padded crop only; drop --padding_mode "
            "reflect or --teacher_cache")
    if teacher.fkd is not None:
        changed = augment.changed_flags() + [flag for flag, on in (
            ("--teacher_cache", teacher.teacher_cache is not None),
            ("--dali", data.dali is not None)) if on]
        require(not changed, f"--fkd replays the stored crops and teacher outputs as they are; "
                             f"drop {' '.join(changed)} or --fkd")


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

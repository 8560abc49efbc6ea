"""``python -m helper.report save/ [--table NAME] [--plot FILE.png]``

Reads the summary.json (and, for plots, the TensorBoard events) of every run under the given
folders, groups runs of one recipe (``group_key``: trials, ``--config`` reruns, the same run on
another machine), and prints a markdown table: trials, mean ± std of best and last top-1, and
the published figure beside it with the difference. Each whole network a run trains beside its
student (DML's peers) has its own row. Runs not finished are counted apart, never mixed into
the means: running (their folder's lock is held) or stopped (interrupted, killed, failed).
A folder whose run wrote no usable summary.json (stopped in its first epoch, truncated, not
this toolbox's) is named in one line on stderr.
"""
import json
import socket
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from helper.core.argtypes import OneLineParser
from distillers.combine import split_methods
from distillers.registry import method_option_names
from helper.core.errors import UserError
from helper.teachers.published import TABLES
from helper.run.run_folder import ForeignLock, pid_alive, read_lock

# Which flags of summary.json's args make two runs one recipe. Every flag of the two entry
# scripts is in one of the three sets below or is a method's option (recipe);
# tests/test_report_runs.py checks this, so a new flag must be classified here. A key in none
# of them (a flag since removed) counts as recipe: an unknown difference splits groups rather
# than averaging different recipes.

# Flags that do not change what a run computes: which trial it is, where its files are, how its
# process started, how fast and on which machine it runs (processes per machine: each has its
# share of the machine's --batch_size). Runs that differ only in these are trials of one recipe.
NOT_RECIPE = frozenset({
    "trial", "seed",
    "config", "resume", "evaluate", "linear_probe", "probe_data_folder", "logger",
    "save_folder", "data_folder", "path_t", "teacher_cache",  # the teacher: by architecture
    "print_freq", "num_workers", "gpu_id", "deterministic",
    "memory_format", "channels_last", "compile", "teacher_forward", "teacher_compile",
    "multiprocessing_distributed", "nproc", "rank", "dist_url", "dist_backend", "dist_timeout",
})

# Flags naming a folder whose presence changes the recipe but whose place does not.
PRESENCE_ONLY = frozenset({"fkd"})  # training on stored crops and teacher outputs (FKD)

# The other flags of the run: what is trained, on what data, with which schedule, precision
# and augmentation. --world-size counts machines, each with its own --batch_size: it changes
# the total batch.
RECIPE = frozenset({
    "model", "model_s", "model_t", "distill", "dataset", "pretrained", "jitter", "input_size",
    "batch_size", "epochs", "learning_rate", "lr_decay_epochs", "lr_decay_rate", "optimizer",
    "nesterov", "lr_scheduler", "lr_decay_step", "warmup_epochs", "label_smoothing",
    "weight_decay", "momentum", "world_size", "sync_bn", "adjust_lr", "amp", "amp_dtype",
    "dali", "aug", "random_erasing", "random_rotation", "mixup", "cutmix", "padding_mode",
    "cifar_normalization", "eval_drop_last", "teacher_train", "teacher_cache_dtype",
    "fkd_soft_ce",
})

# What the table needs of a summary.json; ``teacher``, ``finished`` and ``extra_models`` may be
# absent (hand-written or early summaries).
REQUIRED = ("args", "dataset", "model_name", "distill", "best_acc", "last_acc")

# A run folder holds its config.yaml and lock from its start, its last.pth from its first
# epoch's end: one with config.yaml and either but no summary.json is a run that stopped, or
# is, in its first epoch (a config.yaml alone may be a copy kept to rerun it).
RUN_MARKERS = (".lock", "last.pth")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bad_accuracies(entry):
    """Which of ``entry``'s best_acc and last_acc are not numbers."""
    return [k for k in ("best_acc", "last_acc") if not _is_number(entry.get(k))]


def _bad_extra_models(summary):
    """Why ``extra_models`` (DML's peers: name -> model_name, best_acc, last_acc) cannot be
    used, or None."""
    extra = summary.get("extra_models", {})
    if not isinstance(extra, dict):
        return "its extra_models are not a JSON object"
    for name, peer in extra.items():
        if not isinstance(peer, dict) or "model_name" not in peer or _bad_accuracies(peer):
            return f"its extra_models entry {name!r} lacks a model_name or accuracies"
    return None


def _read_summary(path):
    """The summary at ``path``, or ``(None, why it cannot be used)``."""
    try:
        summary = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg}: line {e.lineno} column {e.colno}; truncated?)"
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({type(e).__name__}: {' '.join(str(e).split())})"
    if not isinstance(summary, dict):
        return None, "holds no JSON object"
    missing = [k for k in REQUIRED if k not in summary]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    if not isinstance(summary["args"], dict):
        return None, "its args are not a JSON object"
    bad = _bad_accuracies(summary)
    if bad:
        return None, f"its {' and '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a number"
    why = _bad_extra_models(summary)
    return (None, why) if why else (summary, None)


def lock_held(folder):
    """Whether a run holds ``folder`` now: its lock's owner is alive, or on another host
    (where it cannot be asked), or the lock is not a run's (RunFolder refuses it too)."""
    try:
        owner = read_lock(Path(folder) / ".lock")
    except ForeignLock:
        return True
    if owner is None:
        return False
    pid, host, _ = owner
    return host != socket.gethostname() or pid_alive(pid)


def _without_summary(folders):
    """Run folders under ``folders`` (``RUN_MARKERS``) that hold no summary.json."""
    found = set()
    for folder in folders:
        found.update(p.parent for p in Path(folder).rglob("config.yaml")
                     if any((p.parent / m).exists() for m in RUN_MARKERS)
                     and not (p.parent / "summary.json").exists())
    return sorted(found)


def _no_summary_line(folder):
    if lock_held(folder):
        return f"note: skipped {folder}: no summary.json yet; its run is in its first epoch"
    return (f"warning: skipped {folder}: no summary.json; its run stopped before writing one "
            "(failed or killed in its first epoch): start it again, or delete the folder")


def load_runs(folders, warn=None):
    """The summaries under ``folders``. One that cannot be used (truncated by an interrupted
    copy, say), and a run folder without one, is left out with one line naming it, through
    ``warn`` (stderr)."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    runs = []
    for folder in folders:
        for path in sorted(Path(folder).rglob("summary.json")):
            summary, why = _read_summary(path)
            if summary is None:
                warn(f"warning: skipped {path}: {why}")
                continue
            summary["path"] = str(path.parent)
            runs.append(summary)
    for folder in _without_summary(folders):
        warn(_no_summary_line(folder))
    return runs


def _name(value):
    """A model or data set name as the table writes it: several joined by '+', none as '-'."""
    if isinstance(value, list):
        return "+".join(map(str, value))
    return "-" if value is None else str(value)


def recipe(args, distill=None):
    """The args that make the recipe: all but ``NOT_RECIPE`` and the options of methods other
    than ``distill``'s (summaries written before runs recorded only their own methods' hold
    every method's), ``PRESENCE_ONLY`` as given or not."""
    others = _other_methods_options(distill)
    return {k: (v is not None if k in PRESENCE_ONLY else v) for k, v in args.items()
            if k not in NOT_RECIPE and k not in others}


def _other_methods_options(distill):
    """The options of every registered method not in ``distill`` (``a+b``); a method this
    version does not know keeps them all (an unknown difference splits groups)."""
    try:
        used = split_methods(distill) if isinstance(distill, str) else ()
    except UserError:
        return set()
    return method_option_names() - method_option_names(used)


def status(run):
    """``done``, ``running`` (its folder's lock is held) or ``stopped``. A summary without
    ``finished`` (hand-written) counts as done."""
    if run.get("finished", True):
        return "done"
    return "running" if lock_held(run["path"]) else "stopped"


def entries(run):
    """The rows a run (a summary ``load_runs`` read) contributes: its student (role ``""``), then
    each whole network it trained beside it (DML's peers, role: their name)."""
    common = {"args": run["args"], "dataset": _name(run["dataset"]),
              "teacher": _name(run.get("teacher")), "distill": _name(run["distill"]),
              "path": run["path"], "status": status(run)}
    yield {**common, "role": "", "model_name": _name(run["model_name"]),
           "best_acc": run["best_acc"], "last_acc": run["last_acc"]}
    for role, peer in run.get("extra_models", {}).items():
        yield {**common, "role": role, "model_name": _name(peer["model_name"]),
               "best_acc": peer["best_acc"], "last_acc": peer["last_acc"]}


def group_key(entry):
    """``(data set, teacher, model, method, role, recipe as JSON)``: the entries of one key are
    trials of one configuration."""
    return (entry["dataset"], entry["teacher"], entry["model_name"], entry["distill"],
            entry["role"], json.dumps(recipe(entry["args"], entry["distill"]), sort_keys=True))


def _stats(values):
    if not values:
        return "", None
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} ± {std:.2f}", mean


def _published(table, dataset, teacher, student, method, args):
    if table is None or TABLES[table]["dataset"] != dataset:
        return None
    for t, s, m, value, constraints in TABLES[table]["entries"]:
        if (t or "-") == teacher and s == student and m == method and all(
                args.get(k) == v for k, v in constraints.items()):
            return value
    return None


def _weight(value):
    """A loss weight as the run folder's name writes it: a number by ``%g``, several methods'
    (``dkd=1,rkd=2``) as they are, an unrecorded one (early summaries: the method's default)
    as ``default``."""
    if value is None:
        return "default"
    return f"{value:g}" if _is_number(value) else str(value)


def _label(method, role, args, varying):
    weights = " ".join(f"{short}:{_weight(args.get(flag))}"
                       for short, flag in (("r", "cls"), ("a", "div"), ("b", "beta")))
    extra = " ".join(f"{k}={args[k]}" for k in sorted(varying) if k in args)
    return f"{method}{' ' + role if role else ''} ({weights}{', ' + extra if extra else ''})"


def _groups(runs):
    """``{group key: [entries]}``: the trials of one configuration together."""
    groups = defaultdict(list)
    for run in runs:
        for entry in entries(run):
            groups[group_key(entry)].append(entry)
    return groups


def group_labels(keys):
    """``{group key: label}``: the method (and role) and weights, plus the flags that differ
    between groups of the same method (e.g. ``amp=True``)."""
    by_method = defaultdict(list)
    for key in keys:
        by_method[key[:5]].append(json.loads(key[5]))
    labels = {}
    for key in keys:
        args = json.loads(key[5])
        varying = {k for k in args if k not in ("cls", "div", "beta")
                   and any(other.get(k) != args[k] for other in by_method[key[:5]])}
        labels[key] = _label(key[3], key[4], args, varying)
    return labels


def _trials(members):
    """``(finished entries, "N (+R running, +S stopped)")``."""
    done = [e for e in members if e["status"] == "done"]
    apart = [f"+{n} {s}" for s in ("running", "stopped")
             if (n := sum(e["status"] == s for e in members))]
    return done, f"{len(done)}" + (f" ({', '.join(apart)})" if apart else "")


def report(runs, table=None):
    groups = _groups(runs)
    labels = group_labels(groups)
    metric = TABLES[table]["metric"] if table else "best"
    lines = [f"| data | teacher | student | method | trials | best top-1 | last top-1 | published ({metric}) | diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        dataset, teacher, student, method, role, args_json = key
        done, trials = _trials(groups[key])
        best, best_mean = _stats([e["best_acc"] for e in done])
        last, last_mean = _stats([e["last_acc"] for e in done])
        published = None if role else _published(table, dataset, teacher, student, method,
                                                  json.loads(args_json))
        ours = last_mean if metric == "last" else best_mean
        diff = f"{ours - published:+.2f}" if published is not None and ours is not None else ""
        lines.append(f"| {dataset} | {teacher} | {student} | {labels[key]} | {trials} | "
                     f"{best} | {last} | {'' if published is None else f'{published:.2f}'} | {diff} |")
    return "\n".join(lines)


def accuracy_curve(entry, events):
    """``{epoch: test top-1}`` of one entry (a peer's under ``test/acc_<role>``), or None."""
    tag = f"test/acc_{entry['role']}" if entry["role"] else "test/acc"
    if tag not in events.Tags()["scalars"]:
        return None
    return {e.step: e.value for e in events.Scalars(tag)}


def plot(runs, path):
    """Test top-1 per epoch, mean over the trials of each group, one line per group."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("error: --plot needs matplotlib (pip install matplotlib)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    groups = _groups(runs)
    labels = group_labels(groups)
    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (key, members) in enumerate(sorted(groups.items())):
        curves = []
        for entry in members:
            events = EventAccumulator(entry["path"])
            events.Reload()
            curve = accuracy_curve(entry, events)
            if curve:
                curves.append(curve)
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            style = ("-", "--", ":", "-.")[index // 10 % 4]  # the colour cycle has 10 colours
            ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], style,
                    label=f"{key[2]} {labels[key]} ({len(curves)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = OneLineParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("folders", nargs="+", help="run folders or folders holding them")
    parser.add_argument("--table", choices=sorted(TABLES), help="published table to compare with")
    parser.add_argument("--plot", help="write test accuracy per epoch to this PNG (needs matplotlib)")
    parser.add_argument("--cost", action="store_true", help="also print each teacher's and "
                        "student's parameters, MACs and measured latency (helper/cost.py)")
    args = parser.parse_args(argv)
    missing = [f for f in args.folders if not Path(f).exists()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    skipped = []

    def warn(line):
        skipped.append(line)
        print(line, file=sys.stderr, flush=True)
    runs = load_runs(args.folders, warn)
    if not runs:
        why = (f"no readable summary.json under {', '.join(args.folders)} ({len(skipped)} "
               f"skipped, see above)" if skipped else
               f"no summary.json under {', '.join(args.folders)}; point it at a save folder")
        print(f"error: {why}", file=sys.stderr)
        sys.exit(2)
    if args.table:
        print(f"Published: {TABLES[args.table]['source']}\n")
    print(report(runs, args.table))
    if args.cost:
        from helper.cost import cost_table
        print("\n" + cost_table(_groups(runs)), flush=True)
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot written to {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""``python -m helper.report save/ [--table NAME] [--plot FILE.png]``

Reads the summary.json (and, for plots, the TensorBoard events) of every run under the given
folders, groups runs that differ only in their trial, and prints a markdown table: trials,
mean ± std of best and last top-1, and the published figure beside it with the difference.
Runs still in progress are counted apart, never mixed into the means.
"""
import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from helper.published import TABLES

# Flags that do not change what a run computes (or name the run), left out of the grouping.
IGNORED = {"trial", "seed", "save_folder", "data_folder", "print_freq", "num_workers", "gpu_id",
           "resume", "path_t", "dist_url", "dist_backend", "rank", "world_size", "nproc",
           "multiprocessing_distributed", "dist_timeout", "deterministic"}


# What the table needs of a summary.json; ``teacher`` and ``finished`` may be absent.
REQUIRED = ("args", "dataset", "model_name", "distill", "best_acc", "last_acc")


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
    return summary, None


def load_runs(folders, warn=None):
    """The summaries under ``folders``. One that cannot be used (truncated by an interrupted
    copy, say) is left out with one warning line naming it, through ``warn`` (stderr)."""
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
    return runs


def group_key(run):
    args = {k: v for k, v in run["args"].items() if k not in IGNORED}
    return (run["dataset"], run.get("teacher") or "-", run["model_name"], run["distill"],
            json.dumps(args, sort_keys=True))


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


def _label(method, args, varying):
    weights = f"r:{args.get('cls', 1):g} a:{args.get('div', 0):g} b:{args.get('beta', 0):g}"
    extra = " ".join(f"{k}={args[k]}" for k in sorted(varying) if k in args)
    return f"{method} ({weights}{', ' + extra if extra else ''})"


def _groups(runs):
    """``{group key: [runs]}``: the trials of one configuration together."""
    groups = defaultdict(list)
    for run in runs:
        groups[group_key(run)].append(run)
    return groups


def group_labels(keys):
    """``{group key: label}``: the method and weights, plus the flags that differ between
    groups of the same method (e.g. ``amp=True``)."""
    by_method = defaultdict(list)
    for key in keys:
        by_method[key[:4]].append(json.loads(key[4]))
    labels = {}
    for key in keys:
        args = json.loads(key[4])
        varying = {k for k in args if k not in ("cls", "div", "beta")
                   and any(other.get(k) != args[k] for other in by_method[key[:4]])}
        labels[key] = _label(key[3], args, varying)
    return labels


def report(runs, table=None):
    groups = _groups(runs)
    labels = group_labels(groups)
    metric = TABLES[table]["metric"] if table else "best"
    lines = [f"| data | teacher | student | method | trials | best top-1 | last top-1 | published ({metric}) | diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(groups):
        dataset, teacher, student, method, args_json = key
        args = json.loads(args_json)
        done = [r for r in groups[key] if r.get("finished")]
        running = len(groups[key]) - len(done)
        best, best_mean = _stats([r["best_acc"] for r in done])
        last, last_mean = _stats([r["last_acc"] for r in done])
        published = _published(table, dataset, teacher, student, method, args)
        ours = last_mean if metric == "last" else best_mean
        diff = f"{ours - published:+.2f}" if published is not None and ours is not None else ""
        trials = f"{len(done)}" + (f" (+{running} running)" if running else "")
        lines.append(f"| {dataset} | {teacher} | {student} | {labels[key]} | {trials} | "
                     f"{best} | {last} | {'' if published is None else f'{published:.2f}'} | {diff} |")
    return "\n".join(lines)


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
        for run in members:
            events = EventAccumulator(run["path"])
            events.Reload()
            if "test/acc" in events.Tags()["scalars"]:
                curves.append({e.step: e.value for e in events.Scalars("test/acc")})
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("folders", nargs="+", help="run folders or folders holding them")
    parser.add_argument("--table", choices=sorted(TABLES), help="published table to compare with")
    parser.add_argument("--plot", help="write test accuracy per epoch to this PNG (needs matplotlib)")
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
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot written to {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()

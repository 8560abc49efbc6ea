"""What a model costs to run: parameters, MACs, and measured latency and throughput, in PyTorch
eager and in ONNX Runtime, on this machine's CPU; and the speed-accuracy table that
``python -m helper.report --cost`` prints beside the accuracy table.

- Parameters: every parameter of the deployable model (``helper.export.Deployable``: a SimKD
  student counts its projector and the teacher's classifier it reuses).
- MACs: multiply-accumulates of one image at the data set's input size, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` on one eager forward (its FLOPs / 2): the
  matrix products and convolutions; BatchNorm, activations, pooling and additions are not
  counted, as the KD papers count.
- Latency: the median wall time of a forward of batch 1 after ``WARMUP`` untimed calls, over
  at least ``MIN_REPEATS`` calls (more while under ``BUDGET_S`` seconds, at most
  ``MAX_REPEATS``); throughput: images per second of a forward of ``LARGE_BATCH`` images,
  timed the same way. Float32 on the CPU, with torch's current thread count, and ONNX Runtime
  (the model exported with ``helper.export``, dynamic batch) given as many threads. Timings on
  a shared machine are noisy: the machine line names the CPU, its cores and the threads used.
"""
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from helper.core.errors import UserError
from helper.core.files import load_file
from models.base import dummy_pass

LARGE_BATCH = 64
WARMUP = 3
MIN_REPEATS = 5
MAX_REPEATS = 50
BUDGET_S = 1.0
# Image sides of the data sets stored as arrays (dataset/cifar.py, dataset/mnist.py); the folder
# data sets are cropped to --input_size, else dataset/folder.py's CROP.
ARRAY_SIDES = {"cifar10": 32, "cifar100": 32, "mnist": 28, "fashion_mnist": 28}


# ---- one model ------------------------------------------------------------------------------
def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


def count_macs(model, input_size):
    """Multiply-accumulates of one forward of a single image of ``input_size`` (C, H, W)."""
    with FlopCounterMode(display=False) as counter:
        dummy_pass(model, input_size, batch=1)
    return counter.get_total_flops() // 2


def median_seconds(call):
    """The median wall time of ``call()`` (see the module's docstring for the repeats)."""
    for _ in range(WARMUP):
        call()
    times, spent = [], 0.0
    while len(times) < MIN_REPEATS or (spent < BUDGET_S and len(times) < MAX_REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return statistics.median(times)


def eager_timing(model, input_size, batch):
    images = torch.randn(batch, *input_size)
    with torch.inference_mode():
        return median_seconds(lambda: model(images))


def onnx_timing(session, input_size, batch):
    images = torch.randn(batch, *input_size).numpy()
    return median_seconds(lambda: session.run(["logits"], {"images": images}))


def timings(seconds_of):
    """``{"latency_ms": batch 1, "throughput": images/s at LARGE_BATCH}`` from
    ``seconds_of(batch)``."""
    return {"latency_ms": 1000 * seconds_of(1),
            "throughput": LARGE_BATCH / seconds_of(LARGE_BATCH)}


def onnx_available():
    """Whether ONNX export and ONNX Runtime are installed (both optional)."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def model_cost(module, input_size, with_onnx=True):
    """Parameters, MACs and timings of a deployable module (eval mode, CPU) at ``input_size``:
    ``{"parameters", "macs", "eager": timings, "onnx": timings or None}``."""
    from helper.export import export_onnx, onnx_session
    cost = {"parameters": count_parameters(module), "macs": count_macs(module, input_size),
            "eager": timings(lambda b: eager_timing(module, input_size, b)), "onnx": None}
    if with_onnx:
        data, _ = export_onnx(module, input_size, dynamic_batch=True)
        session = onnx_session(data, threads=torch.get_num_threads())
        cost["onnx"] = timings(lambda b: onnx_timing(session, input_size, b))
    return cost


# ---- the machine ----------------------------------------------------------------------------
def cpu_name():
    """The CPU's model name (/proc/cpuinfo on Linux, else ``platform``)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line(with_onnx):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    threads = torch.get_num_threads()
    engines = f"PyTorch {torch.__version__} eager, {threads} threads"
    if with_onnx:
        import onnxruntime
        engines += f"; ONNX Runtime {onnxruntime.__version__}, {threads} threads"
    return (f"Measured on {cpu_name()} ({cores} cores available), {platform.system()}, CPU, "
            f"float32: {engines}; latency: median of >= {MIN_REPEATS} batch-1 forwards after "
            f"{WARMUP} warm-up calls; throughput at batch {LARGE_BATCH}")


# ---- the table ------------------------------------------------------------------------------
def data_input_size(dataset, args):
    """(C, H, W) of ``dataset``'s images as the run's pipeline feeds them."""
    from dataset.folder import CROP
    from helper.teachers.normalization import data_normalization
    channels = len(data_normalization(dataset).mean)
    side = ARRAY_SIDES.get(dataset) or args.get("input_size") or CROP
    return (channels, side, side)


def _teacher_paths(entry):
    given = entry["args"].get("path_t")
    paths = given if isinstance(given, list) else [given] if given else []
    return [Path(p) for p in paths]


def rows_to_measure(groups):
    """One row per group's model (``helper.report``'s groups: ``{key: [entries]}``; its first
    finished trial's best.pth, top-1 the mean best of its finished trials) and per teacher file
    a student names (``--path_t``), teachers first: dicts with ``role``, ``dataset``,
    ``method``, ``accs``, ``checkpoint``, ``args`` (a teacher: ``student``, the checkpoint of
    one of its students, which records the class count where a foreign teacher file does not).
    The networks a run trains beside its
    student (DML's peers) are left out."""
    rows, teachers = [], {}
    for members in groups.values():
        members = [e for e in members if not e["role"]]
        if not members:
            continue
        done = [e for e in members if e["status"] == "done"]
        first = (done or members)[0]
        rows.append({"role": "student", "dataset": first["dataset"], "method": first["distill"],
                     "accs": [e["best_acc"] for e in done], "args": first["args"],
                     "checkpoint": Path(first["path"]) / "best.pth"})
        for entry in members:
            for path in _teacher_paths(entry):
                teachers.setdefault(path.resolve(), {
                    "role": "teacher", "dataset": entry["dataset"], "method": "teacher",
                    "accs": None, "checkpoint": path, "args": {},
                    "student": Path(entry["path"]) / "best.pth"})
    for row in rows:
        if teachers.pop(row["checkpoint"].resolve(), None) is not None:
            row["role"] = "teacher"
    rows += list(teachers.values())
    return sorted(rows, key=lambda r: (r["dataset"], r["role"] != "teacher", r["method"],
                                       str(r["checkpoint"])))


def _recorded_top1(checkpoint):
    for key in ("best_acc", "accuracy", "published_acc"):
        value = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        if isinstance(value, (int, float)):
            return value
    return None


def _num_classes(checkpoint):
    classes = checkpoint.get("num_classes") if isinstance(checkpoint, dict) else None
    return classes if isinstance(classes, int) else None


def measure_row(row, with_onnx):
    """The row's model loaded as ``helper.export`` exports it, its label, top-1 and cost."""
    from helper.export import load_deployable
    path = row["checkpoint"]
    checkpoint = load_file(path, "checkpoint to measure")
    classes = _num_classes(checkpoint)
    if classes is None and "student" in row:
        classes = _num_classes(load_file(row["student"], "student checkpoint"))
    if classes is None:
        raise UserError(f"{path} does not record its class count")
    input_size = data_input_size(row["dataset"], row["args"])
    module = load_deployable(path, checkpoint, row["dataset"], classes, input_size)
    deploy = (checkpoint.get("deploy") or {}).get("builder") if isinstance(checkpoint, dict) \
        else None
    label = module.model_name + (f" + {deploy} head" if deploy else "")
    accs = row["accs"]
    top1 = statistics.fmean(accs) if accs else (None if accs is not None
                                                else _recorded_top1(checkpoint))
    return label, top1, model_cost(module, input_size, with_onnx)


def _count(n):
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _timing_cells(timed):
    if timed is None:
        return ["n/a", "n/a"]
    return [f"{timed['latency_ms']:.3f}", f"{timed['throughput']:.0f}"]


def cost_table(groups, warn=None):
    """The speed-accuracy table (markdown) of ``helper.report``'s groups of runs, with the
    machine line above it. A row whose checkpoint cannot be loaded is left out with one line
    through ``warn`` (stderr)."""
    warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
    with_onnx = onnx_available()
    lines = [machine_line(with_onnx) + ("" if with_onnx else
                                        "; ONNX Runtime columns n/a: pip install onnx onnxruntime"),
             "",
             f"| data | role | model | method | top-1 | params | MACs | eager b1 ms | "
             f"eager b{LARGE_BATCH} img/s | ORT b1 ms | ORT b{LARGE_BATCH} img/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows_to_measure(groups):
        try:
            label, top1, cost = measure_row(row, with_onnx)
        except UserError as e:
            warn(f"warning: no cost for {row['checkpoint']}: {e}")
            continue
        cells = [row["dataset"], row["role"], label, row["method"],
                 "" if top1 is None else f"{top1:.2f}", _count(cost["parameters"]),
                 _count(cost["macs"]), *_timing_cells(cost["eager"]),
                 *_timing_cells(cost["onnx"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

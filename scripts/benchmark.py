"""Training speed of every distillation method on one teacher/student pair (CIFAR models).

    python scripts/benchmark.py --teacher resnet32x4 --student resnet8x4 --batch_size 64 \\
        --methods all --iters 20 --warmup 5 --threads 2 [--amp] [--compile] [--data both] [--device cpu]

For each method (and the "floor", see below) it measures the median time of one training
iteration and the peak memory:

  synthetic    pure compute: random normalised images already on the device, random targets,
               ``index`` in the range of the training set, plus the method's batch keys
               (e.g. CRD's ``contrast_index``) made by the real provider
               (``dataset.batch_keys.add_batch_keys``) over a synthetic ``TensorLoader``.
               Making a batch is not timed.
  end to end   the real data pipeline: a CIFAR-100-size training set (``--train_size``
               50,000 random uint8 32x32x3 images, 100 classes) in the toolbox's
               ``TensorLoader`` with the CIFAR augmentation (random crop with 4 pixels of
               padding + horizontal flip, as ``dataset.build_loaders``), wrapped for the
               method's batch keys. Making the batch is timed with the iteration.
  floor        the bare minimum any distillation pays: the teacher's forward pass without a
               graph (``torch.no_grad``), the student's forward pass, cross-entropy, backward
               and the optimizer step, on the same synthetic batches.

What is timed is exactly what the toolbox does per iteration: ``helper.run.loop.train_one_epoch``
itself runs over a loader of ``--warmup + --iters`` batches that takes a timestamp whenever
the loop asks for the next batch (after ``torch.cuda.synchronize()`` on CUDA), so one
iteration is forward_train through the distiller, the sum of the loss terms, zero_grad,
backward (with the ``--amp`` scaler where there is one), step, and the loop's own
bookkeeping. The optimizer is the trainer's (SGD, momentum 0.9, weight decay 5e-4, over
``stage_parameters``). The warm-up iterations are discarded and the median of the others is
reported. Multi-stage methods are timed in their last (main) stage; the epoch counter is set
to the middle of that stage, past every warm-up. Methods that cannot work with the pair are
reported as ``n/a (reason)``.

The teacher runs as ``train_student.py --teacher_forward`` runs it (``--teacher_forward``,
default ``auto``: BatchNorms folded into the convolutions, channels-last on the CPU, inference
mode; ``helper/teachers/forward.py``); the floor's teacher is always the eager one, so the ratio
to the floor compares with today's floor. Three more rows on request (``--methods``):

  floor_fast   the floor with the optimised teacher (``--teacher_forward``, ``auto`` unless
               given): what the optimised teacher saves of every method's iteration.
  kd_cached    kd with ``--teacher_cache``: no teacher forward; the logits of each sample's
               view are looked up in a memory-mapped cache of 162 views x ``--train_size``
               images x 100 classes (float32, random values: a lookup costs the same), on
               synthetic batches (random views) and end to end (the loader's own views).
               Any method with ``cacheable`` has such a row, ``<method>_cached`` (crd_cached:
               the logits and the teacher's pooled feature, 162 x ``--train_size`` x D more;
               for resnet32x4, D = 256: 8.3 GB written to a temporary folder first).
  cache_build  the cache's build: ``--cache_views`` views of ``--cache_images`` images through
               ``helper.teachers.cache.build`` with the optimised teacher, timed and
               extrapolated to 162 views of ``--train_size`` images. With kd and kd_cached in the
               same run, the notes estimate simkd_cifar100.sh's kd rows with and without the
               cache.

Each method runs in a fresh subprocess (``--one METHOD``, which prints one JSON line), so
methods do not share allocator state or warmed caches. Within it, after the warm-ups, the
method on synthetic batches, the floor (its own models, the same synthetic batches) and the
method end to end take turns every ``--chunk`` iterations (one ``train_one_epoch`` call per
turn), so that the ratios compare times taken over the same minutes even when the speed of
shared cores drifts. Peak memory is read after the method's warm-up and first timed chunk,
before the floor and the data set exist (the peak is reached by the first optimizer step): on
CUDA ``torch.cuda.max_memory_allocated`` (after ``reset_peak_memory_stats``), on the CPU the
peak resident set size of the subprocess (``ru_maxrss``), which includes the Python/torch
baseline (printed under the table).

Methods with a pass over the training set at epoch starts (MGD's channel matching: any
distiller with ``rematch``) get it timed separately: a few batches of the unaugmented
pass are timed and extrapolated to the whole training set, plus the assignment solve.

Prints a markdown table (method | extra params | synthetic ms/iter | ratio to floor |
end-to-end ms/iter | ratio to synthetic | peak memory) under a line naming the machine, and
an epoch estimate (end-to-end time per iteration times the iterations of an epoch).
Exit code 2 and one line on stderr for an unknown method, model or device.
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import redirect_stdout
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dataset import RandomCropFlip, TensorLoader, cifar  # noqa: E402
from dataset.batch_keys import add_batch_keys  # noqa: E402
from distillers import distiller_classes, get_distiller  # noqa: E402
from helper.teachers import cache as teacher_cache  # noqa: E402
from helper.core.errors import UserError  # noqa: E402
from helper.teachers.forward import MODES as TEACHER_FORWARD_MODES, prepare_teacher  # noqa: E402
from helper.run.loop import NonFiniteLoss, train_one_epoch  # noqa: E402
from helper.run.options import parse_student_args  # noqa: E402
from helper.run.precision import (MEMORY_FORMATS, Precision, compile_models, make_sgd,  # noqa: E402
                              use_channels_last)
from helper.run.trainer import count_parameters, stage_optimizer  # noqa: E402
from models import create_model, model_names  # noqa: E402
from models.teachers import ensemble_of  # noqa: E402

FLOOR = "floor"
FLOOR_FAST = "floor_fast"  # the floor with the optimised teacher
CACHED = "_cached"  # <method>_cached: a cacheable method reading its teacher from a cache
KD_CACHED = "kd" + CACHED  # kd reading the teacher's logits from a teacher cache
CACHE_BUILD = "cache_build"  # the time to build a teacher cache
EXTRA_ROWS = (FLOOR_FAST, KD_CACHED, CACHE_BUILD)
NUM_CLASSES = 100
INPUT_SIZE = (3, 32, 32)
DATA_CHOICES = ("synthetic", "real", "both")


# ---- timing ----------------------------------------------------------------------------
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TimedLoader:
    """Hands ``n`` batches of ``source`` to the training loop and timestamps each iteration.

    An iteration ends when the loop asks for the next batch (or finds there is none). It
    starts when the loop asked for its batch (``include_data``: producing the batch is part
    of the iteration) or once the batch is ready (pure compute). On CUDA the device is
    synchronised before every timestamp. ``set_epoch`` and ``unaugmented`` go to ``source``.
    """

    def __init__(self, source, n, device, include_data):
        self.source, self.n, self.device = source, int(n), torch.device(device)
        self.include_data = include_data
        self.starts, self.ends = [], []

    def __len__(self):
        return self.n

    def set_epoch(self, epoch):
        if hasattr(self.source, "set_epoch"):
            self.source.set_epoch(epoch)

    def _timed(self, batches):
        self.starts, self.ends = [], []
        it = iter(batches)
        for i in range(self.n):
            _sync(self.device)
            now = time.perf_counter()
            if i:
                self.ends.append(now)
            if self.include_data:
                self.starts.append(now)
            try:
                batch = next(it)
            except StopIteration:
                raise RuntimeError(f"the benchmark's data ran out after {i} of {self.n} batches")
            if not self.include_data:
                _sync(self.device)
                self.starts.append(time.perf_counter())
            yield batch
        _sync(self.device)
        self.ends.append(time.perf_counter())

    def __iter__(self):
        return self._timed(self.source)

    def unaugmented(self):
        return self._timed(self.source.unaugmented())

    def times(self, skip):
        """Seconds per iteration after the first ``skip``."""
        return [e - s for s, e in zip(self.starts, self.ends)][skip:]


def _median_ms(times):
    return 1000.0 * statistics.median(times) if times else None


# ---- what is trained ---------------------------------------------------------------------
class Floor(nn.Module):
    """Teacher forward without a graph + student forward with cross-entropy only: the least a
    distillation iteration can cost. Same interface as a Distiller for ``train_one_epoch``;
    like a Distiller it keeps the teacher out of ``parameters()`` and in eval mode."""

    def __init__(self, student, teacher):
        super().__init__()
        self.student = student
        self._teacher = [teacher]
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)

    @property
    def teacher(self):
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher[0]._apply(fn, *args, **kwargs)
        return self

    def train(self, mode=True):
        super().train(mode)
        self._teacher[0].eval()
        return self

    def forward(self, images, targets, **batch):
        with torch.no_grad():
            self._teacher[0](images)
        logits = self.student(images)
        return logits, {"cls": F.cross_entropy(logits, targets)}


def method_config(method, opts):
    """The run configuration of ``method`` with every default, as train_student.py has it
    (one process; the data sizes of ``data_info``)."""
    argv = ["--distill", method, "--model_s", opts.student, "--model_t", opts.teacher,
            "--batch_size", str(opts.batch_size), "--dataset", "cifar100"]
    if opts.amp:
        argv.append("--amp")
    argv += ["--memory_format", opts.memory_format] + (["--channels_last"] if opts.channels_last else [])
    config = parse_student_args(argv + (["--compile"] if opts.compile else []))
    return config.with_data(data_info(opts))


def data_info(opts):
    return {"num_classes": NUM_CLASSES, "input_size": INPUT_SIZE, "train_size": opts.train_size,
            "val_size": 10000}


def build(method, opts, device):
    """``(model, optimizer, precision options, record)``; raises UserError when the method
    cannot be built."""
    torch.manual_seed(0)
    teacher = create_model(opts.teacher, num_classes=NUM_CLASSES)
    student = create_model(opts.student, num_classes=NUM_CLASSES)
    if method != FLOOR:
        teacher = fast_teacher(teacher, opts, device, floor=method == FLOOR_FAST)
    if method in (FLOOR, FLOOR_FAST):
        config = method_config("vanilla", opts)
        model = Floor(student, teacher).to(device)
        if opts.compile:
            compile_models(model)
        optimizer = make_sgd(student.parameters(), lr=config.learning_rate,
                             momentum=config.optim.momentum,
                             weight_decay=config.optim.weight_decay)
        return model, optimizer, config.precision, {"stage": "main", "stages": ["main"],
                                                "channels_last": False}  # today's floor
    config = method_config(cached_method(method) or method, opts)
    if not config.method.requires_teacher():
        teacher = None
    elif config.method.min_teachers() > 1:  # copies of the teacher stand for several
        teacher = ensemble_of([teacher] + [
            fast_teacher(create_model(opts.teacher, num_classes=NUM_CLASSES), opts, device)
            for _ in range(config.method.min_teachers() - 1)])
    model = config.method.build(student, teacher, config.run_info).to(device)
    stages = model.stages()
    stage = stages[-1]
    # the middle of the main stage: past every warm-up (ReviewKD, DKD), no re-matching (MGD)
    model.on_epoch_start(max(1, stage.epochs // 2 + 1), None, stage)
    model.stage = stage.name
    channels_last = use_channels_last(config.precision, student, device)
    if channels_last:  # as helper/run/trainer.py: every module of the distiller
        model.to(memory_format=torch.channels_last)
    if opts.compile:
        compile_models(model)
    optimizer = stage_optimizer(config, model, stage)
    return model, optimizer, config.precision, {"stage": stage.name, "stages": [s.name for s in stages],
                                           "channels_last": channels_last}


def fast_teacher(teacher, opts, device, floor=False):
    """The teacher as train_student.py prepares it for ``--teacher_forward`` (and
    ``--teacher_compile``) (``floor_fast``: ``auto`` for ``eager``)."""
    mode = opts.teacher_forward if not (floor and opts.teacher_forward == "eager") else "auto"
    return prepare_teacher(teacher, INPUT_SIZE, device, mode, compile=opts.teacher_compile)


# ---- the teacher cache ----------------------------------------------------------------------
def cached_method(name):
    """The method of a ``<method>_cached`` row (None for any other name); one line when that
    method cannot use the cache."""
    if not name.endswith(CACHED):
        return None
    method = name[:-len(CACHED)]
    try:
        cls = get_distiller(method)
    except KeyError:
        raise UserError(f"unknown method {method!r} in {name!r}; choose any of: "
                        f"{', '.join(all_methods())}") from None
    if cls.cacheable not in teacher_cache.OUTPUTS:
        cacheable = [c.name for c in distiller_classes() if c.cacheable in teacher_cache.OUTPUTS]
        raise UserError(f"{method} reads more of the teacher than a teacher cache holds; "
                        f"<method>_cached rows: {', '.join(cacheable)}")
    return cls.name


def benchmark_cache(opts, folder, outputs, pooled_dim=None):
    """A teacher cache of ``outputs``, 162 views x ``--train_size`` images x 100 classes (and
    x ``pooled_dim``), in ``folder``, filled with random float32 values (a lookup costs what a
    real cache's does)."""
    transform = RandomCropFlip(cifar.PADDING, flip=True)
    cache = teacher_cache.TeacherCache(folder, {
        "views": teacher_cache.view_count(transform), "train_size": opts.train_size,
        "num_classes": NUM_CLASSES, "dtype": "float32", "outputs": list(outputs),
        "pooled_dim": pooled_dim})
    cache.create()
    rng = np.random.default_rng(0)
    for name, (views, n, width) in cache.shapes.items():
        view = rng.standard_normal((n, width), dtype=np.float32).tobytes()
        with open(cache.path(name), "r+b") as f:  # written as a file: not mapped, not in the RSS
            for _ in range(views):
                f.write(view)
    return cache.open("r")


def with_cached_outputs(batches, cache, outputs):
    """Synthetic batches with the cached ``outputs`` (``teacher_logits``, ...) looked up at
    random views of their samples."""
    g = torch.Generator().manual_seed(6)
    for batch in batches:
        index = batch["index"].cpu()
        views = torch.randint(0, cache.shape[0], (len(index),), generator=g)
        for name in outputs:
            batch[teacher_cache.KEYS[name]] = cache.lookup(index, views, name).to(
                batch["images"].device)
        yield batch


def measure_cache_build(opts):
    """Build ``--cache_views`` views of ``--cache_images`` random images with the optimised
    teacher; the time per image-view and its extrapolation to a whole cache."""
    device = torch.device(opts.device)
    torch.manual_seed(0)
    teacher = fast_teacher(create_model(opts.teacher, num_classes=NUM_CLASSES), opts, device,
                           floor=True)
    n = min(opts.cache_images, opts.train_size)
    images = torch.randint(0, 256, (n, *INPUT_SIZE), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(7))
    loader = TensorLoader(images, _labels(n, 8), opts.batch_size, device, cifar.MEAN, cifar.STD,
                          transform=RandomCropFlip(cifar.PADDING, flip=True))
    views = list(range(opts.cache_views + 1))  # the first one warms up
    with tempfile.TemporaryDirectory() as folder:
        cache = teacher_cache.TeacherCache(folder, {"views": teacher_cache.view_count(
            loader.transform), "train_size": n, "num_classes": NUM_CLASSES, "dtype": "float32",
            "outputs": ["logits"], "pooled_dim": None})
        cache.create()
        teacher_cache.build(cache, teacher, loader, views=views[:1], log=lambda *a: None)
        seconds = teacher_cache.build(cache, teacher, loader, views=views[1:],
                                      log=lambda *a: None)
    per = seconds / (opts.cache_views * n)
    total_views = cache.shape[0]
    return {"method": CACHE_BUILD, "status": "ok", "device": opts.device,
            "teacher_forward": opts.teacher_forward, "build_ms_per_image_view": 1000 * per,
            "build_images": n, "build_views": opts.cache_views,
            "build_estimate_s": per * total_views * opts.train_size, "cache_views": total_views}


# ---- data ---------------------------------------------------------------------------------
def _labels(n, seed):
    return torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(seed))


def synthetic_batches(requests, opts, device):
    """Random normalised images on the device, random targets, ``index`` from a shuffled
    training set of ``--train_size`` and the method's batch keys from their real provider:
    the provider wraps a ``TensorLoader`` of 1x1 placeholder images (whose batches' images, and
    any view a provider made of them such as MLKD's strong one, are replaced by full-size random
    images), so nothing image-sized is held but one batch."""
    placeholder = torch.zeros((opts.train_size, INPUT_SIZE[0], 1, 1), dtype=torch.uint8)
    loader = TensorLoader(placeholder, _labels(opts.train_size, 1), opts.batch_size, device,
                          cifar.MEAN, cifar.STD, shuffle=True, seed=1)
    loader = add_batch_keys(loader, requests, "benchmark")
    g = torch.Generator(device=device).manual_seed(2)
    for batch in epochs(loader):  # as many batches as asked for
        for key, value in batch.items():
            if torch.is_tensor(value) and value.shape[1:] == (INPUT_SIZE[0], 1, 1):
                batch[key] = torch.randn((value.shape[0], *INPUT_SIZE), generator=g, device=device)
        yield batch


def real_loader(requests, opts, device):
    """The CIFAR training pipeline of ``dataset.build_loaders`` over random uint8 images."""
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (opts.train_size, *INPUT_SIZE), dtype=torch.uint8, generator=g)
    loader = TensorLoader(images, _labels(opts.train_size, 4), opts.batch_size, device,
                          cifar.MEAN, cifar.STD, shuffle=True,
                          transform=RandomCropFlip(cifar.PADDING, flip=True), pad=True,
                          drop_last=False, seed=5)
    return add_batch_keys(loader, requests, "benchmark")


def epochs(loader, first=1):
    """Batches of ``loader`` over as many epochs as asked for, as ``fit`` runs them."""
    epoch = first
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _peak_memory_mib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _timed_run(model, optimizer, loader, precision, record, warmup, channels_last=False):
    """Run the toolbox's loop over ``loader``; ``(seconds per timed iteration, loss terms)``.

    A non-finite loss (the loop checks at its last iteration, after all the others were
    timed) is noted in ``record["nonfinite"]``; the times measured are kept."""
    terms = None
    try:
        stats = train_one_epoch(model, loader, optimizer, 1, print_freq=10**9,
                                log=lambda *a: None, precision=precision,
                                channels_last=channels_last)
        terms = sorted(stats["terms"])
    except NonFiniteLoss as e:
        record.setdefault("nonfinite", str(e))
    return loader.times(warmup), terms


class Phase:
    """One kind of iteration (a model on synthetic or real batches), timed in chunks: each
    chunk is one call of the toolbox's ``train_one_epoch`` over ``n`` batches."""

    def __init__(self, model, optimizer, precision, batches, device, include_data,
                 channels_last=False):
        self.model, self.optimizer, self.batches = model, optimizer, batches
        self.channels_last = channels_last
        self.precision = Precision.from_options(precision, device)
        self.device, self.include_data = device, include_data
        self.times, self.terms = [], None

    def run(self, n, record, timed=True):
        if n <= 0:
            return
        loader = TimedLoader(self.batches, n, self.device, self.include_data)
        times, terms = _timed_run(self.model, self.optimizer, loader, self.precision, record, 0,
                                  self.channels_last)
        self.terms = terms or self.terms
        if timed:
            self.times += times


def chunks(total, size):
    return [min(size, total - start) for start in range(0, total, size)]


def measure(method, opts):
    """Everything about one method, as a JSON-ready dict.

    The machine's speed can drift within minutes (shared cores), so the method's synthetic
    iterations, the floor's (built in this process after the method's peak memory is read)
    and the end-to-end iterations are interleaved in chunks of ``--chunk`` iterations, and
    every ratio compares medians taken over the same minutes."""
    device = torch.device(opts.device)
    record = {"method": method, "status": "ok", "device": opts.device,
              "baseline_mib": _peak_memory_mib(torch.device("cpu")),
              "memory": ("cuda max_memory_allocated" if device.type == "cuda"
                         else "peak RSS of the process (ru_maxrss)")}
    try:
        model, optimizer, args, info = build(method, opts, device)
    except UserError as e:
        return {**record, "status": "n/a", "reason": str(e)}
    record.update(info)
    record["student_params"] = count_parameters(model.student)
    record["teacher_params"] = count_parameters(model.teacher) if model.teacher is not None else 0
    record["extra_params"] = count_parameters(model) - record["student_params"]
    record["extra_buffer_elements"] = (sum(b.numel() for b in model.buffers())
                                       - sum(b.numel() for b in model.student.buffers()))
    requests = {} if method in (FLOOR, FLOOR_FAST) else model.batch_requests()
    cl = info["channels_last"]
    synthetic, real = opts.data in ("synthetic", "both"), opts.data in ("real", "both")
    sizes = chunks(opts.iters, opts.chunk)
    folder, outputs, cache = None, (), None
    if cached_method(method):
        folder, outputs = tempfile.TemporaryDirectory(), teacher_cache.OUTPUTS[model.cacheable]
        dim = teacher_cache.pooled_dim(model.teacher) if "pooled" in outputs else None
        cache = benchmark_cache(opts, folder.name, outputs, dim)

    def batches():
        made = synthetic_batches(requests, opts, device)
        return with_cached_outputs(made, cache, outputs) if cache else made

    def end_to_end():
        loader = real_loader(requests, opts, device)
        return teacher_cache.CachedTeacherLoader(loader, cache, outputs) if cache else loader
    try:
        _reset_peak(device)
        phases = {}
        if synthetic:
            phases["synthetic"] = Phase(model, optimizer, args, batches(), device,
                                        include_data=False, channels_last=cl)
        else:
            source = end_to_end()
            phases["e2e"] = Phase(model, optimizer, args, epochs(source), device, True, cl)
        first = next(iter(phases.values()))
        first.run(opts.warmup, record, timed=False)
        first.run(sizes[0], record)
        # the method alone so far: its peak memory (the floor and the data set come next)
        record["peak_mib"] = _peak_memory_mib(device)
        if synthetic and method != FLOOR:  # today's floor: the eager teacher
            f_model, f_optimizer, f_args, _ = build(FLOOR, opts, device)
            phases["floor"] = Phase(f_model, f_optimizer, f_args,
                                    synthetic_batches({}, opts, device), device, False)
            phases["floor"].run(opts.warmup, record, timed=False)
        if synthetic and real:
            source = end_to_end()
            phases["e2e"] = Phase(model, optimizer, args, epochs(source), device, True, cl)
            phases["e2e"].run(opts.warmup, record, timed=False)
        for i, size in enumerate(sizes):
            for phase in phases.values():
                if not (i == 0 and phase is first):
                    phase.run(size, record)
        record["loss_terms"] = first.terms
        for name, phase in phases.items():
            record[f"{name}_ms"] = _median_ms(phase.times)
            record[f"{name}_all_ms"] = [1000 * t for t in phase.times]
        record["process_peak_mib"] = _peak_memory_mib(device)
        if real and hasattr(model, "rematch"):
            record.update(epoch_start_pass(model, source, opts, device))
    except UserError as e:  # e.g. a batch key its provider cannot make for this data
        return {**record, "status": "n/a", "reason": str(e)}
    finally:
        if folder is not None:
            folder.cleanup()
    return record


def epoch_start_pass(model, source, opts, device):
    """Time a few batches of the method's epoch-start pass over the training set (MGD's
    matching) and extrapolate to the whole set; the final solve is timed as is."""
    batches = math.ceil(opts.train_size / opts.batch_size)
    n = min(opts.warmup + max(opts.iters // 2, 2), batches)
    skip = min(opts.warmup, n - 1)
    loader = TimedLoader(source, n, device, include_data=True)
    cap = getattr(model, "match_images", None)
    if cap is not None:  # no cap of its own: the pass ends when the timed loader does
        model.match_images = 0
    try:
        model.rematch(loader)
        _sync(device)
        done = time.perf_counter()
    finally:
        if cap is not None:
            model.match_images = cap
    per_batch = statistics.median(loader.times(skip))
    solve = done - loader.ends[-1]
    return {"epoch_pass_s": per_batch * batches + solve, "epoch_pass_batch_ms": 1000 * per_batch,
            "epoch_pass_solve_s": solve,
            "epoch_pass_every": int(getattr(model, "update_freq", 1))}


# ---- the parent: one subprocess per method, then the table --------------------------------
def all_methods():
    return [cls.name for cls in distiller_classes()]


def parse_methods(text):
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UserError("--methods is empty; pass all or a comma-separated list such as kd,at")
    if names == ["all"]:
        names = all_methods()
    names = [_canonical(name) for name in names]
    ordered = [FLOOR] + [m for m in dict.fromkeys(names) if m != FLOOR]
    return ordered


def _canonical(name):
    """A row's name as the table shows it (a method's registered name)."""
    special = (FLOOR,) + EXTRA_ROWS
    if name in special:
        return name
    if cached_method(name):
        return cached_method(name) + CACHED
    try:
        return get_distiller(name).name
    except KeyError:
        raise UserError(f"unknown method {name!r}; choose all, {', '.join(special)}, "
                        f"<method>_cached, or any of: {', '.join(all_methods())}") from None


def child_argv(opts, method):
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", method,
            "--teacher", opts.teacher, "--student", opts.student,
            "--batch_size", str(opts.batch_size), "--iters", str(opts.iters),
            "--warmup", str(opts.warmup), "--chunk", str(opts.chunk),
            "--threads", str(opts.threads), "--data", opts.data,
            "--device", opts.device, "--train_size", str(opts.train_size),
            "--teacher_forward", opts.teacher_forward, "--cache_views", str(opts.cache_views),
            "--cache_images", str(opts.cache_images)]
    flags = ("amp", "compile", "teacher_compile", "channels_last")
    argv += ["--memory_format", opts.memory_format]
    return argv + [f"--{flag}" for flag in flags if getattr(opts, flag)]


def run_child(opts, method, timeout=None):
    proc = subprocess.run(child_argv(opts, method), capture_output=True, text=True,
                          cwd=str(REPO), timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    return {"method": method, "status": "failed",
            "reason": f"exit code {proc.returncode}: {err[-1] if err else 'no output'}"}


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(opts):
    if opts.device == "cuda":
        where = f"GPU {torch.cuda.get_device_name(0)}, CPU {cpu_model()}"
    else:
        where = f"CPU {cpu_model()} ({os.cpu_count()} logical CPUs)"
    amp = "off"
    if opts.amp:
        amp = "fp16 autocast + gradient scaler" if opts.device == "cuda" else "bf16 autocast"
    return (f"{where}, {opts.threads} torch threads, torch {torch.__version__}, device "
            f"{opts.device}, amp {amp}, torch.compile {'on' if opts.compile else 'off'}")


def _fmt_count(n):
    if n is None:
        return "-"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}k"
    return str(n)


def _fmt(x, digits=1, suffix=""):
    return "-" if x is None else f"{x:.{digits}f}{suffix}"


def _ratio(a, b):
    if a is None or b is None or not b > 0:
        return None
    return a / b


def _fmt_seconds(s):
    if s is None:
        return "-"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{s:.1f}s"


def add_ratios(results):
    """Ratio to the floor measured in the method's own process (``floor_ms``, interleaved with
    it); the floor's row (and a record without its own floor) uses the floor's process."""
    floor = next((r for r in results if r["method"] == FLOOR and r["status"] == "ok"), None)
    floor_ms = floor.get("synthetic_ms") if floor else None
    for r in results:
        if r["status"] == "ok":
            paired = r.get("floor_ms") if r["method"] != FLOOR else r.get("synthetic_ms")
            r["ratio_to_floor"] = _ratio(r.get("synthetic_ms"), paired or floor_ms)
            r["ratio_e2e_to_synthetic"] = _ratio(r.get("e2e_ms"), r.get("synthetic_ms"))
    return results


def table(results, opts):
    lines = ["| method | extra params | synthetic ms/iter | ratio to floor | end-to-end ms/iter "
             "| ratio to synthetic | peak memory |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    labels = {FLOOR: "floor (a)", FLOOR_FAST: "floor, optimised teacher (d)"}
    labels.update({r["method"]: f"{cached_method(r['method'])}, teacher cache (e)"
                   for r in results if cached_method(r["method"])})
    for r in results:
        if r["method"] == CACHE_BUILD:
            continue  # a note, not an iteration
        name = r["method"] + (" (b)" if r.get("epoch_pass_s") is not None else "")
        name = labels.get(r["method"], name)
        if r.get("nonfinite"):
            name += " (c)"
        if r["status"] != "ok":
            reason = " ".join(str(r.get("reason", "")).split())
            lines.append(f"| {r['method']} | {r['status']} ({reason}) | | | | | |")
            continue
        stage = f" [{r['stage']} stage]" if len(r.get("stages", [])) > 1 else ""
        lines.append(
            f"| {name}{stage} | {_fmt_count(r.get('extra_params'))} | {_fmt(r.get('synthetic_ms'))} "
            f"| {_fmt(r.get('ratio_to_floor'), 2)} | {_fmt(r.get('e2e_ms'))} "
            f"| {_fmt(r.get('ratio_e2e_to_synthetic'), 2)} "
            f"| {_fmt(r.get('peak_mib'), 0, ' MiB')} |")
    return lines


def notes(results, opts):
    ok = [r for r in results if r["status"] == "ok"]
    baseline = min((r["baseline_mib"] for r in ok if "baseline_mib" in r), default=None)
    iters = math.ceil(opts.train_size / opts.batch_size)
    out = ["(a) floor: teacher forward under torch.no_grad + student forward, cross-entropy, "
           "backward, SGD step. Each method's process also times the floor, taking turns with "
           f"the method and the end-to-end run every {opts.chunk} iterations, and its ratios "
           "use that floor (the speed of shared cores drifts within minutes); the floor's row "
           "is its own process."]
    if any(r.get("epoch_pass_s") is not None for r in ok):
        for r in ok:
            if r.get("epoch_pass_s") is not None:
                out.append(
                    f"(b) {r['method']}: its epoch-start pass over the training set (channel "
                    f"matching, before every {r['epoch_pass_every']} epoch(s)) is not in the "
                    f"times above: about {_fmt_seconds(r['epoch_pass_s'])} for "
                    f"{opts.train_size:,} images "
                    f"({r['epoch_pass_batch_ms']:.1f} ms per batch of {opts.batch_size}, "
                    f"extrapolated from a few batches, + {r['epoch_pass_solve_s'] * 1000:.0f} ms "
                    "assignment).")
    bad = [r["method"] for r in ok if r.get("nonfinite")]
    if bad:
        out.append(f"(c) {', '.join(bad)}: the loss became non-finite on these random images with "
                   "random weights (a property of the data, not of the timing); the times "
                   "measured up to the loop's check at the last iteration are reported.")
    when = ("the method's warm-up and first timed iterations, before the floor and the "
            "end-to-end data set are built" if opts.data != "real" else
            "the method's warm-up and first end-to-end iterations (with the data set)")
    if opts.device == "cuda":
        out.append(f"Peak memory: torch.cuda.max_memory_allocated after {when}.")
    else:
        out.append(f"Peak memory: peak RSS (ru_maxrss) of the method's own process after {when}; "
                   "it includes the Python/torch/toolbox baseline of "
                   f"{_fmt(baseline, 0, ' MiB')} measured after the imports.")
    out += teacher_notes(results, opts)
    out.append(f"Median of {opts.iters} iterations after {opts.warmup} warm-up, batch "
               f"{opts.batch_size}, each method in a fresh process; multi-stage methods are "
               "timed in their main (last) stage.")
    estimates = []
    for r in ok:
        if r.get("e2e_ms") is not None:
            text = f"{r['method']} {_fmt_seconds(r['e2e_ms'] * iters / 1000)}"
            if r.get("epoch_pass_s") is not None:
                text += (f" (+{_fmt_seconds(r['epoch_pass_s'])} matching every "
                         f"{r['epoch_pass_every']} epochs)")
            estimates.append(text)
    if estimates:
        out.append(f"Epoch estimate ({opts.train_size:,} images = {iters} iterations of "
                   f"{opts.batch_size}, end to end, training only): " + ", ".join(estimates))
    return out


def teacher_notes(results, opts):
    """(d), (e), the cache's build time and the simkd_cifar100.sh estimate, where measured."""
    ok = {r["method"]: r for r in results if r["status"] == "ok"}
    extra = " --teacher_compile" if opts.teacher_compile else ""
    formats = {r.get("channels_last") for r in results if r["method"] not in (FLOOR, FLOOR_FAST)
               and r["status"] == "ok"}
    memory = {frozenset({True}): "channels-last", frozenset({False}): "contiguous"}.get(
        frozenset(formats), "channels-last or contiguous")
    out = [f"Teacher forward of the method rows: --teacher_forward {opts.teacher_forward}{extra}; "
           f"their memory format: {memory} (--memory_format {opts.memory_format}"
           f"{' --channels_last' if opts.channels_last else ''}). The floor's teacher is eager "
           "and its student contiguous (today's floor)."]
    if FLOOR_FAST in ok:
        out.append("(d) the floor with the optimised teacher (BN folded into the convolutions, "
                   "channels-last on the CPU, inference mode); its ratio is to the eager floor "
                   "timed in turns with it.")
    cached = [cached_method(m) for m in ok if cached_method(m)]
    if cached:
        outputs = {m: teacher_cache.OUTPUTS[get_distiller(m).cacheable] for m in cached}
        held = ", ".join(f"{m} its {' and '.join(o)}" for m, o in outputs.items())
        out.append(f"(e) the teacher's outputs read from a memory-mapped teacher cache ({held}; "
                   f"162 views x {opts.train_size:,} images x 100 logits, or x the pooled "
                   "feature's width, float32): no teacher forward.")
    hours = lambda s: f"{s / 3600:.1f} h"  # noqa: E731
    build = ok.get(CACHE_BUILD)
    if build:
        out.append(f"Teacher cache build ({opts.teacher}, --teacher_forward "
                   f"{build['teacher_forward']}): {build['build_ms_per_image_view']:.3f} ms per "
                   f"image-view ({build['build_views']} views of {build['build_images']:,} "
                   f"images timed), so {build['cache_views']} views x {opts.train_size:,} images "
                   f"~ {hours(build['build_estimate_s'])}, paid once per teacher.")
    kd, cached = ok.get("kd"), ok.get(KD_CACHED)
    if kd and cached and kd.get("e2e_ms") and cached.get("e2e_ms"):
        iters = math.ceil(opts.train_size / opts.batch_size) * 240
        runs = 3 * 3  # simkd_cifar100.sh: 3 students x TRIALS=3 kd rows
        plain, fast = (r["e2e_ms"] * iters / 1000 * runs for r in (kd, cached))
        extra = f" + {hours(build['build_estimate_s'])} building it" if build else ""
        out.append(f"simkd_cifar100.sh kd rows ({runs} runs of 240 epochs; {opts.student}'s "
                   f"end-to-end times stand for all three students): {hours(plain)} "
                   f"without the cache, {hours(fast)}{extra} with it.")
    return out


def parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--student", default="resnet8x4")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64)
    p.add_argument("--methods", default="all",
                   help="all, or a comma-separated list (kd,at,...); the floor always runs")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (of each kind)")
    p.add_argument("--chunk", type=int, default=5,
                   help="iterations per turn when the method, the floor and the end-to-end run "
                        "take turns in a method's process")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each method's process")
    p.add_argument("--amp", action="store_true", help="mixed precision as train_student.py --amp")
    p.add_argument("--teacher_compile", "--teacher-compile", action="store_true",
                   help="torch.compile the optimised teacher of the method rows and floor_fast, as "
                        "train_student.py --teacher_compile")
    p.add_argument("--memory_format", "--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="memory format of the method rows as train_student.py's (auto: "
                        "channels-last on the CPU); the floor stays today's (contiguous)")
    p.add_argument("--channels_last", "--channels-last", action="store_true",
                   help="--memory_format channels_last, as train_student.py")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile student and teacher as train_student.py --compile")
    p.add_argument("--data", default="both", choices=DATA_CHOICES,
                   help="synthetic (pure compute), real (end to end) or both")
    p.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="default: cuda when present, else cpu")
    p.add_argument("--train_size", "--train-size", type=int, default=50000,
                   help="images in the training set (CIFAR-100: 50,000; smaller for quick tests)")
    p.add_argument("--teacher_forward", choices=TEACHER_FORWARD_MODES, default="auto",
                   help="the teacher of the method rows, as train_student.py's flag")
    p.add_argument("--cache_views", type=int, default=2,
                   help="cache_build: views timed (after one warm-up view)")
    p.add_argument("--cache_images", type=int, default=5000,
                   help="cache_build: images per view timed (at most --train_size)")
    p.add_argument("--json", type=Path, default=None, help="also write all results to this file")
    p.add_argument("--one", metavar="METHOD", default=None,
                   help="internal: measure one method in this process and print one JSON line")
    return p


def check(opts):
    if opts.device is None:
        opts.device = "cuda" if torch.cuda.is_available() else "cpu"
    if opts.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but CUDA is not available here; use --device cpu")
    names = model_names()
    for flag in ("teacher", "student"):
        if getattr(opts, flag) not in names:
            raise UserError(f"unknown --{flag} {getattr(opts, flag)!r}; choose one of: {', '.join(names)}")
    for flag in ("batch_size", "iters", "chunk", "threads", "train_size", "cache_views",
                 "cache_images"):
        if getattr(opts, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(opts, flag)}")
    if opts.warmup < 0:
        raise UserError(f"--warmup must be 0 or more, got {opts.warmup}")
    if opts.train_size < opts.batch_size:
        raise UserError(f"--train_size {opts.train_size} is smaller than --batch_size {opts.batch_size}")


def run(opts, out=sys.stdout):
    """Benchmark every method of ``--methods`` (one subprocess each); returns the results."""
    methods = parse_methods(opts.methods)
    results = []
    for method in methods:
        t0 = time.perf_counter()
        r = run_child(opts, method)
        results.append(r)
        summary = r.get("reason") if r["status"] != "ok" else (
            f"synthetic {_fmt(r.get('synthetic_ms'))} ms, end to end {_fmt(r.get('e2e_ms'))} ms"
            if method != CACHE_BUILD else f"{r['build_ms_per_image_view']:.3f} ms per image-view")
        print(f"{method}: {r['status']}: {summary} ({time.perf_counter() - t0:.0f}s)",
              file=sys.stderr, flush=True)
    add_ratios(results)
    ok = next((r for r in results if r["status"] == "ok" and r.get("student_params")), {})
    lines = [machine_line(opts),
             f"teacher {opts.teacher} ({_fmt_count(ok.get('teacher_params'))} params) -> student "
             f"{opts.student} ({_fmt_count(ok.get('student_params'))} params), batch "
             f"{opts.batch_size}, data {opts.data}", ""]
    lines += table(results, opts) + [""] + notes(results, opts)
    print("\n".join(lines), file=out, flush=True)
    if opts.json:
        opts.json.write_text(json.dumps({"machine": machine_line(opts), "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
            "results": results}, indent=1))
    return results


def main(argv=None):
    opts = parser().parse_args(argv)
    try:
        check(opts)
        if opts.one is None:
            run(opts)
            return 0
        if "," in opts.one or opts.one == "all":
            raise UserError(f"--one takes one method, got {opts.one!r}")
        method = parse_methods(opts.one)[-1]
        torch.set_num_threads(opts.threads)
        with redirect_stdout(sys.stderr):  # methods may print (MGD's matching): keep stdout JSON
            record = measure_cache_build(opts) if method == CACHE_BUILD else measure(method, opts)
        record["threads"] = torch.get_num_threads()
        print(json.dumps(record), flush=True)
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""``--teacher_cache DIR``: the teacher's logits, and its pooled feature where the method reads
it, for every augmented view of the training set, computed once and read back by every later
run that needs only them (issue 18, part 2).

The in-memory data sets (CIFAR, MNIST) augment with ``RandomCropFlip``: a crop offset of
``0..2p`` pixels in each direction of the ``p``-padded image and, for CIFAR, a horizontal flip.
That is a finite set of ``V = (2p + 1)^2 x (2 if flip else 1)`` views of each image (CIFAR:
81 offsets x 2 flips = 162; MNIST without ``--jitter``: 1), so a cache of the teacher's output
for every (view, image) is exact: a cached run draws the same shuffle and the same
augmentation parameters (``TensorLoader.epoch_plan``), trains on the same images and reads
the outputs the teacher would have computed on them. Its losses equal the on-the-fly run's up
to float rounding (tests/test_teacher_cache.py), and exactly what the teacher forward of
``--teacher_forward`` computes is stored.

Storage (``DIR``, one cache per folder):
  - ``manifest.json``: what the cache was computed from: the SHA-256 of the teacher checkpoint
    file, the data set's name, size and the SHA-256 of its images and labels, the
    augmentation (padding, flip) and normalisation, the number of views and classes, and the
    storage dtype; and what it holds: ``outputs`` (``["logits"]``, or ``["logits",
    "pooled"]``) and ``pooled_dim`` (D, or null). A run whose manifest differs is refused with
    one line naming the field. A cache with the pooled feature serves a run that reads only
    logits; a logits-only cache asked for the pooled feature is refused (another folder, or
    delete it). Manifests of format 1 (logits only, before ``outputs``) are read as
    ``outputs: ["logits"]``.
  - ``logits.bin``: the logits, shape ``(V, N, K)`` in ``dtype``, memory-mapped (numpy).
    CIFAR-100: 162 x 50,000 x 100 x 4 bytes = 3.2 GB in float32, 1.6 GB in float16.
  - ``pooled.bin`` (a "pooled" cache): the teacher's pooled feature ``feats[-1]``, shape
    ``(V, N, D)``, from the same teacher pass (``teacher(x, is_feat=True)``). CIFAR-100 with
    resnet32x4 (D = 256): 162 x 50,000 x 256 x 4 bytes = 8.3 GB in float32, 4.1 GB in float16.
  - ``progress.bin``: one byte per view, set once the view is written and flushed.

Building runs the teacher over the data set once per view (162 passes for CIFAR, the teacher
cost of 162 epochs: less than one 240-epoch run pays), printing progress; an interrupted
build (Ctrl-C, a crash) keeps every finished view and continues where it stopped when the same
command runs again. Distributed ranks share the folder: rank 0 creates the files, each rank
computes every ``world_size``-th view, and all wait for each other before training.

``--teacher_cache_dtype float16`` halves the files; float16 keeps 11 significant bits, so each
logit or feature is stored to within 2^-11 (about 5e-4) of its value, relative (values below
float16's smallest normal number, 6.1e-5, to within 2^-25 absolute). Measured in
tests/test_teacher_cache.py: the KD loss moves by less than 1e-3, relative, PKT's by 1e-5,
RKD's by up to 1.4e-3 (distances between similar pooled features amplify the rounding).

Methods use the cache by declaring ``cacheable``: ``"logits"`` (KD and its logit-only
relatives: the teacher's logits are all they read) or ``"pooled"`` (CRD, RKD, PKT, CC, L2,
PAD-L2: the teacher's pooled feature ``feats_t[-1]``, and its logits for the KD term; stored
with ``preact`` False, as these methods read it, and the same with True on the CIFAR models of
the zoo: resnet, wrn, vgg, ShuffleNet, MobileNetV2). Others
ignore ``--teacher_cache`` with one line and run the teacher on the fly. Only ``--aug
standard`` (the crop and flip above) can be cached.
"""
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from dataset.loader_wrapper import LoaderWrapper
from dataset.tensor_loader import RandomCropFlip, TensorLoader, crop_flip, normalize
from helper.teachers import store
from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option, require
from models.base import evaluating

FORMAT = 2  # 2: "outputs" and "pooled_dim"; 1 (logits only) is read as outputs ["logits"]
KIND = "teacher_cache"
DTYPES = ("float32", "float16")
# what a cache holds for each ``cacheable`` kind; a cache holding more serves a kind needing less
OUTPUTS = {"logits": ("logits",), "pooled": ("logits", "pooled")}
# images per teacher pass while building: on this AMD EPYC CPU resnet32x4 took 10.0 ms per
# image at 64, 11.5 at 128 and 12.0 at 256; a GPU wants large batches (not measured here)
BUILD_BATCH = {"cpu": 64, "cuda": 512}
# the batch entries Distiller.forward_train reads
KEYS = {"logits": "teacher_logits", "pooled": "teacher_pooled"}
INFORMATIONAL = ("teacher_file", "teacher_forward")  # recorded, not required to match
# compared apart (a cache may hold more than a run reads); pooled_dim follows from the
# teacher file and the input size, which are compared
HELD = ("outputs", "pooled_dim")


# ---- views ---------------------------------------------------------------------------------
def view_count(transform) -> int:
    if transform is None:
        return 1
    return (2 * transform.padding + 1) ** 2 * (2 if transform.flip else 1)


def view_ids(transform, params: torch.Tensor) -> torch.Tensor:
    """The view of each row of ``params`` (row offset, column offset, flip), int64 (B,)."""
    if transform is None or params is None:
        return torch.zeros(0 if params is None else len(params), dtype=torch.int64)
    side, flips = 2 * transform.padding + 1, 2 if transform.flip else 1
    return (params[:, 0] * side + params[:, 1]) * flips + params[:, 2]


def view_params(transform, view: int) -> torch.Tensor:
    """The ``(1, 3)`` augmentation parameters of ``view`` (``view_ids``' inverse)."""
    side, flips = 2 * transform.padding + 1, 2 if transform.flip else 1
    cell, flip = divmod(int(view), flips)
    row, col = divmod(cell, side)
    return torch.tensor([[row, col, flip]], dtype=torch.int64)


# ---- the manifest ----------------------------------------------------------------------------
def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def data_sha256(loader: TensorLoader) -> str:
    h = hashlib.sha256()
    h.update(loader.images.numpy().tobytes())
    h.update(loader.targets_cpu.numpy().tobytes())
    return h.hexdigest()


def manifest_for(loader: TensorLoader, *, teacher_file, dataset: str, num_classes: int,
                 dtype: str = "float32", teacher_forward: str = "", outputs=OUTPUTS["logits"],
                 pooled_dim=None) -> dict:
    """``teacher_file``: the checkpoint, or a list of them (an ensemble's mean logit);
    ``outputs``: ``OUTPUTS[kind]``, with ``pooled_dim`` (D) when it holds "pooled"."""
    t = loader.transform
    files = [teacher_file] if isinstance(teacher_file, (str, Path)) else list(teacher_file)
    hashes = [file_sha256(f) for f in files]
    if ("pooled" in outputs) != (pooled_dim is not None):
        raise ValueError(f"pooled_dim goes with the 'pooled' output: {outputs}, {pooled_dim}")
    return {"format": FORMAT, "kind": KIND, "outputs": list(outputs),
            "pooled_dim": None if pooled_dim is None else int(pooled_dim),
            "teacher_sha256": hashes[0] if len(hashes) == 1 else hashes,
            "teacher_file": str(files[0]) if len(files) == 1 else [str(f) for f in files],
            "dataset": dataset, "train_size": loader.dataset_size,
            "data_sha256": data_sha256(loader),
            "input_size": list(loader.images.shape[1:]),
            "transform": None if t is None else {"padding": t.padding, "flip": t.flip},
            "normalize": {"mean": loader.mean.flatten().tolist(),
                          "std": loader.std.flatten().tolist()},
            "views": view_count(t), "num_classes": int(num_classes), "dtype": dtype,
            "teacher_forward": teacher_forward}


def upgraded(manifest: dict) -> dict:
    """A manifest of format 1 (logits only) as format 2 has it; any other as it is."""
    if manifest.get("format") == 1 and manifest.get("kind") == "logits":
        return {**manifest, "format": FORMAT, "kind": KIND, "outputs": ["logits"],
                "pooled_dim": None}
    return manifest


def pooled_dim(teacher) -> int:
    """D of the teacher's pooled feature ``feats[-1]`` (a vector); one line when it is not."""
    shape = tuple(teacher.feature_shapes()[-1])
    if len(shape) != 1:
        raise UserError(f"--teacher_cache stores the teacher's pooled feature as a vector; its "
                        f"feats[-1] has shape {shape}: drop --teacher_cache")
    return shape[0]


# ---- the cache -----------------------------------------------------------------------------
class TeacherCache:
    """The memory-mapped outputs of one folder, ``logits`` (V, N, K) and in a pooled cache
    ``pooled`` (V, N, D); ``lookup(index, views, name)`` -> float32 (B, K or D)."""

    def __init__(self, folder, manifest: dict):
        self.folder = Path(folder)
        self.manifest = manifest
        views, n = manifest["views"], manifest["train_size"]
        widths = {"logits": manifest["num_classes"], "pooled": manifest["pooled_dim"]}
        self.shapes = {name: (views, n, widths[name]) for name in manifest["outputs"]}
        self.dtype = np.dtype(manifest["dtype"])
        self.arrays = {}

    @property
    def outputs(self):
        return tuple(self.shapes)

    @property
    def shape(self):
        return self.shapes["logits"]

    @property
    def data(self):
        """The logits' array (once open)."""
        return self.arrays.get("logits")

    def path(self, name="logits"):
        return self.folder / f"{name}.bin"

    def done(self) -> np.ndarray:
        """One uint8 per view: 1 where it is built."""
        return store.done(self.folder)

    def create(self):
        layout = {name: (self.dtype, shape) for name, shape in self.shapes.items()}
        store.create(self.folder, layout, self.shape[0], self.manifest)

    def mark_done(self, view: int):
        """Flush the arrays, then mark ``view`` built."""
        store.mark_done(self.folder, view, self.arrays.values())

    def open(self, mode="r"):
        self.arrays = {name: np.memmap(self.path(name), dtype=self.dtype, mode=mode, shape=shape)
                       for name, shape in self.shapes.items()}
        return self

    def write(self, view: int, lo: int, values: dict):
        """Rows ``lo...`` of ``view`` of each output in ``values`` (``{name: tensor}``); one
        line when one does not fit the storage dtype (the view is then not marked done)."""
        for name, value in values.items():
            rows = value.float().cpu().numpy().astype(self.dtype)
            if not np.isfinite(rows).all():
                raise UserError(f"teacher cache: the teacher's {name} of view {view} are not "
                                f"finite in {self.dtype} (beyond float16's 65504?); use "
                                "--teacher_cache_dtype float32, or check the teacher")
            self.arrays[name][view, lo:lo + len(rows)] = rows

    def lookup(self, index: torch.Tensor, views: torch.Tensor, name="logits") -> torch.Tensor:
        rows = self.arrays[name][views.numpy(), index.numpy()]
        return torch.from_numpy(np.asarray(rows, dtype=np.float32))


def open_cache(folder, wanted: dict, rank: int = 0) -> TeacherCache:
    """The cache in ``folder`` for ``wanted``: created by rank 0 when the folder holds none;
    a folder whose manifest differs, or that lacks an output ``wanted`` reads, is refused (one
    holding more serves it, and its build continues with all it holds)."""
    folder = Path(folder)
    found = store.read_manifest(folder, f"--teacher_cache {folder}",
                                "delete the folder to rebuild the cache")
    if found is not None:
        found = upgraded(found)
        store.refuse_other(found, wanted, label=f"--teacher_cache {folder}", what="cache",
                           this="this run", ignore=INFORMATIONAL + HELD)
        held = found.get("outputs", [])
        missing = [o for o in wanted["outputs"] if o not in held]
        if missing:
            raise UserError(f"--teacher_cache {folder} holds the teacher's "
                            f"{' and '.join(held)} only and this run reads its "
                            f"{' and '.join(missing)} feature too: give another folder, or "
                            "delete it to rebuild")
        return TeacherCache(folder, found)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--teacher_cache {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and rank == 0:
        raise UserError(f"--teacher_cache {folder} holds files but no manifest.json; give an "
                        "empty or new folder")
    cache = TeacherCache(folder, wanted)
    if rank == 0:
        cache.create()
    return cache


def build(cache: TeacherCache, teacher, loader: TensorLoader, *, rank=0, world_size=1,
          log=print, batch_size=None, views=None):
    """Compute this rank's missing views (every ``world_size``-th; of ``views`` only, when
    given: the benchmark's sample), each flushed and marked done before the next; ``log``
    gets progress lines. Returns the seconds spent."""
    done = cache.done()
    todo = [v for v in (range(cache.shape[0]) if views is None else views)
            if v % world_size == rank and not done[v]]
    if not todo:
        return 0.0
    cache.open("r+")
    transform, device, n = loader.transform, loader.device, loader.dataset_size
    batch_size = batch_size or BUILD_BATCH.get(device.type, 64)
    log(f"teacher cache: computing {len(todo)} of {cache.shape[0]} views of {n:,} images "
        f"into {cache.folder} ({int(cache.done().sum())} done before)")
    with store.building(len(todo), log, lambda: (
            f"teacher cache: interrupted with {int(cache.done().sum())} of {cache.shape[0]} "
            "views done; run the same command again to continue")) as progress, \
            evaluating(teacher):
        for k, view in enumerate(todo):
            params = None if transform is None else view_params(transform, view).to(device)
            for lo in range(0, n, batch_size):
                idx = torch.arange(lo, min(lo + batch_size, n))
                images = loader.images[idx].to(device)
                if params is not None:
                    images = crop_flip(images, transform.padding, params.expand(len(idx), 3))
                values = teacher_outputs(teacher, normalize(images, loader.mean, loader.std),
                                         cache.outputs)
                cache.write(view, lo, values)
            cache.mark_done(view)
            progress.step(k + 1, lambda spent, left: (
                f"teacher cache: {k + 1}/{len(todo)} views, {spent:.0f}s, "
                f"{1000 * spent / ((k + 1) * n):.3f} ms per image-view, about {left:.0f}s left"))
    return progress.spent()


def teacher_outputs(teacher, x, outputs) -> dict:
    """``{name: tensor}`` of ``outputs`` in one teacher pass: ``teacher(x)`` for the logits
    alone, ``teacher(x, is_feat=True)`` (as the pooled methods run it, ``preact`` False) when
    the pooled feature ``feats[-1]`` is wanted too."""
    if "pooled" not in outputs:
        return {"logits": teacher(x)}
    feats, logits = teacher(x, is_feat=True)
    return {"logits": logits, "pooled": feats[-1]}


class CachedTeacherLoader(LoaderWrapper):
    """``loader`` (a ``TensorLoader``) whose batches also hold the cached ``outputs`` of each
    sample's view (``teacher_logits``, and ``teacher_pooled`` for "pooled"), looked up from
    the same epoch plan the loader draws."""

    def __init__(self, loader: TensorLoader, cache: TeacherCache, outputs=OUTPUTS["logits"]):
        super().__init__(loader)
        self.cache, self.outputs = cache, tuple(outputs)

    def __iter__(self):
        indices, params = self.loader.epoch_plan()
        views = (view_ids(self.loader.transform, params) if params is not None
                 else torch.zeros(len(indices), dtype=torch.int64))
        bs = self.loader.batch_size
        for i, batch in enumerate(self.loader):
            sl = slice(i * bs, (i + 1) * bs)
            if i == 0 and not torch.equal(batch["index"].cpu(), indices[sl]):
                raise RuntimeError("the loader's batches do not follow its epoch_plan; the "
                                   "teacher cache cannot be used with it")
            for name in self.outputs:
                batch[KEYS[name]] = self.cache.lookup(indices[sl], views[sl], name).to(
                    batch["images"].device, non_blocking=True)
            yield batch


def attach(loader, distiller, config, ctx):
    """``loader`` with the cached teacher outputs the method reads (``distiller.cacheable``:
    its logits, or its logits and pooled feature), building the cache first where needed; or
    ``loader`` itself when ``--teacher_cache`` is off or the method reads more."""
    teacher, dataset = config.teacher, config.data.dataset
    folder = teacher.teacher_cache
    if folder is None:
        return loader
    name = getattr(distiller, "name", "?")
    if distiller.teacher is None or not (distiller.div_weight or distiller.uses_teacher_output()):
        ctx.log(f"--teacher_cache: --distill {name} runs no teacher here; the cache is not used")
        return loader
    kind = getattr(distiller, "cacheable", None)
    if kind not in OUTPUTS:
        ctx.log(f"--teacher_cache: --distill {name} reads more of the teacher than its "
                "logits and pooled feature; the cache is not used and the teacher runs on the "
                "fly")
        return loader
    outputs = OUTPUTS[kind]
    changed = config.augment.changed_flags()
    if changed:
        raise UserError(f"--teacher_cache holds the views of the standard crop and flip only "
                        f"(--aug standard); drop {' '.join(changed)} or --teacher_cache")
    if type(loader) is not TensorLoader or getattr(loader, "augment", None) is not None or (
            loader.transform is not None and type(loader.transform) is not RandomCropFlip):
        raise UserError(f"--teacher_cache needs an in-memory data set (cifar10, cifar100, mnist, "
                        f"fashion_mnist) with its finite crop/flip views; {dataset} is not one: "
                        "drop --teacher_cache")
    dim = pooled_dim(distiller.teacher) if "pooled" in outputs else None
    wanted = manifest_for(loader, teacher_file=teacher.path_t, dataset=dataset,
                          num_classes=config.data_info["num_classes"],
                          dtype=teacher.teacher_cache_dtype,
                          teacher_forward=teacher.teacher_forward, outputs=outputs,
                          pooled_dim=dim)
    cache = open_cache(folder, wanted, ctx.rank)
    _barrier(ctx)
    spent = build(cache, distiller.teacher, loader, rank=ctx.rank, world_size=ctx.world_size,
                  log=ctx.log)
    _barrier(ctx)
    if not cache.done().all():
        raise UserError(f"--teacher_cache {folder}: {int((cache.done() == 0).sum())} views are "
                        "still missing after the build; run again to complete them")
    if spent:
        ctx.log(f"teacher cache: built in {spent:.0f}s on this process")
    return CachedTeacherLoader(loader, cache.open("r"), outputs)


def _barrier(ctx):
    import torch.distributed as dist
    if ctx.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class CacheOptions(OptionGroup):
    """``--teacher_cache``: the teacher's outputs computed once and reused."""
    title = "teacher cache"
    teacher_cache: Optional[str] = option(
        None, "teacher logits (and pooled feature) of every augmented view, computed once into "
        "DIR and reused (methods whose python -m distillers entry says so; CIFAR/MNIST, --aug "
        "standard)", "--teacher-cache",
        metavar="DIR")
    teacher_cache_dtype: str = option("float32", "storage of the cache (float16: half the size, "
                                      "values to about 5e-4 relative)", "--teacher-cache-dtype",
                                      choices=DTYPES)

    def check(self):
        require(self.teacher_cache != "", "--teacher_cache is empty; give a folder")
        require(self.teacher_cache_dtype == "float32" or self.teacher_cache is not None,
                "--teacher_cache_dtype needs --teacher_cache DIR; add it, or drop "
                "--teacher_cache_dtype")


"""FKD soft labels for folder data sets (issue 18, part 3): the teacher's outputs on K random
crops of every training image for E epochs, computed once and replayed by every student run.

Shen & Xing, "A Fast Knowledge Distillation Framework for Visual Recognition", ECCV 2022;
szq0214/FKD (``FKD_SLG/generate_soft_label.py``, ``utils_FKD.py``, ``train_FKD.py``).

Build (one process, on CUDA when present)::

    python -m helper.fkd_labels --path_t T.pth --dataset imagenet --data_folder D \\
        --epochs 75 --crops 4 --topk 5 --out DIR [--seed S --batch_size B --num_workers W
        --input_size 224 --dtype float16 --chunk 2048]

Train (any method that reads only the teacher's logits, ``Reads("logits", ...)``: kd, dkd,
...; no teacher runs, ``--path_t`` is only checked against the store)::

    python train_student.py --fkd DIR --path_t T.pth --dataset imagenet ... --distill kd
    python train_student.py --fkd DIR --distill vanilla --fkd_soft_ce ...   # FKD's own loss

``--fkd_soft_ce`` puts ``soft_targets`` (the stored distribution) in each batch, which the
cross-entropy term takes in place of the labels: with ``--distill vanilla`` (or ``kd -d 0``)
the loss is exactly train_FKD.py's ``Soft_CrossEntropy`` at its default ``--temp 1``
(``-sum p_t log softmax(z_s)``, averaged over the crops). ``kd -c 0 -d 1 --kd_T 1`` has the
same gradients; its value is lower by the teacher's entropy.

What is stored (``DIR``): crop ``k`` of image ``i`` in epoch ``e`` is drawn from
``(seed, e, i)`` (``dataset/fkd.py``: our folder pipeline's RandomResizedCrop and flip);
``boxes.bin`` int32 (E, N, K, 4) and ``flips.bin`` uint8 (E, N, K) hold them, and
  - ``--topk 0``: ``logits.bin`` (E, N, K, C), the teacher's logits: exact at any ``--kd_T``;
  - ``--topk N`` (FKD's default 5, "marginal_smoothing_k5"): ``probs.bin`` (E, N, K, N), the
    N largest softmax probabilities (T = 1) and ``classes.bin`` their classes (int16, int32
    above 32,767 classes). A run rebuilds each distribution as FKD's ``Recover_soft_label``
    does: the N stored probabilities, and the rest ``1 - sum`` spread evenly over the other
    C - N classes; ``teacher_logits`` are its logarithms (floored at 1e-12), whose softmax is
    that distribution. At T = 1 the KD term, and FKD's soft cross-entropy, then see the
    teacher's top N exactly and a flat tail; at T > 1 the tail is tempered flat, not as the
    teacher's (``kd`` at T = 4 weighs the tail more: prefer ``--topk 0`` there).
``--dtype float16`` halves the outputs: a probability or logit keeps 11 significant bits
(relative error <= 2^-11, 4.9e-4; probabilities below 6e-5 to 3e-8 absolute).
``manifest.json`` names what the store was computed from (the teacher file's SHA-256, the
data set, its file list's SHA-256, the crop size and parameters, K, top-k, dtype, epochs);
``progress.bin`` has one byte per (epoch, chunk of ``--chunk`` images), set once the chunk is
written and flushed. An interrupted build continues where it stopped when run again; a run
refuses a store with a chunk missing, or one whose teacher file, data set, file list or
input size differ from its own (one line, exit 2, no run folder).

Differences from FKD: FKD stores 500 crops per image (boxes relative to the image, the
teacher's crops bicubic at its 475-pixel input with scale 0.08..0.936 for EfficientNet-L2,
the student's bilinear at 224) and each pass takes 4 of them at random; here the crops of
each epoch are stored in order, at the run's ``--input_size``, and epochs beyond the stored E
replay them again (epoch e reads stored epoch (e - 1) mod E, with a new image order), as
FKD reuses its 500. FKD counts a pass with 4 crops as 4 epochs and runs its last 4 epochs on
single crops; here an epoch is a pass (K crops per image: K times a plain epoch's steps at
the same ``--batch_size``), so FKD's ``--epochs 300 --num_crops 4`` is ``--epochs 75``.
Only FKD's marginal smoothing is offered (its renormalised top-k gives zero probabilities,
which a KL term cannot take).
"""
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from dataset.fkd import FLIP_P, RATIO, SCALE, CropSet, FKDLoader
from dataset.folder import FOLDER_DATASET_NAMES, canonical_folder_name, scan_folder_dataset
from dataset.imagenet_transforms import IMAGENET_MEAN, IMAGENET_STD
from dataset.tensor_loader import normalize
from helper.core.argtypes import OneLineParser, non_negative, positive
from helper.teachers import store as folder_store
from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option, require
from helper.teachers.cache import file_sha256

FORMAT = 1
DTYPES = ("float32", "float16")
FLOOR = 1e-12  # the smallest probability a rebuilt top-k distribution holds (its log is finite)
# what a training run must share with the store
RUN_FIELDS = ("teacher_sha256", "dataset", "train_size", "files_sha256", "input_size",
              "num_classes")


# ---- the manifest ----------------------------------------------------------------------------
def files_sha256(folder) -> str:
    """SHA-256 of an ``ImageFolder``'s file list: each path (relative to its root) and label.
    A file replaced by another of the same name is not seen (ImageNet's bytes are not hashed)."""
    h = hashlib.sha256()
    for path, label in folder.samples:
        h.update(f"{os.path.relpath(path, folder.root)}\t{label}\n".encode())
    return h.hexdigest()


def manifest_for(*, teacher_file, teacher_model, num_classes, dataset, folder, input_size,
                 seed, epochs, crops, topk, dtype, chunk, mean, std) -> dict:
    return {"format": FORMAT, "kind": "fkd", "teacher_sha256": file_sha256(teacher_file),
            "teacher_file": str(teacher_file), "teacher_model": teacher_model,
            "num_classes": int(num_classes), "dataset": dataset, "train_size": len(folder),
            "files_sha256": files_sha256(folder), "input_size": int(input_size),
            "scale": list(SCALE), "ratio": list(RATIO), "flip": FLIP_P,
            "interpolation": "bilinear", "normalize": {"mean": list(mean), "std": list(std)},
            "seed": int(seed), "epochs": int(epochs), "crops": int(crops), "topk": int(topk),
            "dtype": dtype, "chunk": int(chunk)}


def read_manifest(folder) -> dict:
    found = folder_store.read_manifest(folder, f"--fkd {folder}",
                                       "build the store again into an empty folder")
    if found is None:
        raise UserError(f"--fkd {folder} holds no manifest.json; build the soft labels first "
                        "(python -m helper.fkd_labels ... --out FOLDER)")
    return found


# ---- the store ------------------------------------------------------------------------------
def rebuild_logits(values: torch.Tensor, classes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """FKD's marginal smoothing (``Recover_soft_label``) of top-k probabilities ``values`` at
    ``classes`` (..., k), as log-probabilities (..., C) float32 floored at ``FLOOR``."""
    values = values.float()
    k = values.shape[-1]
    rest = ((1.0 - values.sum(-1, keepdim=True)) / (num_classes - k)).clamp_min(0.0)
    probs = rest.expand(*values.shape[:-1], num_classes).clone()
    probs.scatter_(-1, classes.long(), values)
    return probs.clamp_min(FLOOR).log()


class SoftLabelStore:
    """The memory-mapped arrays of one folder (see the module docstring). Opens its files
    lazily in each process, so DataLoader workers can hold it."""

    def __init__(self, folder, manifest: dict):
        self.folder, self.manifest = Path(folder), manifest
        m = manifest
        self.epochs, self.size, self.crops = m["epochs"], m["train_size"], m["crops"]
        self.topk, self.num_classes = m["topk"], m["num_classes"]
        self.input_size, self.chunk = m["input_size"], m["chunk"]
        self.chunks = -(-self.size // self.chunk)
        self.mode, self._maps = "r", None

    # the files: name -> (dtype, trailing shape)
    def layout(self):
        lead = (self.epochs, self.size, self.crops)
        out = {"boxes": (np.int32, lead + (4,)), "flips": (np.uint8, lead)}
        if self.topk == 0:
            out["logits"] = (self.manifest["dtype"], lead + (self.num_classes,))
        else:
            index = np.int16 if self.num_classes <= np.iinfo(np.int16).max else np.int32
            out["probs"] = (self.manifest["dtype"], lead + (self.topk,))
            out["classes"] = (index, lead + (self.topk,))
        return out

    def __getstate__(self):
        return {**self.__dict__, "_maps": None}

    def _arrays(self):
        if self._maps is None:
            self._maps = {name: np.memmap(self.folder / f"{name}.bin", dtype=dtype,
                                          mode=self.mode, shape=shape)
                          for name, (dtype, shape) in self.layout().items()}
        return self._maps

    def open(self, mode="r"):
        self.mode, self._maps = mode, None
        return self

    def create(self):
        folder_store.create(self.folder, self.layout(), self.epochs * self.chunks, self.manifest)
        return self

    def done(self) -> np.ndarray:
        """(E, chunks) uint8: 1 where that epoch's chunk of images is written."""
        return folder_store.done(self.folder).reshape(self.epochs, self.chunks)

    def mark_done(self, epoch: int, chunk: int):
        folder_store.mark_done(self.folder, epoch * self.chunks + chunk, self._arrays().values())

    def write(self, epoch, index, boxes, flips, logits):
        """Image ``index``'s (B,) crops of ``epoch`` (B,) and the teacher's logits (B, K, C)."""
        a, e, i = self._arrays(), np.asarray(epoch), np.asarray(index)
        a["boxes"][e, i], a["flips"][e, i] = boxes.numpy(), flips.numpy()
        if self.topk == 0:
            a["logits"][e, i] = logits.float().cpu().numpy()
            return
        values, classes = logits.float().softmax(dim=-1).topk(self.topk, dim=-1)
        a["probs"][e, i] = values.cpu().numpy()
        a["classes"][e, i] = classes.cpu().numpy()

    def crops_of(self, epoch: int, index: int):
        a = self._arrays()
        return torch.from_numpy(np.array(a["boxes"][epoch, index])), torch.from_numpy(
            np.array(a["flips"][epoch, index]))

    def teacher_logits(self, epoch: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The stored outputs of images ``index`` (B,) in ``epoch`` (B,): float32 (B, K, C),
        the logits, or the log of the rebuilt top-k distribution."""
        a, e, i = self._arrays(), epoch.numpy(), index.numpy()
        if self.topk == 0:
            return torch.from_numpy(np.asarray(a["logits"][e, i], dtype=np.float32))
        return rebuild_logits(torch.from_numpy(np.asarray(a["probs"][e, i], dtype=np.float32)),
                              torch.from_numpy(np.asarray(a["classes"][e, i], dtype=np.int64)),
                              self.num_classes)

    def slot_of(self, epoch: int) -> int:
        """The stored epoch a training epoch (from 1) replays: ``(epoch - 1) mod E``."""
        return (int(epoch) - 1) % self.epochs


def open_for_build(folder, wanted: dict) -> SoftLabelStore:
    """The store in ``folder``: created when the folder is new or empty, continued when its
    manifest is ``wanted``'s, else refused."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        found = read_manifest(folder)
        folder_store.refuse_other(found, wanted, label=f"--out {folder}", what="store",
                                  this="this build", ignore=("teacher_file",))
        return SoftLabelStore(folder, found)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--out {folder} exists and holds no store; give a new or empty folder")
    return SoftLabelStore(folder, wanted).create()


def build(store: SoftLabelStore, teacher, folder, *, device, mean, std, batch_size=256,
          num_workers=4, log=print):
    """Compute every missing (epoch, chunk) with ``teacher`` (in eval mode): each chunk
    written, flushed and marked before it counts. Returns ``(image-epochs done, seconds)``."""
    done = store.done()
    todo = [(e, c) for e in range(store.epochs) for c in range(store.chunks) if not done[e, c]]
    if not todo:
        return 0, 0.0
    left = {}
    keys = []
    for e, c in todo:
        images = range(c * store.chunk, min((c + 1) * store.chunk, store.size))
        left[(e, c)] = len(images)
        keys += [(i, e) for i in images]
    crops = CropSet(folder, store.input_size, crops=store.crops, seed=store.manifest["seed"])
    loader = DataLoader(crops, batch_size=max(1, batch_size // store.crops), sampler=keys,
                        num_workers=num_workers)
    shape = (1, 3, 1, 1)
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(shape)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(shape)
    store.open("r+")
    log(f"fkd labels: {len(keys):,} image-epochs to compute ({store.epochs} epochs x "
        f"{store.size:,} images, {store.crops} crops each; {int(done.sum())} of "
        f"{done.size} chunks done before) into {store.folder}")
    count = 0
    with folder_store.building(len(keys), log, lambda: (
            f"fkd labels: interrupted with {int((store.done() == 0).sum())} of {done.size} "
            "chunks left; run the same command again to continue")) as progress:
        for crops_u8, boxes, flips, _, index, epoch in loader:
            b, k = crops_u8.shape[:2]
            x = normalize(crops_u8.flatten(0, 1).to(device), mean, std)
            with torch.no_grad():
                logits = teacher(x).view(b, k, -1)
            store.write(epoch, index, boxes, flips, logits)
            count += b
            for e, i in zip(epoch.tolist(), index.tolist()):
                c = i // store.chunk
                left[(e, c)] -= 1
                if not left[(e, c)]:
                    store.mark_done(e, c)
            progress.step(count, lambda spent, rest: (
                f"fkd labels: {count:,}/{len(keys):,} image-epochs, {spent:.0f}s, "
                f"{count / spent:.1f} images/s ({count * k / spent:.1f} crops/s), about "
                f"{rest:.0f}s left"))
    return count, progress.spent()


# ---- training runs --------------------------------------------------------------------------
class StoredTeacher(nn.Module):
    """The teacher of an ``--fkd`` run: its name, and outputs that come only from the store
    (every batch carries ``teacher_logits``); it has no weights and never runs."""

    def __init__(self, model_name: str, num_classes: int):
        super().__init__()
        self.model_name, self.num_classes = model_name, num_classes

    def forward(self, *args, **kwargs):
        raise RuntimeError("--fkd: the teacher's outputs come from the store; a batch without "
                           "teacher_logits reached the teacher")


def open_for_run(folder, path_t, dataset: str, train_folder, input_size, num_classes):
    """The complete store in ``folder`` that matches the run, or a one-line UserError."""
    found = read_manifest(folder)
    if found.get("kind") != "fkd" or found.get("format") != FORMAT:
        raise UserError(f"--fkd {folder} holds no FKD store of this version; build it again")
    if isinstance(path_t, (list, tuple)):
        raise UserError("--fkd holds one teacher's outputs; give the one --path_t it was "
                        "built from")
    teacher = found.get("teacher_sha256") if path_t is None else file_sha256(path_t)  # vanilla
    wanted = {"teacher_sha256": teacher, "dataset": dataset, "train_size": len(train_folder),
              "files_sha256": files_sha256(train_folder), "input_size": int(input_size[-1]),
              "num_classes": int(num_classes)}
    key = folder_store.mismatch(found, wanted, keys=RUN_FIELDS)
    if key:
        what = (f"--path_t {path_t} is another file than its teacher {found.get('teacher_file')}"
                if key == "teacher_sha256" else
                f"{key}: {found.get(key)!r}, this run: {wanted[key]!r}")
        raise UserError(f"--fkd {folder} was built for another run ({what}); build a store for "
                        "this one (python -m helper.fkd_labels)")
    store = SoftLabelStore(folder, found)
    missing = int((store.done() == 0).sum())
    if missing:
        raise UserError(f"--fkd {folder} is incomplete ({missing} of {store.done().size} chunks "
                        "missing); run its build command again to finish it")
    return store


def logit_methods():
    """The methods that read only the teacher's logits: those FKD's stored outputs serve."""
    from distillers import distiller_classes
    return [c.name for c in distiller_classes() if c.cacheable == "logits"]


def attach(train_loader, config, ctx):
    """``(loader, teacher)`` of an ``--fkd`` run: the FKD loader over ``train_loader`` (a
    ``FolderLoader``) and the stand-in teacher; checks the method and the store."""
    data, teacher, method = config.data, config.teacher, config.method
    readers = [p.name for p in method.parts
               if p.requires_teacher() and getattr(p.method, "cacheable", None) != "logits"]
    if readers:
        raise UserError(f"--fkd stores the teacher's outputs only, and --distill "
                        f"{', '.join(readers)} reads more of the teacher; use a method that "
                        f"reads only its logits ({', '.join(logit_methods())}) or drop --fkd")
    dataset = canonical_folder_name(data.dataset)
    if dataset is None or not hasattr(train_loader, "dataset"):
        raise UserError(f"--fkd replays crops of folder data sets (imagenet, cub200, folder) "
                        f"read by torchvision; {data.dataset}{' with --dali' if data.dali else ''}"
                        " is not one: drop --fkd")
    info = config.data_info
    store = open_for_run(teacher.fkd, teacher.path_t, dataset, train_loader.dataset,
                         info["input_size"], info["num_classes"])
    loader = FKDLoader(train_loader, store.open("r"), soft_ce=teacher.fkd_soft_ce)
    m = store.manifest
    stored = "full logits" if store.topk == 0 else f"top-{store.topk} probabilities"
    ctx.log(f"fkd: teacher {m['teacher_model']}'s {stored} ({m['dtype']}) on {store.epochs} "
            f"epochs x {store.crops} crops from {teacher.fkd}; batches of "
            f"{loader.images_per_batch} images x {store.crops} crops"
            + (f"; epochs beyond {store.epochs} replay them again" if config.optim.epochs > store.epochs
               else ""))
    return loader, StoredTeacher(m["teacher_model"], m["num_classes"])


@dataclass(frozen=True)
class FkdOptions(OptionGroup):
    """``--fkd``: train on stored crops and teacher outputs."""
    title = "FKD soft labels (helper/fkd_labels.py)"
    fkd: Optional[str] = option(None, "train on the crops and teacher outputs stored in DIR by "
                                "python -m helper.fkd_labels (folder data sets; logit methods; "
                                "no teacher runs)", metavar="DIR")
    fkd_soft_ce: bool = option(False, "the CE term (-c) takes the stored teacher probabilities "
                               "instead of the labels: with -d 0, FKD's own soft cross-entropy "
                               "at T=1", "--fkd-soft-ce")

    def check(self):
        require(self.fkd != "", "--fkd is empty; give the store's folder")
        require(self.fkd is not None or not self.fkd_soft_ce,
                "--fkd_soft_ce needs --fkd DIR; add it, or drop --fkd_soft_ce")


# ---- the builder's command line -------------------------------------------------------------
def builder_parser():
    p = OneLineParser(prog="python -m helper.fkd_labels",
                description="Store a teacher's outputs on K random crops per image and epoch "
                            "(FKD soft labels) for train_student.py --fkd.")
    p.add_argument("--path_t", "--path-t", required=True, metavar="CHECKPOINT")
    p.add_argument("--model_t", "--model-t", default=None, metavar="MODEL",
                   help="teacher architecture, when the checkpoint does not name it")
    p.add_argument("--dataset", default="imagenet", choices=FOLDER_DATASET_NAMES)
    p.add_argument("--data_folder", "--data-folder", default="./data")
    p.add_argument("--out", required=True, metavar="DIR", help="the store's folder")
    p.add_argument("--epochs", type=positive(int), required=True,
                   help="epochs of crops to store (a longer run replays them again)")
    p.add_argument("--crops", type=positive(int), default=4,
                   help="crops per image and epoch (FKD's --num_crops 4)")
    p.add_argument("--topk", type=non_negative(int), default=5,
                   help="store the top-k softmax probabilities (FKD: 5); 0: the full logits")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="float16 halves the outputs (relative error <= 2^-11)")
    p.add_argument("--input_size", "--input-size", type=positive(int), default=224,
                   help="the crop size (the student run's --input_size)")
    p.add_argument("--seed", type=non_negative(int), default=12345)
    p.add_argument("--batch_size", "--batch-size", type=positive(int), default=256,
                   help="crops per teacher forward pass")
    p.add_argument("--num_workers", "--num-workers", type=non_negative(int), default=8)
    p.add_argument("--chunk", type=positive(int), default=2048,
                   help="images per completion marker (an interruption loses at most one)")
    p.add_argument("--gpu_id", "--gpu-id", type=non_negative(int), default=0)
    return p


def main(argv=None, log=print):
    from helper.run.checkpoint import load_teacher
    from helper.run.trainer import user_errors
    from models.base import fit_to_data
    args = builder_parser().parse_args(argv)
    with user_errors():
        train, _ = scan_folder_dataset(args.dataset, args.data_folder)
        classes = len(train.classes)
        if args.topk >= classes:
            raise UserError(f"--topk {args.topk} keeps every one of the {classes} classes; give "
                            f"--topk 0 for the full logits, or fewer than {classes}")
        device = torch.device(f"cuda:{args.gpu_id}" if torch.cuda.is_available() else "cpu")
        teacher, _ = load_teacher(args.path_t, classes, args.model_t, dataset=args.dataset)
        fit_to_data(teacher.to(device), (3, args.input_size, args.input_size), "teacher")
        wanted = manifest_for(teacher_file=args.path_t, teacher_model=teacher.model_name,
                              num_classes=classes, dataset=args.dataset, folder=train,
                              input_size=args.input_size, seed=args.seed, epochs=args.epochs,
                              crops=args.crops, topk=args.topk, dtype=args.dtype,
                              chunk=args.chunk, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        store = open_for_build(args.out, wanted)
        count, spent = build(store, teacher, train, device=device, mean=IMAGENET_MEAN,
                             std=IMAGENET_STD, batch_size=args.batch_size,
                             num_workers=args.num_workers, log=log)
        if count:
            log(f"fkd labels: {count:,} image-epochs in {spent:.0f}s "
                f"({count / max(spent, 1e-9):.1f} images/s); store {store.folder} complete")
        else:
            log(f"fkd labels: {store.folder} is complete already")
    return store


if __name__ == "__main__":
    main(sys.argv[1:])

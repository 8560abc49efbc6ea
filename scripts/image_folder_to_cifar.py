"""Turn an image folder of 32x32 images into torchvision's CIFAR pickle layout, so that it
trains with ``--dataset cifar10`` (or ``cifar100``): held in memory and augmented per batch with
RepDistiller's random crop and flip, instead of ``--dataset folder``'s ImageNet transforms.

    python scripts/image_folder_to_cifar.py cifar10-jpeg.tar.gz ./data/cifar10-jpeg
    python train_teacher.py --dataset cifar10 --data_folder ./data/cifar10-jpeg --model resnet56

The source is a folder or a tar archive (read in one streaming pass, nothing extracted) laid
out as ``[<top>/]{train,test}/<class>/<image>``. Classes are numbered in sorted order, as
torchvision's ``ImageFolder`` does. The images of each split are written in a random order
drawn from ``--seed`` (default 0) over their sorted paths, as torchvision's CIFAR files are
shuffled: the first N images of a split are a sample of every class, not the first class.
Ten classes give ``<dest>/cifar-10-batches-py/`` (``data_batch_1..5``, ``test_batch``,
``batches.meta``), a hundred give ``<dest>/cifar-100-python/`` (``train``, ``test``, ``meta``).
Every image must be 32x32 (greyscale and palette images are converted to RGB). The output
folder appears only once complete.
"""
import io
import pickle
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helper.core.argtypes import OneLineParser, non_negative  # noqa: E402
from helper.core.errors import UserError  # noqa: E402

SPLITS = ("train", "test")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def _decode(data: bytes, where: str) -> np.ndarray:
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(img.convert("RGB"))
    except Exception as e:  # not an image, truncated, ...
        raise UserError(f"cannot decode {where} ({type(e).__name__}: {e}); remove it or fix "
                        "the file") from None
    if rgb.shape[:2] != (32, 32):
        raise UserError(f"{where} is {rgb.shape[1]}x{rgb.shape[0]}, but the CIFAR layout holds "
                        "32x32 images; resize the data set first or train it with "
                        "--dataset folder")
    return rgb.transpose(2, 0, 1).reshape(-1)  # channel-major, as CIFAR's rows


def _split_class(parts):
    """``(split, class)`` of an image path's parts (with or without a top folder), or None."""
    if Path(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    for i in (0, 1):
        if len(parts) == i + 3 and parts[i] in SPLITS:
            return parts[i], parts[i + 1]
    return None


def _walk_archive(path: Path):
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                key = _split_class(Path(member.name).parts) if member.isfile() else None
                if key:
                    yield key, member.name, tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise UserError(f"cannot read archive {path} ({type(e).__name__}: {e}); is it a "
                        "complete tar archive?") from None


def _walk_folder(path: Path):
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        key = _split_class(file.relative_to(path).parts)
        if key:
            yield key, str(file), file.read_bytes()


def read_images(source):
    """``{split: {class: [(path, flat uint8 image), ...]}}`` from a folder or tar archive."""
    source = Path(source)
    if not source.exists():
        raise UserError(f"{source} does not exist; pass an image folder or a tar archive of one")
    walk = _walk_folder(source) if source.is_dir() else _walk_archive(source)
    found = {split: {} for split in SPLITS}
    for (split, cls), name, data in walk:
        found[split].setdefault(cls, []).append((name, _decode(data, name)))
    for split in SPLITS:
        if not found[split]:
            raise UserError(f"no images under {source} in {split}/<class>/; the layout must be "
                            "[<top>/]{train,test}/<class>/<image>")
    if sorted(found["train"]) != sorted(found["test"]):
        raise UserError(f"train and test of {source} have different classes "
                        f"({len(found['train'])} vs {len(found['test'])}); both need the same "
                        "class folders")
    return found


def _arrays(per_class, classes, rng):
    """``(images, labels)`` of one split, shuffled by ``rng`` from their sorted path order
    (the same seed gives the same files whatever order the source was read in)."""
    pairs = [(name, image, label) for label, cls in enumerate(classes)
             for name, image in per_class[cls]]
    pairs.sort(key=lambda p: p[0])
    pairs = [pairs[i] for i in rng.permutation(len(pairs))]
    data = np.stack([p[1] for p in pairs]).astype(np.uint8)
    return data, [p[2] for p in pairs]


def _dump(obj, path: Path):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL)


def write_cifar(found, dest, seed=0) -> Path:
    """Write the CIFAR layout under ``dest``, each split shuffled from ``seed``, and return the
    written folder."""
    classes = sorted(found["train"])
    if len(classes) not in (10, 100):
        raise UserError(f"found {len(classes)} classes; the CIFAR layouts hold 10 (cifar10) or "
                        "100 (cifar100)")
    rng = np.random.default_rng(seed)
    suffixes = sorted({Path(name).suffix.lower() or "no suffix" for split in found.values()
                       for images in split.values() for name, _ in images})
    # read by helper.run.evaluate.check_published: a lossy source (JPEG) scores below the original
    converted = f"image files ({', '.join(suffixes)}) by scripts/image_folder_to_cifar.py"
    train_x, train_y = _arrays(found["train"], classes, rng)
    test_x, test_y = _arrays(found["test"], classes, rng)
    dest = Path(dest)
    folder = dest / ("cifar-10-batches-py" if len(classes) == 10 else "cifar-100-python")
    if folder.exists():
        raise UserError(f"{folder} already exists; remove it or choose another destination")
    dest.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest))
    tmp.chmod(0o755)  # mkdtemp makes it private; the data folder is not
    try:
        if len(classes) == 10:
            for i, chunk in enumerate(np.array_split(np.arange(len(train_x)), 5), start=1):
                _dump({"data": train_x[chunk], "labels": [train_y[j] for j in chunk],
                       "batch_label": f"training batch {i} of 5"}, tmp / f"data_batch_{i}")
            _dump({"data": test_x, "labels": test_y, "batch_label": "testing batch 1 of 1"},
                  tmp / "test_batch")
            _dump({"label_names": classes, "num_cases_per_batch": len(train_x) // 5,
                   "num_vis": 3072, "converted_from": converted}, tmp / "batches.meta")
        else:
            _dump({"data": train_x, "fine_labels": train_y}, tmp / "train")
            _dump({"data": test_x, "fine_labels": test_y}, tmp / "test")
            _dump({"fine_label_names": classes, "converted_from": converted}, tmp / "meta")
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def main(argv=None):
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="image folder or tar archive: [<top>/]{train,test}/<class>/*")
    p.add_argument("dest", help="data folder to pass as --data_folder")
    p.add_argument("--seed", type=non_negative(int), default=0,
                   help="seed of the order the images of each split are written in (default 0)")
    args = p.parse_args(argv)
    try:
        found = read_images(args.source)
        folder = write_cifar(found, args.dest, args.seed)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sizes = {s: sum(len(v) for v in found[s].values()) for s in SPLITS}
    print(f"wrote {folder}: {sizes['train']} training and {sizes['test']} test images, "
          f"{len(found['train'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())

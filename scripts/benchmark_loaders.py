"""Images per second of the folder loaders: torchvision's DataLoader vs DALI, same thread count.

    python scripts/benchmark_loaders.py --archive ../shared/data/cifar10-jpeg.tar.gz --limit 50 \\
        --generate 300 --threads 2

Data (any combination):
  --archive A   an ImageFolder archive laid out as <top>/<split>/<class>/<file> (such as
                cifar10-jpeg.tar.gz), extracted into a temporary folder; with --limit N only
                the first N images of every class and split.
  --folder F    an existing folder with train/ and val/ (or test/).
  --generate N  N ImageNet-sized JPEGs (500x375, smooth random colour fields plus noise,
                quality 90, ~60 KB each) written to a temporary folder, in 10 classes; the
                validation split links to the same files.

Each loader runs the training pipeline (random-resized crop + flip) and the evaluation
pipeline (resize 256 + centre crop 224) over the whole split; after --warmup untimed epochs
(worker start-up, DALI pipeline build) --epochs epochs are timed, up to the last batch
delivered as normalised float32 CHW on the CPU (the same format for every loader).

Threads: the DataLoader gets --threads worker processes, DALI --threads threads; the main
process also works (the DataLoader's collation and normalisation, DALI's iterator) and
torch's intra-op threads are set to 1. `--dali gpu` rows are added when CUDA is present.
Prints a markdown table: loader, data, images, seconds, images/s.
"""
import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.folder import build_folder_loaders, extract_image_archive  # noqa: E402
from helper.core.errors import UserError  # noqa: E402


def generate_jpegs(root, n, size=(500, 375), classes=10, seed=0, quality=90):
    """``root/train/c<k>/<i>.jpg`` (n files) and ``root/val`` hard-linked to the same files."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    w, h = size
    for i in range(n):
        cls = f"c{i % classes}"
        for split in ("train", "val"):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, size=(h // 25 + 1, w // 25 + 1, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 12, size=smooth.shape), 0, 255).astype(np.uint8)
        path = root / "train" / cls / f"{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=quality)
        os.link(path, root / "val" / cls / path.name)
    return root


def time_loader(loader, warmup, epochs):
    for epoch in range(warmup):
        loader.set_epoch(epoch)
        for _ in loader:
            pass
    images = 0
    start = time.perf_counter()
    for epoch in range(warmup, warmup + epochs):
        loader.set_epoch(epoch)
        for batch in loader:
            images += batch["images"].shape[0]
    return images, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, help="ImageFolder archive (.tar.gz)")
    parser.add_argument("--limit", type=int, default=None,
                        help="with --archive: the first N images of every class and split")
    parser.add_argument("--folder", type=Path, help="existing folder with train/ and val/ or test/")
    parser.add_argument("--generate", type=int, default=0, metavar="N",
                        help="also benchmark N generated 500x375 JPEGs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=1, help="untimed epochs first")
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs")
    parser.add_argument("--loaders", default="torchvision,dali-cpu,dali-gpu",
                        help="comma-separated subset of torchvision, dali-cpu, dali-gpu")
    parser.add_argument("--splits", default="train,val", help="pipelines to time: train, val")
    args = parser.parse_args(argv)
    if not (args.archive or args.folder or args.generate):
        parser.error("give --archive, --folder and/or --generate N")
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="benchmark_loaders_") as tmp:
        tmp = Path(tmp)
        sources = []
        if args.archive:
            t0 = time.perf_counter()
            root = extract_image_archive(args.archive, tmp / "archive", per_class=args.limit)
            print(f"extracted {args.archive.name} ({'all' if args.limit is None else args.limit} "
                  f"per class and split) in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            sources.append((f"{args.archive.name.split('.')[0]} (32x32 JPEG)", root))
        if args.folder:
            sources.append((str(args.folder), args.folder))
        if args.generate:
            t0 = time.perf_counter()
            root = generate_jpegs(tmp / "generated", args.generate)
            size = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg")) / args.generate
            print(f"generated {args.generate} JPEGs (500x375, {size / 1024:.0f} KB each) in "
                  f"{time.perf_counter() - t0:.1f}s", file=sys.stderr)
            sources.append(("generated (500x375 JPEG)", root))

        loaders = [name.strip() for name in args.loaders.split(",") if name.strip()]
        if "dali-gpu" in loaders and not torch.cuda.is_available():
            loaders.remove("dali-gpu")
        device = "cuda" if torch.cuda.is_available() else "cpu"
        rows = []
        for data_name, root in sources:
            for loader_name in loaders:
                dali = {"torchvision": None, "dali-cpu": "cpu", "dali-gpu": "gpu"}[loader_name]
                train, val, info = build_folder_loaders(
                    "folder", root, args.batch_size, device if dali == "gpu" else "cpu",
                    seed=0, num_workers=args.threads, dali=dali)
                for split, loader in (("train", train), ("val", val)):
                    if split not in {s.strip() for s in args.splits.split(",")}:
                        continue
                    images, seconds = time_loader(loader, args.warmup, args.epochs)
                    rows.append((f"{loader_name} ({split})", data_name, images, seconds))
                    print(f"{rows[-1][0]:<22} {data_name:<28} {images:>7} {seconds:8.2f}s "
                          f"{images / seconds:8.1f}/s", file=sys.stderr)
                del train, val

    print(f"\nthreads {args.threads}, batch {args.batch_size}, {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"warm-up {args.warmup} epoch(s), timed {args.epochs}\n")
    print("| loader | data | images | seconds | images/s |")
    print("|---|---|---:|---:|---:|")
    for loader_name, data_name, images, seconds in rows:
        print(f"| {loader_name} | {data_name} | {images} | {seconds:.2f} | "
              f"{images / seconds if seconds > 0 else math.inf:.1f} |")


if __name__ == "__main__":
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)

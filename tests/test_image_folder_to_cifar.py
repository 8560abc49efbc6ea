"""scripts/image_folder_to_cifar.py: an image folder (or its tar archive) into the CIFAR layout."""
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from dataset import load_arrays

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "image_folder_to_cifar.py"
CLASSES = [f"class{i:02d}" for i in range(10)]


def _image(seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _make_folder(root, classes=CLASSES, per_class=None):
    """PNG (lossless) images; returns {split: [(class index, image HWC)]} in sorted path order."""
    per_class = per_class or {"train": 3, "test": 2}
    expected = {}
    for split, n in per_class.items():
        expected[split] = []
        for label, cls in enumerate(classes):
            folder = root / "top" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                img = _image(hash((split, label, i)) % 2**32)
                Image.fromarray(img).save(folder / f"{i:03d}.png")
                expected[split].append((f"{cls}/{i:03d}", label, img))
        expected[split].sort(key=lambda e: e[0])
    return root / "top", expected


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True)


def _check(dest, expected, seed=0):
    """Each split holds the expected images and labels, in the order ``seed`` shuffles their
    sorted paths into (numpy's ``default_rng(seed)``: train's permutation, then test's)."""
    train_x, train_y, test_x, test_y, n = load_arrays("cifar10", dest, download=False)
    assert n == 10
    rng = np.random.default_rng(seed)
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        assert x.shape == (len(expected[split]), 3, 32, 32)
        shuffled = [expected[split][i] for i in rng.permutation(len(expected[split]))]
        assert y.tolist() == [e[1] for e in shuffled]
        want = np.stack([e[2].transpose(2, 0, 1) for e in shuffled])
        assert np.array_equal(x.numpy(), want)  # pixels and channel order survive exactly


def test_folder_becomes_cifar10_that_the_loader_reads(tmp_path):
    src, expected = _make_folder(tmp_path / "src")
    out = _run(src, tmp_path / "data")
    assert out.returncode == 0, out.stderr
    assert "30 training and 20 test images, 10 classes" in out.stdout
    _check(tmp_path / "data", expected)
    assert not [p for p in (tmp_path / "data").iterdir() if p.name.startswith(".partial")]


def test_tar_archive_is_read_without_extracting(tmp_path):
    src, expected = _make_folder(tmp_path / "src")
    archive = tmp_path / "images.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="top")
    assert _run(archive, tmp_path / "data").returncode == 0
    _check(tmp_path / "data", expected)


def test_images_are_written_in_a_seeded_random_order(tmp_path):
    """As torchvision's CIFAR files: shuffled, so that the first images of a split are of
    several classes; the same --seed gives the same files, another seed another order."""
    src, expected = _make_folder(tmp_path / "src")
    for dest, seed in (("a", None), ("b", 0), ("c", 1)):
        seed_flag = [] if seed is None else ["--seed", seed]
        out = _run(src, tmp_path / dest, *seed_flag)
        assert out.returncode == 0, out.stderr
    _check(tmp_path / "c", expected, seed=1)
    folders = {d: tmp_path / d / "cifar-10-batches-py" for d in "abc"}
    files = sorted(p.name for p in folders["a"].iterdir())
    for name in files:
        assert (folders["a"] / name).read_bytes() == (folders["b"] / name).read_bytes()
    _, train_y, _, test_y, _ = load_arrays("cifar10", tmp_path / "a", download=False)
    assert len(set(train_y[:10].tolist())) > 2 and len(set(test_y[:10].tolist())) > 2
    other = load_arrays("cifar10", tmp_path / "c", download=False)[1]
    assert other.tolist() != train_y.tolist()
    assert sorted(other.tolist()) == sorted(train_y.tolist())


def test_negative_seed_is_one_line(tmp_path):
    src, _ = _make_folder(tmp_path / "src")
    out = _run(src, tmp_path / "data", "--seed", "-1")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1 and "--seed: must be 0 or more" in lines[0]
    assert not (tmp_path / "data").exists()


def test_hundred_classes_give_the_cifar100_layout(tmp_path):
    classes = [f"c{i:03d}" for i in range(100)]
    src, expected = _make_folder(tmp_path / "src", classes, {"train": 1, "test": 1})
    assert _run(src, tmp_path / "data").returncode == 0
    train_x, train_y, _, test_y, n = load_arrays("cifar100", tmp_path / "data", download=False)
    assert n == 100 and sorted(train_y.tolist()) == list(range(100)) and len(test_y) == 100
    assert train_y.tolist() == np.random.default_rng(0).permutation(100).tolist()


def _bad(tmp_path):
    """Convert ``src/top`` (or a missing folder); expect one error line and no output."""
    src = tmp_path / "src" / "top" if (tmp_path / "src").exists() else tmp_path / "nothing"
    out = _run(src, tmp_path / "data")
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr
    assert not list((tmp_path / "data").glob("cifar-*"))
    return lines[0]


def test_wrong_image_size_is_one_line(tmp_path):
    src, _ = _make_folder(tmp_path / "src")
    Image.fromarray(_image(1, size=40)).save(src / "train" / CLASSES[3] / "big.png")
    assert "big.png is 40x40, but the CIFAR layout holds 32x32 images" in _bad(tmp_path)


def test_undecodable_image_is_one_line(tmp_path):
    src, _ = _make_folder(tmp_path / "src")
    (src / "test" / CLASSES[0] / "broken.jpg").write_bytes(b"not a jpeg")
    assert "cannot decode" in _bad(tmp_path)


def test_class_count_and_mismatched_splits_are_one_line(tmp_path):
    src, _ = _make_folder(tmp_path / "src", CLASSES[:4])
    assert "found 4 classes" in _bad(tmp_path)
    (src / "train" / "extra").mkdir()
    Image.fromarray(_image(2)).save(src / "train" / "extra" / "a.png")
    assert "train and test" in _bad(tmp_path) and "different classes" in _bad(tmp_path)


def test_missing_source_and_existing_output_are_one_line(tmp_path):
    assert "does not exist" in _bad(tmp_path)
    src, _ = _make_folder(tmp_path / "src")
    assert _run(src, tmp_path / "data").returncode == 0
    before = (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").read_bytes()
    out = _run(src, tmp_path / "data")
    assert out.returncode == 2 and "already exists" in out.stderr
    assert (tmp_path / "data" / "cifar-10-batches-py" / "test_batch").read_bytes() == before

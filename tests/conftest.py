"""Shared fixtures: small real data sets built from ../shared/data, tiny CIFAR-format files,
untrained teacher checkpoints built once per session, scripts/benchmark.py as a module
(helpers.py has the rest of the scaffolding of the method tests)."""
import importlib.util
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))
pytest.register_assert_rewrite("helpers")

torch.set_num_threads(1)


def _read_idx(path):
    with open(path, "rb") as f:
        magic, = struct.unpack(">i", f.read(4))
        ndim = magic & 0xFF
        dims = struct.unpack(">" + "i" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(dims)


def _write_idx(path, array):
    magic = 0x0800 | array.ndim
    with open(path, "wb") as f:
        f.write(struct.pack(">i", magic))
        f.write(struct.pack(">" + "i" * array.ndim, *array.shape))
        f.write(np.ascontiguousarray(array, dtype=np.uint8).tobytes())


@pytest.fixture(scope="session")
def mnist_small(tmp_path_factory):
    """A data folder with the first 2,000 training and 500 test images of the real MNIST."""
    return mnist_subset(tmp_path_factory, "mnist_small", 2000, 500)


def mnist_subset(tmp_path_factory, name, n_train, n_test):
    """A data folder with the first ``n_train`` training and ``n_test`` test images of the real
    MNIST (skipped where ../shared has none)."""
    src = SHARED_DATA / "MNIST" / "raw"
    if not src.is_dir():
        pytest.skip(f"real MNIST not found in {src}")
    root = tmp_path_factory.mktemp(name)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            file = f"{prefix}-{kind}"
            _write_idx(raw / file, _read_idx(src / file)[:n])
    return root


def write_cifar100(root, n_train=320, n_test=160, seed=0, size=32):
    """A CIFAR-100 in torchvision's exact pickle layout with learnable synthetic images:
    each class has its own mean colour pattern plus noise."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    patterns = rng.integers(0, 256, size=(100, 3 * size * size))
    for name, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 100, size=n)
        noise = rng.normal(0, 30, size=(n, 3 * size * size))
        data = np.clip(patterns[labels] + noise, 0, 255).astype(np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"fine_labels": labels.tolist(),
                         b"coarse_labels": (labels // 5).tolist(),
                         b"filenames": [f"{i}.png".encode() for i in range(n)]}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"s{i}".encode() for i in range(20)]}, f)
    return Path(root)


@pytest.fixture(scope="session")
def cifar100_small(tmp_path_factory):
    return write_cifar100(tmp_path_factory.mktemp("cifar100_small"))


@pytest.fixture(scope="session")
def cifar100_tiny(tmp_path_factory):
    """72 training images (a batch of 64, then a smaller one of 8, which must train too) and
    24 test images: the one-epoch run of every method on each teacher/student pair
    (``helpers.PAIRS``), where the networks' compute dominates the suite's time."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100_tiny"), n_train=72, n_test=24)


@pytest.fixture(scope="session")
def cifar100_micro(tmp_path_factory):
    """10 training images (one batch) and 10 test images."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100_micro"), n_train=10, n_test=10)


@pytest.fixture
def pair_data(request, cifar100_tiny, cifar100_micro):
    """The data of a test's one-epoch run on its ``teacher, student`` pair: ``cifar100_tiny``
    for the first pair of ``helpers.PAIRS`` (a full and a partial batch), ``cifar100_micro``
    for the others, whose run checks that the method fits those networks, which one batch of
    10 shows as well as 72 images (and costs a seventh of their compute)."""
    from helpers import PAIRS
    params = getattr(getattr(request.node, "callspec", None), "params", {})
    pair = (params.get("teacher"), params.get("student"))
    return cifar100_tiny if pair == PAIRS[0] else cifar100_micro


@pytest.fixture(scope="session")
def teacher_ckpt(tmp_path_factory):
    """``teacher_ckpt(name)``: the path of an untrained 100-class teacher checkpoint with
    calibrated BatchNorm statistics (``helpers.save_teacher``), built once per name per session.
    Tests only read it."""
    from helpers import save_teacher  # imports the toolbox: only where a teacher is wanted
    folder = tmp_path_factory.mktemp("teachers")

    def get(name):
        path = folder / f"{name}.pth"
        if not path.exists():
            save_teacher(name, path)
        return path
    return get


@pytest.fixture(scope="session")
def bench():
    """scripts/benchmark.py imported as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location("benchmark_script",
                                                  REPO / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- tests that read what the whole session wrote -----------------------------------------
def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other test of the session (it "
                                       "reads what they wrote, e.g. every run folder)")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``last`` move to the end, in their order (the sort is stable)."""
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)

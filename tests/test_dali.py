"""DALI pipelines (dataset/dali.py) on the CPU, over real CIFAR-10 JPEGs."""
import collections
import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.folder import (build_folder_loaders, extract_image_archive,  # noqa: E402
                            scan_folder_dataset)
from helper.core.errors import UserError  # noqa: E402

torch.set_num_threads(1)
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "cat")
PER_CLASS = 50
N = len(CLASSES) * PER_CLASS


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    return extract_image_archive(ARCHIVE, tmp_path_factory.mktemp("cifar10_jpeg_dali"),
                                 per_class=PER_CLASS, classes=CLASSES, splits=("train", "test"))


@pytest.fixture(scope="module")
def dali():
    return pytest.importorskip("nvidia.dali")


def loaders(root, batch_size=32, **kwargs):
    kwargs.setdefault("num_workers", 1)
    return build_folder_loaders("folder", root, batch_size, "cpu", dali="cpu", **kwargs)


def epoch(loader, number=0):
    loader.set_epoch(number)
    batches = list(loader)
    assert len(batches) == len(loader)
    return batches, torch.cat([b["index"] for b in batches]).tolist()


def file_labels(root):
    """Class of every sample, from its folder name (independent of the loaders)."""
    train, val = scan_folder_dataset("folder", root)
    return ([CLASSES.index(Path(p).parent.name) for p, _ in train.samples],
            [CLASSES.index(Path(p).parent.name) for p, _ in val.samples])


def test_one_process_every_sample_once(dali, jpeg_root):
    train, val, info = loaders(jpeg_root, seed=1)  # 32 does not divide 100
    assert (info["train_size"], info["val_size"], info["num_classes"]) == (N, N, 2)
    labels = dict(zip(("train", "val"), file_labels(jpeg_root)))
    orders = []
    for name, loader in (("train", train), ("val", val)):
        assert (loader.dataset_size, loader.num_samples, len(loader)) == (N, N, 4)
        for number in (0, 1, 2):
            batches, index = epoch(loader, number)
            assert sorted(index) == list(range(N))
            assert [len(b["index"]) for b in batches] == [32, 32, 32, 4]
            targets = torch.cat([b["targets"] for b in batches]).tolist()
            assert collections.Counter(targets) == {0: PER_CLASS, 1: PER_CLASS}
            assert targets == [labels[name][i] for i in index]
            for b in batches:
                assert b["images"].shape == (len(b["index"]), 3, 224, 224)
                assert b["images"].dtype == torch.float32 and b["images"].device.type == "cpu"
                assert b["targets"].dtype == b["index"].dtype == torch.int64
            if name == "train":
                orders.append(index)
    assert orders[0] != orders[1]  # shuffled anew each epoch


def test_drop_last(dali, jpeg_root):
    train, val, _ = loaders(jpeg_root, drop_last=True)
    batches, index = epoch(train)
    assert [len(b["index"]) for b in batches] == [32, 32, 32] and len(set(index)) == 96
    assert sorted(epoch(val)[1]) == list(range(N))


def test_eval_pipeline_matches_torchvision(dali, jpeg_root):
    """Resize(256) + CenterCrop(224) + ImageNet normalisation, sample by sample."""
    _, val_tv, _ = build_folder_loaders("folder", jpeg_root, 25, "cpu", num_workers=0)
    _, val_dali, _ = loaders(jpeg_root, batch_size=25)
    reference = {i: im for b in val_tv for i, im in zip(b["index"].tolist(), b["images"])}
    images = {i: im for b in val_dali for i, im in zip(b["index"].tolist(), b["images"])}
    assert sorted(images) == sorted(reference) == list(range(N))
    a = torch.stack([reference[i] for i in range(N)])
    b = torch.stack([images[i] for i in range(N)])
    # Both decode with libjpeg-turbo (integer IDCT, bit-exact in its C and SIMD paths) and round
    # the resized image to uint8; the two bilinear resizes (PIL's fixed point, DALI's float) may
    # round a pixel to neighbouring levels, 1/255/std = 0.0175 apart (1 level seen, also with
    # libjpeg-turbo's SIMD forced off). Allowed, in levels: 2.9 per pixel, 0.57 per image and
    # channel mean, 0.29 per channel mean (0.07 and 0.05 seen): room for a rounding of either
    # side to move by a level, not for a shifted or rescaled image.
    assert (a - b).abs().max() < 0.05
    assert (a.mean((2, 3)) - b.mean((2, 3))).abs().max() < 0.01   # per image and channel
    assert (a.mean((0, 2, 3)) - b.mean((0, 2, 3))).abs().max() < 0.005


def test_train_pipeline_augments(dali, jpeg_root):
    train, _, _ = loaders(jpeg_root, batch_size=50, seed=4)
    first = {i: im for b in epoch(train, 0)[0] for i, im in zip(b["index"].tolist(), b["images"])}
    second = {i: im for b in epoch(train, 1)[0] for i, im in zip(b["index"].tolist(), b["images"])}
    differ = sum(not torch.equal(first[i], second[i]) for i in range(N))
    assert differ > N * 0.9  # new crops and flips every epoch (two draws rarely coincide)
    stacked = torch.stack(list(first.values()))
    # normalised, not 0..255: values lie in [-2.1, 2.7], so |mean| < 1.5 only fails when the
    # normalisation is missing or wrong (a bound on the range, not on rounding)
    assert torch.isfinite(stacked).all() and abs(stacked.mean().item()) < 1.5


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_cover_every_sample(dali, jpeg_root, world_size):
    """Pipelines with shard_id 0..world_size-1 in one process, no process group."""
    ranks = [loaders(jpeg_root, batch_size=16, seed=2, rank=r, world_size=world_size)
             for r in range(world_size)]
    per_rank = math.ceil(N / world_size)
    for number in (0, 1):  # DALI moves the training shards between epochs
        val_seen, train_seen = [], []
        for rank, (train, val, _) in enumerate(ranks):
            _, index = epoch(val, number)
            begin, end = (rank * N) // world_size, ((rank + 1) * N) // world_size
            assert len(index) == val.num_samples == end - begin
            val_seen += index
            _, index = epoch(train, number)
            assert len(index) == train.num_samples == per_rank  # same steps on every rank
            assert len(train) == math.ceil(per_rank / 16)
            train_seen += index
        assert sorted(val_seen) == list(range(N))  # each validation sample exactly once
        assert set(train_seen) == set(range(N))
        assert len(train_seen) == per_rank * world_size  # padded as DistributedSampler
        assert len(train_seen) - len(set(train_seen)) == per_rank * world_size - N


def test_epoch_left_early_then_full_epoch(dali, jpeg_root):
    _, val, _ = loaders(jpeg_root, batch_size=16)
    it = iter(val)
    next(it)
    next(it)
    del it
    _, index = epoch(val)
    assert index == list(range(N))


def test_dali_gpu_needs_cuda(dali, jpeg_root):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(UserError, match=r"--dali gpu needs CUDA; use --dali cpu"):
        build_folder_loaders("folder", jpeg_root, 8, "cpu", dali="gpu")

"""Folder data sets through torchvision's DataLoader (dataset/folder.py), on real CIFAR-10 JPEGs."""
import collections
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dataset.folder import (IMAGENET_MEAN, IMAGENET_STD, build_folder_loaders,  # noqa: E402
                            extract_image_archive, scan_folder_dataset)
from helper.core.errors import UserError  # noqa: E402

torch.set_num_threads(1)
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "cat")
PER_CLASS = 50
N = len(CLASSES) * PER_CLASS


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    """cifar10-jpeg/{train,test}/{airplane,cat}/ with the first 50 real JPEGs of each."""
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    return extract_image_archive(ARCHIVE, tmp_path_factory.mktemp("cifar10_jpeg"),
                                 per_class=PER_CLASS, classes=CLASSES,
                                 splits=("train", "test"))


def run_epoch(loader, epoch=0):
    loader.set_epoch(epoch)
    batches = list(loader)
    index = torch.cat([b["index"] for b in batches])
    return batches, index, torch.cat([b["targets"] for b in batches])


def path_label(dataset, index):
    """The class of a sample from its file's folder name, independent of the loader."""
    return CLASSES.index(dataset.samples[index][0].split("/")[-2])


def test_counts_labels_shapes(jpeg_root):
    train, val, info = build_folder_loaders("folder", jpeg_root, 32, "cpu", seed=3, num_workers=0)
    assert info == {"num_classes": 2, "input_size": (3, 224, 224), "train_size": N, "val_size": N}
    assert val.dataset.root.endswith("test")  # 'folder' takes test/ when there is no val/
    for loader in (train, val):
        assert (loader.dataset_size, loader.num_samples, len(loader)) == (N, N, math.ceil(N / 32))
        for epoch in (0, 1):
            batches, index, targets = run_epoch(loader, epoch)
            assert len(batches) == len(loader)
            assert [len(b["index"]) for b in batches] == [32, 32, 32, 4]
            assert sorted(index.tolist()) == list(range(N))  # every sample once
            assert collections.Counter(targets.tolist()) == {0: PER_CLASS, 1: PER_CLASS}
            assert targets.tolist() == [path_label(loader.dataset, i) for i in index.tolist()]
            for b in batches:
                assert b["images"].shape == (len(b["index"]), 3, 224, 224)
                assert b["images"].dtype == torch.float32
                assert b["targets"].dtype == b["index"].dtype == torch.int64
    assert run_epoch(val)[1].tolist() == list(range(N))  # validation keeps the folder order


def test_drop_last(jpeg_root):
    train, val, _ = build_folder_loaders("folder", jpeg_root, 32, "cpu", num_workers=0,
                                         drop_last=True)
    batches, index, _ = run_epoch(train)
    assert len(batches) == len(train) == 3 and len(set(index.tolist())) == 96
    assert len(run_epoch(val)[1]) == N  # validation keeps every sample


def test_eval_images_match_torchvision(jpeg_root):
    _, val, _ = build_folder_loaders("folder", jpeg_root, 8, "cpu", num_workers=0)
    batch = next(iter(val))
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    for image, index in zip(batch["images"], batch["index"].tolist()):
        with Image.open(val.dataset.samples[index][0]) as im:
            expected = reference(im.convert("RGB"))
        assert torch.equal(image, expected)


@pytest.mark.parametrize("world_size", [2, 3])
def test_validation_shards_cover_each_sample_once(jpeg_root, world_size):
    seen = []
    for rank in range(world_size):
        _, val, _ = build_folder_loaders("folder", jpeg_root, 16, "cpu", rank=rank,
                                         world_size=world_size, num_workers=0)
        batches, index, targets = run_epoch(val)
        assert len(index) == val.num_samples == len(range(rank, N, world_size))
        assert len(batches) == len(val)
        assert targets.tolist() == [path_label(val.dataset, i) for i in index.tolist()]
        seen += index.tolist()
    assert sorted(seen) == list(range(N))


def test_training_shards_are_padded_like_distributed_sampler(jpeg_root):
    world_size, per_rank = 3, math.ceil(N / 3)
    seen = []
    for rank in range(world_size):
        train, _, _ = build_folder_loaders("folder", jpeg_root, 16, "cpu", seed=5, rank=rank,
                                           world_size=world_size, num_workers=0)
        index = train.sampler.plan(epoch=2)[0]
        sampler = torch.utils.data.DistributedSampler(range(N), num_replicas=world_size,
                                                      rank=rank, shuffle=True, seed=5 * 100003)
        sampler.set_epoch(2)
        assert index.tolist() == list(sampler)  # same order as torch's DistributedSampler
        assert len(index) == train.num_samples == per_rank
        assert len(train) == math.ceil(per_rank / 16)
        seen += index.tolist()
    assert set(seen) == set(range(N)) and len(seen) == world_size * per_rank


def test_epochs_reproducible_from_seed_and_epoch(jpeg_root):
    def first_batches(num_workers, epochs, seed=7, n=2):
        train, _, _ = build_folder_loaders("folder", jpeg_root, 16, "cpu", seed=seed,
                                           num_workers=num_workers)
        out = None
        for epoch in epochs:  # earlier epochs run to their end (persistent workers go on)
            train.set_epoch(epoch)
            out = [b for _, b in zip(range(n), train)] if epoch == epochs[-1] else list(train)
        return out

    rng_before = torch.get_rng_state()
    direct = first_batches(0, [1])
    assert torch.equal(torch.get_rng_state(), rng_before)  # the main process RNG is untouched
    resumed = first_batches(2, [0, 1])  # two persistent workers, epoch 0 first
    for a, b in zip(direct, resumed):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["images"], b["images"])
    other_epoch = first_batches(0, [2])
    other_seed = first_batches(0, [1], seed=8)
    for other in (other_epoch, other_seed):
        assert not torch.equal(direct[0]["index"], other[0]["index"])
    # the same sample gets different crops in different epochs
    train, _, _ = build_folder_loaders("folder", jpeg_root, 16, "cpu", seed=7, num_workers=0)
    a = train.dataset[(0, 11)][0]
    b = train.dataset[(0, 12)][0]
    assert torch.equal(a, train.dataset[(0, 11)][0]) and not torch.equal(a, b)


def _copy_layout(src_root, dest, splits):
    """A small ImageFolder with the given split names, from the extracted JPEGs."""
    for split_src, split_dest in splits.items():
        for cls in CLASSES:
            target = dest / split_dest / cls
            target.mkdir(parents=True)
            for path in sorted((src_root / split_src / cls).iterdir())[:3]:
                shutil.copy(path, target / path.name)
    return dest


def test_imagenet_and_cub200_layouts(jpeg_root, tmp_path):
    root = _copy_layout(jpeg_root, tmp_path / "data" / "imagenet", {"train": "train", "test": "val"})
    train, val, info = build_folder_loaders("ImageNet", tmp_path / "data", 4, "cpu", num_workers=0)
    assert (info["train_size"], info["val_size"]) == (6, 6)
    assert val.dataset.root == str(root / "val")
    cub = _copy_layout(jpeg_root, tmp_path / "cub", {"train": "train", "test": "valid"})
    _, val, info = build_folder_loaders("cub200", cub, 4, "cpu", num_workers=0)
    assert val.dataset.root == str(cub / "valid") and info["num_classes"] == 2


def test_user_errors(jpeg_root, tmp_path):
    def fails(match, *args, **kwargs):
        with pytest.raises(UserError, match=match):
            build_folder_loaders(*args, **kwargs)

    fails("does not exist", "imagenet", tmp_path / "nowhere", 8, "cpu")
    fails(r"no train/ folder.*train/<class>/<images> and val/ or valid/",
          "imagenet", tmp_path, 8, "cpu")
    only_train = _copy_layout(jpeg_root, tmp_path / "only_train", {"train": "train"})
    fails(r"has no valid/ or val/ folder", "cub200", only_train, 8, "cpu")
    fails("unknown folder data set", "places365", jpeg_root, 8, "cpu")
    fails("--dali must be cpu or gpu", "folder", jpeg_root, 8, "cpu", dali="tpu")
    fails("--batch_size", "folder", jpeg_root, 0, "cpu")

    empty_class = _copy_layout(jpeg_root, tmp_path / "empty_class", {"train": "train", "test": "val"})
    (empty_class / "train" / "dog").mkdir()
    (empty_class / "val" / "dog").mkdir()
    fails(r"no valid file for the classes dog", "folder", empty_class, 8, "cpu")
    no_classes = tmp_path / "no_classes"
    (no_classes / "train").mkdir(parents=True)
    (no_classes / "val").mkdir()
    fails(r"class folder", "folder", no_classes, 8, "cpu")
    mismatch = _copy_layout(jpeg_root, tmp_path / "mismatch", {"train": "train", "test": "val"})
    shutil.rmtree(mismatch / "val" / "cat")
    fails(r"differ.*missing: cat", "folder", mismatch, 8, "cpu")
    tiny = _copy_layout(jpeg_root, tmp_path / "tiny", {"train": "train", "test": "val"})
    fails("fewer than the 8 processes", "folder", tiny, 2, "cpu", rank=0, world_size=8)


def test_scan_matches_imagefolder(jpeg_root):
    from torchvision.datasets import ImageFolder
    train, val = scan_folder_dataset("folder", jpeg_root)
    assert train.samples == ImageFolder(str(jpeg_root / "train")).samples
    assert val.samples == ImageFolder(str(jpeg_root / "test")).samples

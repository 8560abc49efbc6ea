"""The loader interface (dataset/loader.py): the sharding arithmetic all loaders share, and
``unaugmented()`` of every loader class (MGD's matching pass)."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms

from dataset import RandomCropFlip, TensorLoader, normalize
from dataset.crd import ContrastLoader
from dataset.folder import (IMAGENET_MEAN, IMAGENET_STD, build_folder_loaders,
                            extract_image_archive)
from dataset.loader import Loader, batches_per_epoch, shard

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "cat")
PER_CLASS = 5
N = len(CLASSES) * PER_CLASS


def test_shard_by_hand_n10_three_ranks():
    def positions(**kw):
        return [shard(10, r, 3, **kw)[0].tolist() for r in range(3)]

    assert positions(pad=True) == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8, 11]]
    assert positions(pad=False) == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert positions(pad=True, contiguous=True) == [[0, 1, 2, 2], [3, 4, 5, 5], [6, 7, 8, 9]]
    assert positions(pad=False, contiguous=True) == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    assert shard(10, 0, 3, pad=True)[1] == 12 and shard(10, 0, 3, pad=False)[1] == 10
    assert shard(10, 2, 3, pad=True, contiguous=True)[1] == 12
    assert shard(7, 0, 1, pad=True)[0].tolist() == list(range(7))
    assert shard(2, 2, 3, pad=False)[0].tolist() == []  # fewer samples than ranks
    with pytest.raises(ValueError):
        shard(10, 3, 3, pad=True)


def test_strided_shard_is_distributed_sampler():
    for n, world_size in ((10, 3), (7, 4), (12, 4), (5, 8)):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
        for rank in range(world_size):
            sampler = torch.utils.data.DistributedSampler(order.tolist(), num_replicas=world_size,
                                                          rank=rank, shuffle=False)
            positions, _ = shard(n, rank, world_size, pad=True)
            assert order[positions % n].tolist() == [order[i].item() for i in sampler]


def test_batches_per_epoch():
    assert [batches_per_epoch(10, 4, False), batches_per_epoch(10, 4, True)] == [3, 2]
    assert [batches_per_epoch(8, 4, False), batches_per_epoch(8, 4, True)] == [2, 2]
    assert batches_per_epoch(3, 4, True) == 0


def _tensor_loader(rank=0, world_size=1, n=10, batch_size=4):
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    return TensorLoader(images, torch.arange(n) % 3, batch_size, "cpu", (0.5, 0.4, 0.3),
                        (0.2, 0.25, 0.3), shuffle=True, transform=RandomCropFlip(2, True),
                        rank=rank, world_size=world_size), images


def _indices(batches):
    return torch.cat([b["index"] for b in batches]).tolist()


@pytest.mark.parametrize("build", ["build_loaders", "build_folder_loaders"])
@pytest.mark.parametrize("batch_size,rank,world_size,message", [
    (0, 0, 1, "--batch_size must be a positive integer, got 0"),
    (True, 0, 1, "--batch_size must be a positive integer, got True"),
    (8.0, 0, 1, "--batch_size must be a positive integer, got 8.0"),
    (8, 2, 2, "rank 2 is not in 0..world_size-1 with world_size 2; check --rank and "
              "--world-size"),
    (8, -1, 2, "rank -1 is not in 0..world_size-1 with world_size 2"),
    (8, 0, 0, "rank 0 is not in 0..world_size-1 with world_size 0"),
])
def test_batch_size_and_rank_are_checked_alike(tmp_path, build, batch_size, rank, world_size,
                                               message):
    """The in-memory and the folder data sets refuse a bad batch size or rank in the same
    words (dataset.loader.check_batch_and_rank), before any data is read."""
    import dataset
    from helper.core.errors import UserError
    name = "cifar100" if build == "build_loaders" else "folder"
    with pytest.raises(UserError) as e:
        getattr(dataset, build)(name, tmp_path / "nothing", batch_size, "cpu", rank=rank,
                                world_size=world_size)
    assert str(e.value).startswith(message)
    assert not (tmp_path / "nothing").exists()


def test_tensor_loader_unaugmented_every_sample_once_in_order():
    loader, images = _tensor_loader()
    assert isinstance(loader, Loader)
    batches = list(loader.unaugmented())
    assert [len(b["index"]) for b in batches] == [4, 4, 2] and _indices(batches) == list(range(10))
    assert torch.equal(torch.cat([b["images"] for b in batches]),
                       normalize(images, loader.mean, loader.std))
    assert torch.cat([b["targets"] for b in batches]).tolist() == [i % 3 for i in range(10)]
    for rank, expected in enumerate([[0, 3, 6, 9], [1, 4, 7, 0], [2, 5, 8, 1]]):
        assert _indices(_tensor_loader(rank, 3)[0].unaugmented()) == expected


def test_contrast_loader_passes_unaugmented_on():
    inner, _ = _tensor_loader()
    wrapped = ContrastLoader(inner, k=2)
    assert isinstance(wrapped, Loader)
    for a, b in zip(wrapped.unaugmented(), inner.unaugmented()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    return extract_image_archive(ARCHIVE, tmp_path_factory.mktemp("cifar10_jpeg_loader"),
                                 per_class=PER_CLASS, classes=CLASSES, splits=("train", "test"))


def _eval_reference(files):
    """``files`` through Resize(256), CenterCrop(224), ToTensor, Normalize."""
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224),
                                    transforms.ToTensor(),
                                    transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    out = []
    for path in files:
        with Image.open(path) as im:
            out.append(reference(im.convert("RGB")))
    return torch.stack(out)


def test_folder_loader_unaugmented_is_the_eval_transform_in_order(jpeg_root):
    train, _, _ = build_folder_loaders("folder", jpeg_root, 4, "cpu", seed=3, num_workers=0)
    assert isinstance(train, Loader)
    train.set_epoch(1)
    epoch = _indices(train)
    batches = list(train.unaugmented())
    assert [len(b["index"]) for b in batches] == [4, 4, 2] and _indices(batches) == list(range(N))
    expected = _eval_reference(path for path, _ in train.dataset.samples)
    assert torch.equal(torch.cat([b["images"] for b in batches]), expected)
    assert torch.cat([b["targets"] for b in batches]).tolist() == [0] * PER_CLASS + [1] * PER_CLASS
    assert epoch == _indices(train)  # the training epoch is unchanged
    train3, _, _ = build_folder_loaders("folder", jpeg_root, 4, "cpu", rank=2, world_size=3,
                                        num_workers=1)
    assert _indices(train3.unaugmented()) == [2, 5, 8, 1]


def test_dali_loader_unaugmented_is_the_eval_pipeline_in_order(jpeg_root):
    pytest.importorskip("nvidia.dali")
    kw = dict(dali="cpu", num_workers=1)
    train, _, _ = build_folder_loaders("folder", jpeg_root, 4, "cpu", seed=3, **kw)
    assert isinstance(train, Loader)
    batches = list(train.unaugmented())
    assert [len(b["index"]) for b in batches] == [4, 4, 2] and _indices(batches) == list(range(N))
    images = torch.cat([b["images"] for b in batches])
    # Same decoder (libjpeg-turbo), resizes that may round a pixel to the neighbouring uint8
    # level: 1/255/std = 0.0175 apart (1 level seen); 0.05 allows 2.9 levels (tests/test_dali.py)
    assert (images - _eval_reference(train.files)).abs().max() < 0.05
    assert torch.cat([b["targets"] for b in batches]).tolist() == [0] * PER_CLASS + [1] * PER_CLASS
    next(iter(train.unaugmented()))  # left early: the next pass still starts at the start
    again = list(train.unaugmented())
    assert _indices(again) == list(range(N))
    assert torch.equal(torch.cat([b["images"] for b in again]), images)
    assert sorted(_indices(train)) == list(range(N))  # training is untouched
    for rank in range(3):
        train3, _, _ = build_folder_loaders("folder", jpeg_root, 4, "cpu", rank=rank,
                                            world_size=3, **kw)
        expected = shard(N, rank, 3, pad=True, contiguous=True)[0].tolist()
        assert _indices(train3.unaugmented()) == expected and len(expected) == train3.num_samples

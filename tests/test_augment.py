"""Augmentation presets (issue 17, part 2; dataset/augment.py): --aug, --random_erasing,
--random_rotation, --mixup, --cutmix, --input_size on the in-memory, folder and DALI paths."""
import math
import re
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from torchvision import transforms
from torchvision.transforms import v2

import train_teacher
from conftest import SHARED_DATA
from dataset import AugmentConfig, build_loaders, cifar
from dataset.augment import MixLoader, SampleAugment, dominant_targets, mean_fill
from dataset.folder import build_folder_loaders, extract_image_archive
from dataset.tensor_loader import normalize
from distillers import MethodConfig, RunInfo
from helper.core.errors import UserError
from helpers import one_epoch, read_summary
from models import create_model
from test_recipes import _fails

PRESETS = [dict(aug="autoaugment"), dict(aug="randaugment"), dict(aug="trivialaugment"),
           dict(random_rotation=15.0), dict(random_erasing=0.5),
           dict(aug="autoaugment", random_rotation=15.0, random_erasing=0.25)]


def _epoch(loader, epoch):
    loader.set_epoch(epoch)
    return list(loader)


def _cat(batches, key="images"):
    return torch.cat([b[key] for b in batches])


# --- in memory (CIFAR tensors) ------------------------------------------------------------------

def test_default_config_keeps_the_standard_path(cifar100_tiny):
    train, _, _ = build_loaders("cifar100", cifar100_tiny, 32, "cpu", seed=3)
    plain, _, _ = build_loaders("cifar100", cifar100_tiny, 32, "cpu", seed=3,
                                augment=AugmentConfig())
    assert plain.augment is None and not isinstance(plain, MixLoader)
    for a, b in zip(_epoch(train, 2), _epoch(plain, 2)):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])


def _name(preset):
    return "+".join(f"{k}={v}" for k, v in preset.items())


@pytest.mark.parametrize("preset", PRESETS, ids=_name)
def test_preset_is_each_samples_own_seeded_transform(preset, cifar100_tiny):
    """Every image is crop+flip (the standard draws, unchanged), then the preset's v2
    transforms run with the CPU generator seeded with that sample's seed, then normalisation;
    the same for any batch size; a function of (seed, epoch); the global RNG untouched."""
    config = AugmentConfig(**preset)
    train, _, _ = build_loaders("cifar100", cifar100_tiny, 32, "cpu", seed=3, augment=config)
    other, _, _ = build_loaders("cifar100", cifar100_tiny, 13, "cpu", seed=3, augment=config)
    state = torch.get_rng_state()
    images = _cat(_epoch(train, 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(images, _cat(_epoch(other, 1)))          # any batch size
    assert torch.equal(images, _cat(_epoch(train, 1)))          # epoch 1 again
    assert not torch.equal(images, _cat(_epoch(train, 2)))      # another epoch

    indices, params, seeds = train._epoch_draws(1)
    assert torch.equal(params, train.epoch_plan(1)[1])
    composed = v2.Compose([
        *([v2.RandomRotation(config.random_rotation)] if config.random_rotation else []),
        *({"autoaugment": [v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10)],
           "randaugment": [v2.RandAugment()], "trivialaugment": [v2.TrivialAugmentWide()]}
          .get(config.aug, [])),
        *([v2.RandomErasing(config.random_erasing, value=[129, 124, 112])]
          if config.random_erasing else [])])
    crops = train.transform.apply(train.images[indices], params)
    by_hand = []
    for image, seed in zip(crops, seeds.tolist()):
        torch.manual_seed(seed)
        by_hand.append(composed(image))
    torch.set_rng_state(state)
    mean = torch.tensor(cifar.MEAN).view(1, 3, 1, 1)
    std = torch.tensor(cifar.STD).view(1, 3, 1, 1)
    assert torch.equal(images, normalize(torch.stack(by_hand), mean, std))


def test_random_erasing_fills_one_box_with_the_mean_colour(cifar100_tiny):
    standard, _, _ = build_loaders("cifar100", cifar100_tiny, 50, "cpu", seed=5)
    erased, _, _ = build_loaders("cifar100", cifar100_tiny, 50, "cpu", seed=5,
                                 augment=AugmentConfig(random_erasing=1.0))
    a, b = _cat(_epoch(standard, 0)), _cat(_epoch(erased, 0))
    assert mean_fill(cifar.MEAN) == (129, 124, 112)
    for x, y in zip(a, b):
        changed = (x != y).any(0)
        rows, cols = changed.any(1).nonzero()[:, 0], changed.any(0).nonzero()[:, 0]
        r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = y[:, r0:r1, c0:c1]
        assert box.abs().max() < 0.01                            # the mean colour, normalised
        area = (r1 - r0) * (c1 - c0) / 32 ** 2                   # scale 0.02..0.33 of the image
        assert 0.02 - 1e-6 <= area <= 0.33 + 0.07                # (+ rounding of the sides)
        outside = torch.ones_like(changed)
        outside[r0:r1, c0:c1] = False
        assert torch.equal(x[:, outside], y[:, outside])


def test_mnist_takes_the_presets_too(mnist_small):
    train, _, _ = build_loaders("mnist", mnist_small, 500, "cpu", seed=1,
                                augment=AugmentConfig(aug="trivialaugment", random_rotation=10))
    train.set_epoch(0)
    batch = next(iter(train))
    assert batch["images"].shape == (500, 1, 28, 28) and torch.isfinite(batch["images"]).all()


# --- MixUp / CutMix -----------------------------------------------------------------------------

def _mixed_up(out, x, partner, lam):
    return torch.allclose(out, lam * x + (1 - lam) * partner, atol=1e-5)


def _cut_mixed(out, x, partner, lam):
    """``out`` is ``x`` with a box of ``1 - lam`` of its pixels taken from ``partner``."""
    own, theirs = (out == x).all(0), (out == partner).all(0)
    pixels = (1 - lam) * out[0].numel()
    return bool((own | theirs).all()) and (~own).sum() <= pixels + 0.5 <= theirs.sum() + 1


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixing_by_hand(mixup, cutmix, cifar100_tiny):
    base, _, _ = build_loaders("cifar100", cifar100_tiny, 24, "cpu", seed=7)
    mixed, _, _ = build_loaders("cifar100", cifar100_tiny, 24, "cpu", seed=7,
                                augment=AugmentConfig(mixup=mixup, cutmix=cutmix))
    assert isinstance(mixed, MixLoader) and mixed.dataset_size == 72 and len(mixed) == 3
    kinds = []
    for epoch in (3, 4):
        for plain, batch in zip(_epoch(base, epoch), _epoch(mixed, epoch)):
            x, y = plain["images"], plain["targets"]
            out, soft = batch["images"], batch["soft_targets"]
            assert torch.equal(batch["index"], plain["index"])
            assert soft.shape == (24, 100) and torch.allclose(soft.sum(1), torch.ones(24))
            checks = {"mixup": [], "cutmix": []}
            for i in range(24):
                j = (i - 1) % 24                        # the partner: the batch rolled by one
                assert set(soft[i].nonzero()[:, 0].tolist()) <= {int(y[i]), int(y[j])}
                if y[i] == y[j]:
                    assert soft[i, y[i]] == 1 and batch["targets"][i] == y[i]
                    continue
                lam = soft[i, y[i]].item()
                assert batch["targets"][i] == (y[i] if lam >= 0.5 else y[j])
                checks["mixup"].append(_mixed_up(out[i], x[i], x[j], lam))
                checks["cutmix"].append(_cut_mixed(out[i], x[i], x[j], lam))
            kind = "cutmix" if not mixup else "mixup" if not cutmix else \
                "mixup" if all(checks["mixup"]) else "cutmix"
            assert all(checks[kind]), kind              # one kind per batch, on every sample
            kinds.append(kind)
    if mixup and cutmix:
        assert set(kinds) == {"mixup", "cutmix"}        # 6 batches, each kind at p = 0.5
    a, b = _epoch(mixed, 3), _epoch(mixed, 3)
    assert all(torch.equal(u["images"], v["images"]) and torch.equal(u["soft_targets"],
               v["soft_targets"]) for u, v in zip(a, b))


def test_dominant_targets():
    targets = torch.tensor([3, 5, 7])
    soft = torch.zeros(3, 10)
    soft[0, 3], soft[0, 7] = 0.6, 0.4        # own label dominates
    soft[1, 5], soft[1, 3] = 0.3, 0.7        # partner (sample 0) dominates
    soft[2, 7], soft[2, 5] = 0.5, 0.5        # a tie keeps its own
    assert dominant_targets(targets, soft).tolist() == [3, 3, 7]


def test_ce_term_takes_soft_targets_with_label_smoothing():
    torch.manual_seed(0)
    distiller = MethodConfig.create("vanilla", label_smoothing=0.1).build(
        create_model("mlp_800", 10), None, RunInfo(epochs=1))
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4])
    soft = torch.zeros(4, 10, dtype=torch.float64)
    for i in range(4):
        soft[i, y[i]] += 0.7
        soft[i, y[i - 1]] += 0.3
    logits, losses = distiller(x, y, soft_targets=soft.float())
    total = 0.0
    for row, p in zip(logits.double().tolist(), soft.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        q = [0.9 * pk + 0.1 / 10 for pk in p]
        total += -sum(qk * (v - log_z) for qk, v in zip(q, row))
    assert losses["cls"].item() == pytest.approx(total / 4, rel=1e-5)
    _, hard = distiller(x, y)
    assert hard["cls"].item() != pytest.approx(total / 4, rel=1e-3)
    losses["cls"].backward()
    assert all(p.grad is not None for p in distiller.student.parameters())


# --- folder and DALI paths ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def jpeg_root(tmp_path_factory):
    archive = SHARED_DATA / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"{archive} not found")
    return extract_image_archive(archive, tmp_path_factory.mktemp("augment_jpeg"), per_class=12,
                                 classes=("airplane", "cat"), splits=("train", "test"))


@pytest.mark.parametrize("preset", PRESETS[:3] + PRESETS[5:], ids=lambda p: p.get("aug"))
def test_folder_presets_are_a_function_of_seed_and_epoch(preset, jpeg_root):
    config = AugmentConfig(input_size=48, **preset)
    a, val, info = build_folder_loaders("folder", jpeg_root, 8, "cpu", seed=2, num_workers=0,
                                        augment=config)
    b, _, _ = build_folder_loaders("folder", jpeg_root, 5, "cpu", seed=2, num_workers=0,
                                   augment=config)
    assert info["input_size"] == (3, 48, 48)
    first = _cat(_epoch(a, 1))
    assert first.shape == (24, 3, 48, 48)
    assert torch.equal(first, _cat(_epoch(b, 1)))                # fresh loader, other batch size
    assert not torch.equal(first, _cat(_epoch(a, 2)))
    plain, _, _ = build_folder_loaders("folder", jpeg_root, 8, "cpu", seed=2, num_workers=0,
                                       augment=AugmentConfig(input_size=48))
    assert not torch.equal(first, _cat(_epoch(plain, 1)))        # the preset does something


def test_folder_preset_same_with_workers(jpeg_root):
    config = AugmentConfig(aug="trivialaugment", random_erasing=0.5)
    a, _, _ = build_folder_loaders("folder", jpeg_root, 8, "cpu", seed=4, num_workers=0,
                                   augment=config)
    b, _, _ = build_folder_loaders("folder", jpeg_root, 8, "cpu", seed=4, num_workers=2,
                                   augment=config)
    assert torch.equal(_cat(_epoch(a, 3)), _cat(_epoch(b, 3)))


def test_input_size_sets_the_evaluation_resize_and_crop(jpeg_root):
    _, val, info = build_folder_loaders("folder", jpeg_root, 64, "cpu", num_workers=0,
                                        augment=AugmentConfig(input_size=64))
    batch = next(iter(val))
    path = val.dataset.samples[int(batch["index"][0])][0]
    by_hand = transforms.Compose([transforms.Resize(73), transforms.CenterCrop(64),
                                  transforms.PILToTensor()])(Image.open(path).convert("RGB"))
    assert torch.equal(batch["images"][0], normalize(by_hand[None], val.mean, val.std)[0])
    unaugmented = next(iter(val.unaugmented()))
    assert unaugmented["images"].shape[-2:] == (64, 64)


def test_dali_presets_and_input_size(jpeg_root):
    pytest.importorskip("nvidia.dali")
    config = AugmentConfig(aug="autoaugment", random_rotation=15, input_size=40)
    train, val, info = build_folder_loaders("folder", jpeg_root, 8, "cpu", dali="cpu", seed=1,
                                            num_workers=1, augment=config)
    again, _, _ = build_folder_loaders("folder", jpeg_root, 8, "cpu", dali="cpu", seed=1,
                                       num_workers=1, augment=config)
    first = _epoch(train, 0)
    assert info["input_size"] == (3, 40, 40) and _cat(first).shape == (24, 3, 40, 40)
    assert sorted(_cat(first, "index").tolist()) == list(range(24))
    assert torch.equal(_cat(first), _cat(_epoch(again, 0)))      # reproducible from the start
    assert _cat(list(val)).shape == (24, 3, 40, 40)


# --- runs, resume, errors ------------------------------------------------------------------------

def test_one_epoch_kd_with_presets_and_mixing(teacher_ckpt, cifar100_tiny, tmp_path):
    run, summary = one_epoch("kd", teacher_ckpt("resnet14x4"), "resnet8x4", cifar100_tiny,
                             tmp_path, "--aug", "trivialaugment", "--random_erasing", "0.25",
                             "--mixup", "0.2", "--cutmix", "1.0")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert (config["aug"], config["mixup"], config["cutmix"], config["random_erasing"]) == \
        ("trivialaugment", 0.2, 1.0, 0.25)
    assert summary["args"]["aug"] == "trivialaugment"


def _teacher_run(data, save, *extra):
    train_teacher.main(["--model", "resnet8", "--dataset", "cifar100", "--data_folder", str(data),
                        "--save_folder", str(save), "--batch_size", "32", "--print_freq", "1000",
                        "--deterministic", "--lr_decay_epochs", "1", "--aug", "autoaugment",
                        "--random_erasing", "0.5", "--random_rotation", "15", "--mixup", "0.2",
                        *extra])
    return next((Path(save) / "teachers").iterdir())


def test_resume_with_a_preset_matches_the_uninterrupted_run(cifar100_tiny, tmp_path):
    full = _teacher_run(cifar100_tiny, tmp_path / "a", "--epochs", "2")
    _teacher_run(cifar100_tiny, tmp_path / "b", "--epochs", "1")
    cut = _teacher_run(cifar100_tiny, tmp_path / "b", "--epochs", "2", "--resume")
    a, b = (torch.load(r / "last.pth", weights_only=True) for r in (full, cut))
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert read_summary(full)["last_acc"] == read_summary(cut)["last_acc"]


@pytest.mark.parametrize("argv, fragments", [
    (["--aug", "cutout"], ["invalid choice", "'trivialaugment'"]),
    (["--random_erasing", "-0.1"], ["--random_erasing", "in [0, 1]"]),
    (["--random_erasing", "1.5"], ["--random_erasing", "in [0, 1]"]),
    (["--random_rotation", "-5"], ["--random_rotation", "in [0, 180]"]),
    (["--mixup", "-1"], ["--mixup", "0 or more"]),
    (["--cutmix", "nan"], ["--cutmix", "finite"]),
    (["--input_size", "64"], ["--input_size applies to the folder data sets", "cifar100"]),
    (["--input_size", "0", "--dataset", "folder"], ["--input_size", "1 or more"]),
    (["--dataset", "folder", "--dali", "cpu", "--random_erasing", "0.5"],
     ["--random_erasing is not offered with --dali"]),
])
def test_bad_augmentation_flags(argv, fragments, capsys, tmp_path):
    """One line, exit 2, no run folder (``_fails``, tests/test_recipes.py)."""
    _fails(train_teacher.main, ["--model", "resnet8", "--dataset", "cifar100", "--data_folder",
                                str(tmp_path / "none"), *argv], capsys, tmp_path, *fragments)


@pytest.mark.parametrize("config, dataset, fragment", [
    (AugmentConfig(aug="cutout"), "cifar100", "unknown --aug 'cutout'"),
    (AugmentConfig(random_erasing=2.0), "cifar100", "probability in [0, 1]"),
    (AugmentConfig(random_rotation=200.0), "cifar100", "at most 180"),
    (AugmentConfig(mixup=-0.5), "cifar100", "--mixup must be 0 or more"),
    (AugmentConfig(input_size=64), "mnist", "--input_size applies to the folder data sets"),
])
def test_build_loaders_checks_the_config(config, dataset, fragment, tmp_path):
    with pytest.raises(UserError, match=re.escape(fragment)):
        build_loaders(dataset, tmp_path, 8, "cpu", augment=config)


def test_mix_loader_needs_a_rate():
    with pytest.raises(ValueError):
        MixLoader(object(), 10)


def test_sample_augment_draws_one_seed_per_sample():
    g = torch.Generator().manual_seed(0)
    seeds = SampleAugment(AugmentConfig(aug="randaugment"), cifar.MEAN).draw(5, g)
    assert seeds.shape == (5,) and seeds.dtype == torch.int64 and len(set(seeds.tolist())) == 5

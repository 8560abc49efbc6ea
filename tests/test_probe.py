"""``--evaluate FILE --linear_probe DATASET`` (helper/run/probe.py): a linear classifier on a frozen
model's pooled features, on the real CIFAR-10 JPEGs of ../shared/data and on an in-memory data
set; models of another input shape are refused in one line."""
import json
import shutil
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from dataset.folder import extract_image_archive
from helper.run.probe import RECIPE, own_classes, train_linear
from models import create_model

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "frog", "ship")
PER_CLASS = 80


@pytest.fixture(scope="module")
def jpeg_subsets(tmp_path_factory):
    """Two disjoint ImageFolders of real CIFAR-10 JPEGs (4 classes): ``a`` (40 train and 10
    test images a class) trains the model, ``b`` (the next 40 train, 70 test a class) probes it."""
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    tmp = tmp_path_factory.mktemp("cifar10_probe")
    root = extract_image_archive(ARCHIVE, tmp / "raw", per_class=PER_CLASS, classes=CLASSES,
                                 splits=("train", "test"))
    parts = {"a": {"train": (0, 40), "test": (0, 10)}, "b": {"train": (40, 80), "test": (10, 80)}}
    for name, splits in parts.items():
        for split, (start, stop) in splits.items():
            for cls in CLASSES:
                dest = tmp / name / split / cls
                dest.mkdir(parents=True)
                for f in sorted((root / split / cls).iterdir())[start:stop]:
                    shutil.copy(f, dest / f.name)
    return tmp / "a", tmp / "b"


def _probe(main, checkpoint, *flags, record=None):
    """Run the probe; its JSON record (beside the checkpoint unless ``record`` says where)."""
    main(["--evaluate", str(checkpoint), *flags])
    dataset = flags[flags.index("--linear_probe") + 1]
    return json.loads(Path(record or f"{checkpoint}.probe_{dataset}.json").read_text())


def test_probe_of_a_cnn_trained_on_cifar10_jpegs_beats_chance(jpeg_subsets, tmp_path, capsys):
    a, b = jpeg_subsets
    save = tmp_path / "save"
    train_teacher.main(["--model", "resnet8", "--dataset", "folder", "--data_folder", str(a),
                        "--input_size", "32", "--num_workers", "0", "--epochs", "1",
                        "--batch_size", "32", "--save_folder", str(save), "--print_freq", "100"])
    best = save / "teachers" / "resnet8_vanilla_folder_trial_0" / "best.pth"
    capsys.readouterr()
    record = _probe(train_teacher.main, best, "--linear_probe", "folder", "--probe_data_folder",
                    str(b), "--input_size", "32", "--num_workers", "0")
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and line[0].startswith(f"linear probe {best}: resnet8 features (64-d)")
    probe = record["linear_probe"]
    assert record["dataset"] == "folder" and record["num_classes"] == 4
    assert (probe["train_images"], probe["test_images"], probe["feature_dim"]) == (160, 280, 64)
    assert probe["recipe"] == RECIPE and probe["input_size"] == [3, 32, 32]
    assert f"top-1 {probe['acc']:.2f}" in line[0]
    # 280 test images: chance is 25% (70 right); a binomial at 25% passes 35% with
    # probability 1e-4, so a probe above it has learned from the features
    assert probe["acc"] > 35, probe


def test_probe_on_an_in_memory_data_set_reads_the_class_count(cifar100_small, tmp_path):
    """A bare RepDistiller-style file ({'model': state_dict}: no class count, no data set)
    probed on CIFAR-format data held in memory: the class count comes from its classifier."""
    torch.manual_seed(0)
    path = tmp_path / "resnet8_cifar100_lr_0.05_decay_0.0005_trial_0" / "ckpt_epoch_240.pth"
    path.parent.mkdir()
    torch.save({"model": create_model("resnet8", num_classes=7).state_dict()}, path)
    assert own_classes(torch.load(path), path, "resnet8") == 7
    record = _probe(train_student.main, path, "--linear_probe", "cifar100",
                    "--probe_data_folder", str(cifar100_small), "--save_folder", str(tmp_path),
                    record=tmp_path / f"{path.parent.name}_{path.name}.probe_cifar100.json")
    assert record["model_classes"] == 7 and record["num_classes"] == 100
    assert record["linear_probe"]["train_images"] == 320


def test_models_of_another_input_shape_are_refused_in_one_line(jpeg_subsets, tmp_path, capsys):
    _, b = jpeg_subsets
    mlp = tmp_path / "mlp.pth"
    torch.save({"model": create_model("mlp_800", 10).state_dict(), "model_name": "mlp_800",
                "num_classes": 10, "dataset": "mnist"}, mlp)
    cnn = tmp_path / "cnn.pth"
    torch.save({"model": create_model("resnet8", 100).state_dict(), "model_name": "resnet8",
                "num_classes": 100, "dataset": "cifar100"}, cnn)
    for path, flags, says in (
            (mlp, ["--linear_probe", "cifar10", "--probe_data_folder", str(tmp_path / "none")],
             "mlp_800 was trained on mnist's 1x28x28 images and cifar10 gives 3x32x32"),
            (mlp, ["--linear_probe", "folder", "--probe_data_folder", str(b), "--input_size",
                   "28"], "no standard way turns 3-channel images into 1-channel ones"),
            (cnn, ["--linear_probe", "folder", "--probe_data_folder", str(b)],
             "resnet8 was trained on cifar100's 3x32x32 images and folder gives 3x224x224; "
             "pass --input_size 32")):
        with pytest.raises(SystemExit) as e:
            train_teacher.main(["--evaluate", str(path), *flags, "--num_workers", "0"])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    assert not list(tmp_path.glob("*.json"))


def test_linear_probe_needs_a_checkpoint(capsys):
    with pytest.raises(SystemExit) as e:
        train_student.main(["--linear_probe", "cifar10"])
    assert e.value.code == 2
    assert "--linear_probe probes a checkpoint: give --evaluate FILE" in capsys.readouterr().err


def test_the_probe_is_a_seeded_linear_classifier():
    """Separable features: the recipe's classifier fits them; the same seed, the same layer."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(50)
    x = torch.randn(200, 16, generator=g) * 0.1 + torch.eye(4, 16)[y] * 3
    short = {**RECIPE, "epochs": 5}
    one, two = (train_linear(x, y, 4, seed=3, device="cpu", recipe=short) for _ in range(2))
    assert torch.equal(one.weight, two.weight)
    assert (one(x).argmax(1) == y).all()

"""Random combinations of methods, models and flags: each run trains one small epoch or exits
with one clear line and code 2 -- never a traceback."""
import random

import pytest
import torch

import train_student
from conftest import _read_idx, _write_idx, SHARED_DATA, write_cifar100
from distillers import distiller_names
from models import create_model

MODELS = ["resnet8", "resnet14", "wrn_16_1", "vgg8", "ShuffleV2", "MobileNetV2", "mlp_800"]
FLAGS = [[], ["-c", "0.5"], ["-d", "0"], ["-d", "2"], ["-b", "0"], ["-b", "-1"], ["--kd_T", "0"],
         ["--kd_T", "2"], ["--batch_size", "0"], ["--batch_size", "7"], ["--learning_rate", "-1"],
         ["--lr_decay_epochs", "3,2"], ["--logit_stand"], ["--ctkd"], ["--amp"],
         ["--hint_layer", "9"], ["--nce_k", "100000"], ["--factor", "0"], ["--init_epochs", "0"],
         ["--jitter", "2"], ["--dali", "cpu"], ["--sync-bn"], ["--resume"], ["--model_t", "resnet8"],
         ["--pretrained", "missing.pth"]]
CASES = 60


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("fuzz"))


def make_data(root):
    """A 48-image CIFAR-100 and MNIST, and teacher checkpoints of every model for 100 and 10
    classes, in ``root``."""
    write_cifar100(root, n_train=48, n_test=16)
    src = SHARED_DATA / "MNIST" / "raw"
    if src.is_dir():
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", 48), ("t10k", 16)):
            for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
                _write_idx(raw / f"{prefix}-{kind}", _read_idx(src / f"{prefix}-{kind}")[:n])
    teachers = {}
    for name in MODELS:
        for classes in (100, 10):
            path = root / f"{name}_{classes}.pth"
            torch.save({"model": create_model(name, classes).state_dict(), "model_name": name,
                        "num_classes": classes}, path)
            teachers[name, classes] = path
    return root, teachers


def _case(seed, data):
    rng = random.Random(seed)
    root, teachers = data
    dataset = rng.choice(["cifar100", "cifar100", "cifar100", "mnist"])
    teacher = rng.choice(MODELS)
    argv = ["--distill", rng.choice(distiller_names()), "--model_s", rng.choice(MODELS),
            "--path_t", str(teachers[teacher, 100 if dataset == "cifar100" or rng.random() < 0.2 else 10]), "--dataset", dataset,
            "--data_folder", str(root), "--save_folder", str(root / f"save{seed}"), "--epochs", "1",
            "--batch_size", "16", "--print_freq", "1000", "--init_epochs", "1",
            "--sskd_t_epochs", "1", "--pad_l2_l2_epochs", "1", "--nce_k", "8"]
    for flags in rng.sample(FLAGS, rng.choice([0, 1, 2])):
        argv += flags
    return argv


@pytest.mark.parametrize("seed", range(CASES))
def test_random_flags_train_or_fail_cleanly(seed, data, capsys):
    argv = _case(seed, data)
    try:
        train_student.main(argv)
    except SystemExit as e:
        err = capsys.readouterr().err.strip()
        assert e.code == 2, (argv, err)
        assert err and "Traceback" not in err, (argv, err)
        last = err.splitlines()[-1]
        assert last.startswith("error") or "error:" in last, (argv, err)

"""Every method: a run killed in the middle of an epoch and restarted with --resume ends with
the same weights, method state and logged metrics as an uninterrupted run (--deterministic)."""
import pytest
import torch

import helper.run.trainer
import train_student
from conftest import write_cifar100
from helpers import DiesAfterOneBatch, event_scalars
from distillers import distiller_classes, get_distiller
from models import create_model

# Flags that make each method small enough for a 64-image data set and one-epoch stages.
SMALL = {"crd": ["--nce_k", "32"], "ab": ["--init_epochs", "1"], "fsp": ["--init_epochs", "1"],
         "ft": ["--init_epochs", "1"], "sskd": ["--sskd_t_epochs", "1"],
         "pad_l2": ["--pad_l2_l2_epochs", "1"], "fitnet": ["--fitnet_stage1_epochs", "1"],
         "kd": ["--ctkd"], "dkd": ["--ctkd"], "mgd": ["--mgd_update_freq", "1"],
         "dml": ["-d", "0"], "uskd": ["-d", "0"]}
METHODS = [cls.name for cls in distiller_classes()]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume_all")
    data = write_cifar100(root / "data", n_train=64, n_test=32)
    teacher = root / "teacher.pth"
    torch.manual_seed(0)
    model = create_model("resnet14", 100)
    model.train()
    with torch.no_grad():  # calibrate BN statistics so that feature losses stay finite
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    torch.save({"model": model.state_dict(), "model_name": "resnet14"}, teacher)
    return data, teacher


def _argv(method, data, teacher, save):
    teachers = [str(teacher)] * get_distiller(method).min_teachers  # the same file, twice
    return ["--distill", method, "--model_s", "resnet8", "--path_t", *teachers,
            "--dataset", "cifar100", "--data_folder", str(data), "--save_folder", str(save),
            "--epochs", "2", "--batch_size", "32", "--print_freq", "1000", "--deterministic",
            "--lr_decay_epochs", "1", *SMALL.get(method, [])]


@pytest.mark.parametrize("method", METHODS)
def test_killed_and_resumed_run_matches_uninterrupted(method, setup, tmp_path, monkeypatch):
    data, teacher = setup
    train_student.main(_argv(method, data, teacher, tmp_path / "full"))

    real = helper.run.trainer.train_one_epoch
    calls = {"n": 0}

    def killed_in_last_epoch(model, loader, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == total_epochs:  # die after the first batch of the last epoch
            return real(model, DiesAfterOneBatch(loader), *args, **kwargs)
        return real(model, loader, *args, **kwargs)

    full_run = next((tmp_path / "full" / "students").iterdir())
    total_epochs = torch.load(full_run / "last.pth", weights_only=True)["epoch"]
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", killed_in_last_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_student.main(_argv(method, data, teacher, tmp_path / "cut"))
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", real)
    cut_run = tmp_path / "cut" / "students" / full_run.name
    assert torch.load(cut_run / "last.pth", weights_only=True)["epoch"] == total_epochs - 1
    train_student.main([*_argv(method, data, teacher, tmp_path / "cut"), "--resume"])

    a = torch.load(full_run / "last.pth", weights_only=True)
    b = torch.load(cut_run / "last.pth", weights_only=True)
    for part in ("model", "extras"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    sa, sb = event_scalars(full_run), event_scalars(cut_run)
    assert sa.keys() == sb.keys()
    assert [s for s, _ in sb["test/acc"]] == list(range(1, total_epochs + 1))
    for tag in sa:  # stage-specific terms are logged in their stage's epochs only
        steps = [s for s, _ in sb[tag]]
        assert steps == sorted(set(steps)), tag  # no duplicated or reordered steps
        assert sa[tag] == sb[tag], tag

"""Checkpoint files: atomic writes, foreign formats, naming the teacher, clear errors."""
import pytest
import torch

from helper.run.checkpoint import load_teacher, model_name_from_path
from helper.core.files import atomic_save, load_file
from helper.core.errors import UserError
from models import create_model


def test_atomic_save_keeps_previous_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, path)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


@pytest.mark.parametrize("path,name", [
    ("save/teachers/resnet32x4_vanilla_cifar100_trial_0/resnet32x4_best.pth", "resnet32x4"),
    ("save/models/wrn_40_2_cifar100_lr_0.05_decay_0.0005_trial_0/ckpt_epoch_240.pth", "wrn_40_2"),
    ("save/students/S:resnet8x4_T:resnet32x4_cifar100_kd_r:1_a:1_b:0_1/resnet8x4_best.pth", "resnet8x4"),
    ("save/x/ShuffleV2_1_5_vanilla_cifar100_trial_1/best.pth", "ShuffleV2_1_5"),
    ("elsewhere/teacher.pth", None),
])
def test_model_name_from_repdistiller_and_simkd_paths(path, name):
    assert model_name_from_path(path) == name


def test_repdistiller_checkpoint_loads_as_teacher(tmp_path):
    folder = tmp_path / "resnet8x4_vanilla_cifar100_trial_0"
    folder.mkdir()
    model = create_model("resnet8x4", 100).eval()
    torch.save({"epoch": 240, "model": model.state_dict(), "best_acc": 72.5}, folder / "resnet8x4_best.pth")
    teacher, _ = load_teacher(folder / "resnet8x4_best.pth", num_classes=100)
    x = torch.randn(2, 3, 32, 32)
    assert teacher.model_name == "resnet8x4"
    assert torch.equal(teacher(x), model(x))


def test_teacher_errors_are_one_clear_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_teacher(tmp_path / "missing.pth", 100)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a readable PyTorch checkpoint"):
        load_teacher(bad, 100, "resnet8")
    anon = tmp_path / "teacher.pth"
    torch.save({"model": create_model("resnet8", 100).state_dict()}, anon)
    with pytest.raises(UserError, match="pass --model_t"):
        load_teacher(anon, 100)
    with pytest.raises(UserError, match="does not fit resnet14: .*missing keys"):
        load_teacher(anon, 100, "resnet14")
    with pytest.raises(UserError, match="shape mismatches.*fc.weight"):
        load_teacher(anon, 10, "resnet8")
    torch.save({"epoch": 3}, anon)
    with pytest.raises(UserError, match="holds no model weights"):
        load_teacher(anon, 100, "resnet8")


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "last.pth"
    atomic_save({"model": create_model("resnet8", 10).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=str(path)):
        load_file(path, "checkpoint")

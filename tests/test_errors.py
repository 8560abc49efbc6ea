"""Every error a user can cause in the entry scripts: one line, exit code 2, nothing written."""
import urllib.error

import pytest
import torch

import train_student
import train_teacher
from models import create_model


def _fails(main, argv, capsys, *fragments):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    for fragment in fragments:
        assert fragment in last, err
    return err


def _mnist(data, save):
    return ["--dataset", "mnist", "--data_folder", str(data), "--save_folder", str(save),
            "--epochs", "1"]


def test_unknown_model_method_and_dataset_list_the_choices(capsys, tmp_path):
    _fails(train_teacher.main, ["--model", "resnet9000"], capsys, "invalid choice", "resnet8x4")
    _fails(train_student.main, ["--distill", "magic"], capsys, "invalid choice", "kd")
    _fails(train_teacher.main, ["--dataset", "cifar1000"], capsys, "invalid choice", "cifar100")


@pytest.mark.parametrize("flag,value,message", [
    ("--batch_size", "0", "must be positive"),
    ("--epochs", "-3", "must be positive"),
    ("--learning_rate", "0", "must be positive"),
    ("--lr_decay_epochs", "150,120", "must be increasing"),
    ("--lr_decay_epochs", "a,b", "comma-separated"),
])
def test_bad_numbers_are_rejected(capsys, flag, value, message):
    _fails(train_teacher.main, [flag, value], capsys, message)


def test_teacher_checkpoint_errors_create_no_run_folder(mnist_small, tmp_path, capsys):
    save = tmp_path / "save"
    base = ["--model_s", "mlp_800", *_mnist(mnist_small, save)]
    _fails(train_student.main, base, capsys, "needs a teacher", "--path_t")
    _fails(train_student.main, [*base, "--path_t", str(tmp_path / "nope.pth")], capsys, "does not exist")
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("hello")
    _fails(train_student.main, [*base, "--path_t", str(garbage)], capsys, "not a readable PyTorch checkpoint")
    other = tmp_path / "teacher.pth"
    torch.save({"model": create_model("mlp_800", 10).state_dict(), "model_name": "mlp_800"}, other)
    _fails(train_student.main, [*base, "--path_t", str(other), "--model_t", "mlp_1200"], capsys,
           "does not fit mlp_1200", "shape mismatches")
    torch.save({"model": create_model("mlp_800", 100).state_dict(), "model_name": "mlp_800",
                "num_classes": 100}, other)
    _fails(train_student.main, [*base, "--path_t", str(other)], capsys, "100 classes", "has 10")
    assert not save.exists()


def test_missing_data_while_offline_names_folder_and_layout(tmp_path, capsys, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)  # what the download calls
    empty = tmp_path / "empty"
    err = _fails(train_teacher.main, ["--model", "mlp_800", *_mnist(empty, tmp_path / "save")],
                 capsys, str(empty), "train-images-idx3-ubyte")
    assert "download failed" in err
    assert not (tmp_path / "save").exists()


def test_existing_run_and_nothing_to_resume(mnist_small, tmp_path, capsys):
    args = ["--model", "mlp_800", *_mnist(mnist_small, tmp_path), "--print_freq", "1000"]
    _fails(train_teacher.main, [*args, "--resume"], capsys, "nothing to resume")
    train_teacher.main(args)
    _fails(train_teacher.main, args, capsys, "already holds a run", "--resume")
    other = ["--model", "mlp_1200", *_mnist(mnist_small, tmp_path)]
    last = tmp_path / "teachers" / "mlp_800_vanilla_mnist_trial_0" / "last.pth"
    _fails(train_teacher.main, [*other, "--resume", str(last)], capsys, "cannot resume", "mlp_800")


def test_full_disk_while_saving_keeps_the_previous_checkpoints(mnist_small, tmp_path, capsys, monkeypatch):
    import helper.run.checkpoint
    args = ["--model", "mlp_800", *_mnist(mnist_small, tmp_path), "--epochs", "3", "--print_freq", "1000"]
    real_save = torch.save
    saves = {"n": 0}

    def disk_fills_up(obj, f):
        saves["n"] += 1
        if saves["n"] > 2:  # epoch 1 writes best.pth and last.pth; then the disk is full
            f.write(b"partial")
            raise OSError(28, "No space left on device")
        real_save(obj, f)
    monkeypatch.setattr(helper.run.checkpoint.torch, "save", disk_fills_up)
    _fails(train_teacher.main, args, capsys, "cannot write", "No space left on device", "--resume")
    monkeypatch.undo()
    run = tmp_path / "teachers" / "mlp_800_vanilla_mnist_trial_0"
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pth") == ["best.pth", "last.pth"]
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    assert torch.load(run / "best.pth", weights_only=True)["epoch"] == 1
    train_teacher.main([*args, "--resume"])  # continues once there is space again
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 3


def test_corrupt_last_checkpoint_is_named_by_resume(mnist_small, tmp_path, capsys):
    args = ["--model", "mlp_800", *_mnist(mnist_small, tmp_path), "--print_freq", "1000"]
    train_teacher.main(args)
    last = tmp_path / "teachers" / "mlp_800_vanilla_mnist_trial_0" / "last.pth"
    last.write_bytes(last.read_bytes()[:1000])
    _fails(train_teacher.main, [*args, "--resume"], capsys, str(last), "not a readable PyTorch checkpoint")

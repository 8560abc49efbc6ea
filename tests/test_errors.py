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
    import dataset.mnist

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(dataset.mnist, "_download", offline)
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

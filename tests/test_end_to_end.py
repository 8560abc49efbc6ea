"""Real runs on a small slice of the real MNIST: teacher, KD student, resume, run folder."""
import json

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_student
import train_teacher
from helper.run.precision import native_cpu_bf16

EPOCH_TAGS = {"train/loss", "train/acc", "test/acc", "test/acc_top5", "test/loss", "lr"}


def _common(data, save, epochs=3):
    return ["--dataset", "mnist", "--data_folder", str(data), "--save_folder", str(save),
            "--batch_size", "64", "--epochs", str(epochs), "--lr_decay_epochs", "2",
            "--print_freq", "10"]


def _scalars(folder):
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_teacher_then_kd_student_learn_and_write_the_run_folder(mnist_small, tmp_path):
    save = tmp_path / "save"
    train_teacher.main(["--model", "mlp_1200", "--learning_rate", "0.1", *_common(mnist_small, save)])
    teacher_dir = save / "teachers" / "mlp_1200_vanilla_mnist_trial_0"
    summary = json.loads((teacher_dir / "summary.json").read_text())
    assert summary["finished"] and summary["epochs_done"] == 3
    # Fixed seeds and data; another CPU's kernels only round differently, which moved these
    # accuracies by 0.4 points at most (teacher 88.0 / 87.6, student 87.4 / 87.4 with AVX-512
    # and AVX2 kernels). 85 is 12 of the 500 test images below the lowest; chance is 10%.
    assert summary["best_acc"] > 85, summary
    assert EPOCH_TAGS | {"train/loss_cls"} <= set(_scalars(teacher_dir))

    train_student.main(["--model_s", "mlp_800", "--path_t", str(teacher_dir / "best.pth"),
                        "--distill", "kd", "--kd_T", "4", *_common(mnist_small, save)])
    student_dir = save / "students" / "S:mlp_800_T:mlp_1200_mnist_kd_r:1_a:1_b:0_0"
    summary = json.loads((student_dir / "summary.json").read_text())
    assert summary["best_acc"] > 85, summary
    assert summary["teacher"] == "mlp_1200"
    scalars = _scalars(student_dir)
    assert EPOCH_TAGS | {"train/loss_cls", "train/loss_kd"} <= set(scalars)
    assert [s for s, _ in scalars["test/acc"]] == [1, 2, 3]
    # TensorBoard stores float32 (0.005 reads back as 0.004999999888): 6 decimals undo that
    assert [round(v, 6) for _, v in scalars["lr"]] == [0.05, 0.05, 0.005]
    best = torch.load(student_dir / "best.pth", weights_only=True)
    assert best["model_name"] == "mlp_800" and best["accuracy"] == summary["best_acc"]


def test_resume_gives_the_same_weights_and_logs(mnist_small, tmp_path):
    """Dropout in mlp_1200 draws from the global RNG, so this also checks the RNG restore."""
    flags = ["--model", "mlp_1200", "--deterministic", "--trial", "7"]
    train_teacher.main([*flags, *_common(mnist_small, tmp_path / "a", epochs=3)])
    train_teacher.main([*flags, *_common(mnist_small, tmp_path / "b", epochs=2)])
    train_teacher.main([*flags, *_common(mnist_small, tmp_path / "b", epochs=3), "--resume"])
    run = "teachers/mlp_1200_vanilla_mnist_trial_7"
    a = torch.load(tmp_path / "a" / run / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / run / "last.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3
    # --deterministic on one machine: the same kernels in the same order, so bit-identical
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    sa, sb = _scalars(tmp_path / "a" / run), _scalars(tmp_path / "b" / run)
    assert sa["test/acc"] == sb["test/acc"] and sa["train/loss"] == sb["train/loss"]


def test_trials_differ_and_same_trial_repeats(mnist_small, tmp_path):
    flags = ["--model", "mlp_800", "--deterministic"]
    for folder, trial in (("a", "0"), ("b", "0"), ("c", "1")):
        train_teacher.main([*flags, "--trial", trial, *_common(mnist_small, tmp_path / folder, epochs=1)])
    load = lambda f, t: torch.load(tmp_path / f / f"teachers/mlp_800_vanilla_mnist_trial_{t}/last.pth",
                                   weights_only=True)["model"]
    a, b, c = load("a", "0"), load("b", "0"), load("c", "1")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(mnist_small, tmp_path, capsys):
    # lr 0.05 in epoch 1, then 5e10: the loss overflows during epoch 2.
    args = ["--model", "mlp_800", *_common(mnist_small, tmp_path, epochs=3),
            "--lr_decay_epochs", "1", "--lr_decay_rate", "1e12"]
    with pytest.raises(SystemExit) as exit_info:
        train_teacher.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "non-finite at epoch 2, iteration" in err and "cls" in err
    last = torch.load(tmp_path / "teachers/mlp_800_vanilla_mnist_trial_0/last.pth", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values())


@pytest.mark.skipif(not native_cpu_bf16(), reason="--amp needs native bf16 on the CPU")
def test_amp_bf16_and_channels_last_train_a_kd_student(cifar100_small, tmp_path, teacher_ckpt):
    teacher = teacher_ckpt("resnet14")
    train_student.main(["--path_t", str(teacher), "--model_s", "resnet8", "--distill", "kd",
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--amp",
                        "--channels_last", "--print_freq", "1000"])
    run = tmp_path / "students" / "S:resnet8_T:resnet14_cifar100_kd_r:1_a:1_b:0_0"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["args"]["amp"]
    last = torch.load(run / "last.pth", weights_only=True)
    assert all(v.dtype != torch.bfloat16 for v in last["model"].values())  # weights stay fp32


def test_fp16_on_cpu_is_refused(mnist_small, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("fp16 is allowed with CUDA")
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", "mlp_800", "--amp", "--amp_dtype", "fp16",
                            *_common(mnist_small, tmp_path, epochs=1)])
    assert e.value.code == 2 and "needs CUDA" in capsys.readouterr().err
    assert not (tmp_path / "teachers").exists()

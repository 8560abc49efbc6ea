"""Issue 21: a new user's bad input is refused in one line with exit code 2 -- values at parse
time (signs, ranges, paths inside --save_folder), a run without a loss term, and checkpoints
that are directories, not PyTorch files, DataParallel-prefixed or deployed SimKD students."""
import argparse
import os

import pytest
import torch

import train_student
import train_teacher
from distillers import MethodConfig, WeightOptions
from helper.run.checkpoint import create_pretrained, load_teacher
from helper.core.errors import UserError
from helper.core.files import load_file
from helper.run.loop import train_one_epoch
from helper.run.options import MAX_SEED, parse_student_args, parse_teacher_args
from helper.run.precision import make_sgd
from helpers import make_distiller
from models import create_model

ROOT = pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                          reason="root reads files of any mode")


def one_line(capsys, main, argv):
    """``main(argv)`` must exit with code 2 and exactly one line on stderr: that line."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def teacher_args(save, *extra):
    return ["--model", "mlp_1200", "--dataset", "mnist", "--epochs", "1",
            "--save_folder", str(save), *extra]


def student_args(save, *extra):
    return ["--model_s", "mlp_800", "--dataset", "mnist", "--epochs", "1",
            "--save_folder", str(save), *extra]


# ---- parse time ---------------------------------------------------------------------------
@pytest.mark.parametrize("flags,message", [
    (["--momentum", "-1"], "--momentum: must be in [0, 1)"),
    (["--momentum", "1"], "--momentum: must be in [0, 1)"),
    (["--weight_decay", "-1"], "must be 0 or more"),
    (["--lr_decay_rate", "0"], "must be positive"),
    (["--lr_decay_epochs=-5"], "epochs must be positive"),
    (["--lr_decay_epochs", "0,5"], "epochs must be positive"),
    (["--seed", str(2**63)], f"must be in 0..{MAX_SEED}"),
    (["--seed", "-1"], f"must be in 0..{MAX_SEED}"),
    (["--trial", str(2**63)], "numeric --trial"),
    (["--num_workers", "-1"], "must be 0 or more"),
    (["--print_freq", "0"], "must be positive"),
    (["--learning_rate", "nan"], "must be a finite number"),
    (["--dist-timeout", "0"], "--dist-timeout must be a positive number"),
    (["--save_folder", ""], "--save_folder is empty"),
    (["--trial", "../../../../escape"], "must be a plain name"),
    (["--trial", "a/b"], "must be a plain name"),
    (["--trial", ".."], "must be a plain name"),
    (["--amp_dtype", "bf16"], "--amp_dtype needs --amp"),
    (["--multiprocessing-distributed", "--nproc", "3"], "does not split evenly over 3"),
])
def test_bad_values_are_refused_at_parse_time(flags, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --save_folder '' would write here
    line = one_line(capsys, train_teacher.main, teacher_args(tmp_path / "save") + flags)
    assert message in line and "error:" in line
    assert os.listdir(tmp_path) == []


def test_edge_values_are_accepted():
    config = parse_teacher_args(["--momentum", "0", "--weight_decay", "0", "--seed", "0",
                                 "--num_workers", "0", "--trial", "a.b-1",
                                 "--lr_decay_epochs", "1"])
    assert config.args.momentum == 0 and config.args.lr_decay_epochs == [1]
    config = parse_teacher_args(["--seed", str(MAX_SEED), "--amp", "--amp_dtype", "bf16"])
    assert config.args.seed == MAX_SEED
    assert parse_teacher_args(["--multiprocessing-distributed", "--nproc", "4"]).batch_per_process == 64


@pytest.mark.parametrize("flags,message", [
    (["-c", "-1"], "-c must be 0 or more"),
    (["-a", "-0.5"], "-d must be 0 or more"),
    (["--distill", "at", "-b", "-1"], "-b must be 0 or more"),
    (["-c", "0", "-d", "0"], "no loss term is active: -c, -d and -b are all 0 for --distill kd"),
    (["--distill", "simkd", "-b", "0"], "all 0 for --distill simkd; give one a positive weight"),
])
def test_negative_or_all_zero_weights_are_refused(flags, message, tmp_path, capsys):
    line = one_line(capsys, train_student.main, student_args(tmp_path / "save") + flags)
    assert message in line
    assert not (tmp_path / "save").exists()


def test_a_zero_weight_beside_a_positive_one_is_fine():
    assert parse_student_args(["-c", "0", "-d", "1"]).method.weights.div == 1
    assert parse_student_args(["--distill", "simkd"]).method.weights.beta == 1


# ---- a step without loss terms ------------------------------------------------------------
def _mnist_teacher(path, name="mlp_1200", **extra):
    torch.save({"model": create_model(name, 10).state_dict(), "model_name": name,
                "num_classes": 10, **extra}, path)
    return path


def test_kd_with_only_b_stops_at_the_first_step(mnist_small, tmp_path, capsys):
    """kd has no loss of its own, so -b 5 weighs nothing: the loop says so in one line."""
    teacher = _mnist_teacher(tmp_path / "teacher.pth")
    line = one_line(capsys, train_student.main, student_args(
        tmp_path / "save", "--data_folder", str(mnist_small), "--path_t", str(teacher),
        "-c", "0", "-d", "0", "-b", "5"))
    assert "no loss term is active" in line and "--distill kd" in line and "-b 5" in line
    assert not list((tmp_path / "save").rglob("*.pth"))


def test_loop_names_all_zero_weights():
    """A distiller built without the parser's check (weights 0, 0, 0)."""
    student, teacher = create_model("mlp_800", 10), create_model("mlp_1200", 10)
    method = MethodConfig.create("kd", weights=WeightOptions(cls=0, div=0, beta=0))
    distiller = method.build(student, teacher)
    batch = [{"images": torch.randn(4, 1, 28, 28), "targets": torch.arange(4)}]
    optimizer = make_sgd(distiller.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=0)
    with pytest.raises(UserError, match="-c, -d and -b are all 0 for --distill kd"):
        train_one_epoch(distiller, batch, optimizer, 1, log=lambda *a: None)


# ---- checkpoints --------------------------------------------------------------------------
def test_a_directory_is_named_as_one(mnist_small, tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    save = tmp_path / "save"
    line = one_line(capsys, train_student.main, student_args(
        save, "--data_folder", str(mnist_small), "--path_t", str(folder)))
    assert f"{folder} is a directory; pass the checkpoint file inside it (e.g. best.pth)" in line
    line = one_line(capsys, train_teacher.main, teacher_args(
        save, "--data_folder", str(mnist_small), "--resume", str(folder)))
    assert "checkpoint to resume" in line and "is a directory" in line
    assert not save.exists()
    with pytest.raises(UserError, match="pretrained weights .* is a directory"):
        create_pretrained("mlp_800", 10, str(folder))


def test_random_bytes_are_not_a_checkpoint(mnist_small, tmp_path, capsys):
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 16)
    line = one_line(capsys, train_student.main, student_args(
        tmp_path / "save", "--data_folder", str(mnist_small), "--path_t", str(noise)))
    assert "not a readable PyTorch checkpoint: it is not a file torch.save writes" in line
    assert "weights_only" not in line
    assert not (tmp_path / "save").exists()


class Opaque:
    """Pickled as a Python object, which weights-only loading refuses."""


@pytest.mark.parametrize("write,message", [
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: torch.save({"model": Opaque()}, p), "Opaque object besides weights, which would run code"),
    (lambda p: (torch.save({"w": torch.zeros(1000)}, p), p.write_bytes(p.read_bytes()[:600])),
     "truncated or corrupt"),
])
def test_unloadable_files_say_why_without_torch_advice(tmp_path, write, message):
    path = tmp_path / "x.pth"
    write(path)
    with pytest.raises(UserError) as e:
        load_file(path, "teacher checkpoint")
    text = str(e.value)
    assert message in text and "WeightsUnpickler" not in text and "\n" not in text


def test_legacy_format_loads(tmp_path):
    path = tmp_path / "old.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(load_file(path, "weights")["w"], torch.ones(2))


@ROOT
def test_an_unreadable_file_is_named(tmp_path):
    path = _mnist_teacher(tmp_path / "teacher.pth")
    path.chmod(0)
    try:
        with pytest.raises(UserError, match="cannot read teacher checkpoint .*Permission denied"):
            load_file(path, "teacher checkpoint")
    finally:
        path.chmod(0o644)


def test_a_read_error_is_one_line(tmp_path, monkeypatch):
    """What the test above checks, for root too: a read that fails with EACCES."""
    import helper.core.files
    path = _mnist_teacher(tmp_path / "teacher.pth")

    def denied(file, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))
    monkeypatch.setattr(helper.core.files, "open", denied, raising=False)
    with pytest.raises(UserError, match=r"cannot read teacher checkpoint .* \(Permission denied\)"):
        load_file(path, "teacher checkpoint")


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod."])
def test_wrapped_state_dicts_load_as_teacher_and_pretrained(tmp_path, prefix):
    model = create_model("mlp_800", 10).eval()
    path = tmp_path / "ddp.pth"
    torch.save({"model": {prefix + k: v for k, v in model.state_dict().items()},
                "model_name": "mlp_800"}, path)
    teacher, _ = load_teacher(path, 10)
    pretrained = create_pretrained("mlp_800", 10, str(path)).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(teacher(x), model(x)) and torch.equal(pretrained(x), model(x))


def test_model_t_against_the_recorded_model_names_it(tmp_path):
    path = _mnist_teacher(tmp_path / "teacher.pth", "mlp_800")
    with pytest.raises(UserError, match="does not fit mlp_1200: .*records model mlp_800: "
                                        "drop --model_t mlp_1200"):
        load_teacher(path, 10, "mlp_1200")


def _simkd_checkpoint(path):
    """A SimKD student (resnet8 under resnet14) saved as the trainer saves best.pth."""
    _, _, distiller = make_distiller("simkd", argparse.Namespace(), student="resnet8",
                                     teacher="resnet14", num_classes=10)
    with torch.no_grad():  # BatchNorm statistics away from (0, 1), so the projector matters
        distiller.train()
        distiller.forward_train(torch.randn(8, 3, 32, 32), torch.arange(8))
    distiller.eval()
    torch.save({"format": "kd-toolbox/1", "model_name": "resnet8", "num_classes": 10,
                "dataset": "cifar10", "distill": "simkd", "model": distiller.student.state_dict(),
                "deploy": distiller.deploy_state()}, path)
    return distiller


def test_a_simkd_student_loads_as_its_deployed_model(tmp_path):
    path = tmp_path / "best.pth"
    distiller = _simkd_checkpoint(path)
    x = torch.randn(4, 3, 32, 32)
    expected = distiller.forward_test(x)
    for model_t in (None, "resnet8"):
        teacher, _ = load_teacher(path, 10, model_t)
        assert teacher.model_name == "resnet8"
        # the same modules and weights, in eval mode: the same float32 kernels (1e-6 is slack)
        assert torch.allclose(teacher(x), expected, atol=1e-6)
    with pytest.raises(UserError, match="holds a resnet8 student of --distill simkd .* "
                                        "drop --model_t resnet14"):
        load_teacher(path, 10, "resnet14")

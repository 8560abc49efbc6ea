"""helper.export: the quick start's student (real MNIST, 1 epoch) exported to ONNX and TorchScript
with its top-1 unchanged; a SimKD student exported as one module; a re-normalising checkpoint
exported with its hook; refusals in one line with nothing written."""
import json
import sys
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from helper import export
from helper.run.checkpoint import load_teacher
from helpers import run_student

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def quick_start(mnist_small, tmp_path_factory):
    """README's quick start on 2,000 MNIST images, 1 epoch each: ``(teacher run, student run)``."""
    save = tmp_path_factory.mktemp("quick_start")
    common = ["--dataset", "mnist", "--data_folder", str(mnist_small), "--epochs", "1",
              "--lr_decay_epochs", "2", "--learning_rate", "0.01", "--save_folder", str(save),
              "--num_workers", "0", "--print_freq", "1000"]
    train_teacher.main(["--model", "mlp_1200", *common])
    teacher = save / "teachers" / "mlp_1200_vanilla_mnist_trial_0"
    train_student.main(["--path_t", str(teacher / "best.pth"), "--model_s", "mlp_800",
                        "--distill", "kd", "--kd_T", "20", *common])
    student = next((save / "students").iterdir())
    return teacher, student


def _export(capsys, *argv):
    """``helper.export.main``: ``(exit code, stdout lines, stderr lines)``."""
    code = 0
    try:
        export.main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out.strip().splitlines(), err.strip().splitlines()


@pytest.mark.parametrize("fmt,flags", [("onnx", []), ("onnx", ["--dynamic_batch"]),
                                       ("torchscript", [])])
def test_quick_start_student_exports_with_equal_top1(quick_start, mnist_small, capsys, tmp_path,
                                                      fmt, flags):
    _, student = quick_start
    out = tmp_path / f"student{export.FORMATS[fmt]}"
    code, lines, err = _export(capsys, student, "--format", fmt, *flags, "--output", out,
                               "--data_folder", mnist_small)
    assert code == 0 and err == [] and len(lines) == 1
    record = json.loads((tmp_path / (out.name + ".json")).read_text())
    check = record["check"]
    assert out.is_file() and record["format"] == fmt and record["model_name"] == "mlp_800"
    assert check["passed"] and check["images"] == 500
    assert check["top1_exported"] == check["top1_pytorch"] == json.loads(
        (student / "summary.json").read_text())["best_acc"]
    assert check["max_abs_diff"] <= export.ATOL
    assert f"test top-1 {check['top1_exported']:.2f}" in lines[0]


def test_run_folder_means_best_pth_and_default_output_is_beside_it(quick_start, capsys):
    teacher, _ = quick_start
    code, lines, _ = _export(capsys, teacher, "--format", "torchscript", "--no_check")
    assert code == 0 and "not checked" in lines[0]
    assert (teacher / "best.torchscript.pt").is_file()
    assert json.loads((teacher / "best.torchscript.pt.json").read_text())["check"] is None


def _run_exported(path, fmt, images):
    data = Path(path).read_bytes()
    run = export.onnx_runner(data) if fmt == "onnx" else export.torchscript_runner(data)
    return run(images)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_simkd_student_exports_as_one_module(cifar100_micro, tmp_path, teacher_ckpt, capsys,
                                             fmt):
    run = run_student("simkd", "resnet8", cifar100_micro, tmp_path / "save",
                      teacher=teacher_ckpt("resnet8"), batch_size=10)
    out = tmp_path / f"simkd{export.FORMATS[fmt]}"
    code, _, err = _export(capsys, run / "last.pth", "--format", fmt, "--output", out,
                           "--data_folder", cifar100_micro, "--dynamic_batch")
    assert code == 0, err
    record = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert record["deploy"] == "simkd" and record["check"]["passed"]
    deployed, _ = load_teacher(run / "last.pth", 100)  # student, projector, teacher's classifier
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = deployed(images)
    assert torch.allclose(_run_exported(out, fmt, images), expected,
                          atol=export.ATOL, rtol=export.RTOL)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_renormalising_checkpoint_exports_with_its_hook(quick_start, mnist_small, tmp_path,
                                                        capsys, fmt):
    teacher, _ = quick_start
    checkpoint = torch.load(teacher / "best.pth", weights_only=True)
    checkpoint["normalization"] = {"mean": [0.5], "std": [0.25]}  # not MNIST's pipeline's
    path = tmp_path / "renormalised.pth"
    torch.save(checkpoint, path)
    out = tmp_path / f"renormalised{export.FORMATS[fmt]}"
    code, _, err = _export(capsys, path, "--format", fmt, "--output", out, "--dynamic_batch",
                           "--data_folder", mnist_small)
    assert code == 0, err
    record = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert record["renormalizes_from"] == {"mean": [0.5], "std": [0.25]}
    assert record["check"]["passed"]
    hooked, _ = load_teacher(path, 10, dataset="mnist")
    plain, _ = load_teacher(path, 10)
    images = torch.randn(4, 1, 28, 28)
    got = _run_exported(out, fmt, images)
    with torch.no_grad():
        assert torch.allclose(got, hooked(images), atol=export.ATOL, rtol=export.RTOL)
        assert not torch.allclose(got, plain(images), atol=1e-2)


# ---- refusals: one line, exit code 2, nothing written ----------------------------------------
def _refused(capsys, tmp_path, *argv):
    before = set(tmp_path.rglob("*"))
    code, lines, err = _export(capsys, *argv)
    assert code == 2 and lines == [] and len(err) == 1
    assert set(tmp_path.rglob("*")) == before
    return err[0]


def test_checkpoint_without_weights_is_refused(tmp_path, capsys):
    path = tmp_path / "empty.pth"
    torch.save({"epoch": 3, "dataset": "mnist", "num_classes": 10}, path)
    line = _refused(capsys, tmp_path, path, "--format", "onnx", "--no_check")
    assert line.startswith("error: ") and "empty.pth" in line


def test_unknown_format_and_bad_opset_are_refused(quick_start, tmp_path, capsys):
    _, student = quick_start
    assert "invalid choice: 'tflite'" in _refused(capsys, tmp_path, student, "--format", "tflite")
    assert "--opset 99" in _refused(capsys, tmp_path, student, "--format", "onnx",
                                    "--opset", "99")


def test_missing_run_folder_file_and_data_are_refused(quick_start, tmp_path, capsys):
    _, student = quick_start
    assert "does not exist" in _refused(capsys, tmp_path, tmp_path / "nothing",
                                        "--format", "onnx")
    assert "holds no best.pth" in _refused(capsys, tmp_path, tmp_path, "--format", "onnx")
    line = _refused(capsys, tmp_path, student, "--format", "torchscript", "--output",
                    tmp_path / "x.pt", "--data_folder", tmp_path)
    assert "cannot check the export" in line and "--no_check" in line


def test_missing_onnxruntime_is_refused_with_the_install_command(quick_start, tmp_path, capsys,
                                                                 monkeypatch):
    _, student = quick_start
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as when not installed
    line = _refused(capsys, tmp_path, student, "--format", "onnx", "--output",
                    tmp_path / "s.onnx")
    assert "pip install onnxruntime" in line and "--no_check" in line
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert "pip install onnx" in _refused(capsys, tmp_path, student, "--format", "onnx",
                                          "--no_check", "--output", tmp_path / "s.onnx")


def test_export_whose_logits_differ_is_refused(quick_start, mnist_small, tmp_path, capsys,
                                               monkeypatch):
    _, student = quick_start
    real = export.torchscript_runner
    monkeypatch.setattr(export, "torchscript_runner",
                        lambda data: (lambda images: real(data)(images) + 1e-2))
    line = _refused(capsys, tmp_path, student, "--format", "torchscript", "--output",
                    tmp_path / "s.pt", "--data_folder", mnist_small)
    assert "differ from PyTorch's" in line and "nothing written" in line

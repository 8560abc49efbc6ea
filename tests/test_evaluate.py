"""--evaluate on both entry scripts: a toolbox best.pth scores what its training recorded, a
RepDistiller-format file scores with --model, a SimKD student scores as its deployed model,
and every bad input is one line with exit code 2. No run folder is created."""
import json
import os
from pathlib import Path

import pytest
import torch

import train_student
import train_teacher
from helper.run.checkpoint import load_teacher
from helper.run.evaluate import check_published, record_in
from helpers import read_summary, run_student, save_teacher

MNIST = ["--dataset", "mnist", "--batch_size", "128", "--print_freq", "1000"]


@pytest.fixture(scope="module")
def mnist_teacher(mnist_small, tmp_path_factory):
    """One epoch of an MNIST MLP: its run folder."""
    save = tmp_path_factory.mktemp("eval_save")
    train_teacher.main(["--model", "mlp_800", *MNIST, "--data_folder", str(mnist_small),
                        "--save_folder", str(save), "--epochs", "1", "--learning_rate", "0.01"])
    return next((save / "teachers").iterdir())


def _evaluate(script, capsys, *argv):
    script.main(["--evaluate", *map(str, argv)])
    out = capsys.readouterr().out.strip().splitlines()
    lines = [line for line in out if line.startswith("evaluate ")]
    assert len(lines) == 1, out
    return lines[0]


def _user_error(script, capsys, *argv):
    with pytest.raises(SystemExit) as e:
        script.main(["--evaluate", *map(str, argv)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_best_pth_scores_what_training_recorded(mnist_teacher, mnist_small, tmp_path, capsys,
                                                monkeypatch):
    best = mnist_teacher / "best.pth"
    before = sorted(p.name for p in mnist_teacher.iterdir())
    monkeypatch.chdir(tmp_path)  # the default --save_folder, ./save, is here
    save = tmp_path / "save"
    line = _evaluate(train_teacher, capsys, best, *MNIST, "--data_folder", mnist_small)
    summary = read_summary(mnist_teacher)
    assert f"top-1 {summary['best_acc']:.2f}" in line and "img/s" in line and "top-5" in line
    result = json.loads((mnist_teacher / "best.pth.eval.json").read_text())
    assert result["acc"] == pytest.approx(summary["best_acc"], abs=1e-9)
    assert result["acc_top5"] == pytest.approx(summary["last_acc_top5"], abs=1e-9)
    assert result["model_name"] == "mlp_800" and result["images"] == 500
    assert result["images_per_s"] > 0 and result["recorded"]["best_acc"] == summary["best_acc"]
    # nothing else written: no run folder, no --save_folder
    after = {p.name for p in mnist_teacher.iterdir()}
    assert after == set(before) | {"best.pth.eval.json"}
    assert not save.exists()
    # the student script scores the same file the same way (the model name is stored); with
    # --save_folder the record goes there, named after the checkpoint's folder
    beside = (mnist_teacher / "best.pth.eval.json").read_bytes()
    line2 = _evaluate(train_student, capsys, best, *MNIST, "--data_folder", mnist_small,
                      "--save_folder", tmp_path / "elsewhere")
    assert f"top-1 {summary['best_acc']:.2f}" in line2
    out = tmp_path / "elsewhere" / f"{mnist_teacher.name}_best.pth.eval.json"
    assert line2.endswith(f"written to {out}")
    assert json.loads(out.read_text())["acc"] == result["acc"]
    assert (mnist_teacher / "best.pth.eval.json").read_bytes() == beside
    assert {p.name for p in mnist_teacher.iterdir()} == after


def test_repdistiller_file_with_model_flag(mnist_teacher, mnist_small, tmp_path, capsys):
    checkpoint = torch.load(mnist_teacher / "best.pth", weights_only=True)
    path = tmp_path / "ckpt_epoch_1.pth"  # a name that does not tell the architecture
    torch.save({"model": checkpoint["model"], "epoch": 1}, path)
    line = _evaluate(train_teacher, capsys, path, "--model", "mlp_800", *MNIST,
                     "--data_folder", mnist_small, "--save_folder", tmp_path / "save")
    assert f"top-1 {checkpoint['best_acc']:.2f}" in line and "mlp_800" in line
    line = _evaluate(train_student, capsys, path, "--model_t", "mlp_800", *MNIST,
                     "--data_folder", mnist_small, "--save_folder", tmp_path / "save")
    assert f"top-1 {checkpoint['best_acc']:.2f}" in line
    # the wrong architecture is one line naming the flag to fix
    err = _user_error(train_teacher, capsys, path, "--model", "mlp_1200", *MNIST,
                      "--data_folder", mnist_small, "--save_folder", tmp_path / "save")
    assert "does not fit mlp_1200" in err and "--model_t" not in err


def test_unwritable_folder_writes_into_save_folder(mnist_teacher, mnist_small, tmp_path, capsys,
                                                   monkeypatch):
    import helper.run.evaluate
    folder = tmp_path / "readonly"
    folder.mkdir()
    path = folder / "best.pth"
    path.write_bytes((mnist_teacher / "best.pth").read_bytes())
    access = os.access
    # as if the folder were read-only (a chmod does not stop root, who may run the tests)
    monkeypatch.setattr(helper.run.evaluate.os, "access",
                        lambda p, mode: False if Path(p) == folder else access(p, mode))
    monkeypatch.chdir(tmp_path)  # no --save_folder: its default, ./save, is here
    line = _evaluate(train_teacher, capsys, path, *MNIST, "--data_folder", mnist_small)
    out = Path("save") / "readonly_best.pth.eval.json"
    assert line.endswith(f"written to {out} ({folder} is not writable)")
    assert out.exists() and not (folder / "best.pth.eval.json").exists()


def test_registration_record_is_never_replaced(cifar100_tiny, cifar100_micro, tmp_path,
                                               capsys, monkeypatch):
    """A teacher's registration record (``best.pth.eval.json``, scored on the whole test split
    when the zoo wrote it) stays as it is: --evaluate on a smaller test split writes into
    --save_folder, given or not. An unmarked record over more test images (written before
    registration records were marked) is kept the same way; one over as many is replaced."""
    (tmp_path / "teacher").mkdir()
    path = save_teacher("resnet8", tmp_path / "teacher" / "best.pth")
    beside = path.with_name("best.pth.eval.json")
    check_published(path, "cifar100", cifar100_tiny, tmp_path / "zoo", log=lambda line: None)
    registered = beside.read_bytes()
    assert json.loads(registered)["registration"] is True and json.loads(registered)["images"] == 24
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    micro = ["--dataset", "cifar100", "--data_folder", cifar100_micro]
    line = _evaluate(train_teacher, capsys, path, *micro)
    default = Path("save") / "teacher_best.pth.eval.json"
    assert line.endswith(f"written to {default} ({beside} is kept: it is the teacher's "
                         "registration record)")
    assert json.loads(default.read_text())["images"] == 10 and beside.read_bytes() == registered
    _evaluate(train_student, capsys, path, *micro, "--save_folder", tmp_path / "mine")
    assert json.loads(record_in(tmp_path / "mine", path).read_text())["images"] == 10
    assert beside.read_bytes() == registered
    # an unmarked record: kept over more images, replaced by as many
    old = json.loads(registered)
    del old["registration"]
    beside.write_text(json.dumps(old))
    line = _evaluate(train_teacher, capsys, path, *micro)
    assert line.endswith("is kept: it scores 24 test images, this run 10)")
    assert json.loads(beside.read_text()) == old
    line = _evaluate(train_teacher, capsys, path, "--dataset", "cifar100", "--data_folder",
                     cifar100_tiny)
    assert line.endswith(f"written to {beside}")
    assert "registration" not in json.loads(beside.read_text())


def test_errors_are_one_line(mnist_teacher, mnist_small, tmp_path, capsys, cifar100_tiny):
    common = [*MNIST, "--data_folder", mnist_small, "--save_folder", tmp_path / "save"]
    err = _user_error(train_teacher, capsys, tmp_path / "missing.pth", *common)
    assert "does not exist" in err
    err = _user_error(train_student, capsys, tmp_path / "missing.pth", *common)
    assert "does not exist" in err
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    assert "not a file torch.save" in _user_error(train_teacher, capsys, bad, *common)
    # a 10-class MNIST model scored on CIFAR-100: the class counts differ
    err = _user_error(train_teacher, capsys, mnist_teacher / "best.pth", "--dataset", "cifar100",
                      "--data_folder", cifar100_tiny, "--save_folder", tmp_path / "save")
    assert "10 classes" in err and "100" in err
    assert not (tmp_path / "save").exists()


def test_simkd_student(cifar100_small, tmp_path, capsys, teacher_ckpt):
    run = run_student("simkd", "resnet8", cifar100_small, tmp_path / "simkd",
                      teacher=teacher_ckpt("wrn_16_2"))
    path = run / "best.pth" if (run / "best.pth").exists() else run / "last.pth"
    checkpoint = torch.load(path, weights_only=True)
    capsys.readouterr()
    line = _evaluate(train_student, capsys, path, "--dataset", "cifar100", "--data_folder",
                     cifar100_small, "--save_folder", tmp_path / "save", "--print_freq", "1000")
    assert f"top-1 {checkpoint['accuracy']:.2f}" in line and "resnet8" in line
    result = json.loads(record_in(tmp_path / "save", path).read_text())
    assert result["acc"] == pytest.approx(checkpoint["accuracy"], abs=1e-9)
    deployed, _ = load_teacher(path, 100)
    assert type(deployed).__name__ == "SimKDStudent"


def test_two_gloo_processes_score_the_whole_test_set(mnist_teacher, mnist_small, tmp_path):
    """Each process scores its shard and the counts are summed: the one-process figures."""
    import socket
    import subprocess
    import sys
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "best.pth"
    path.write_bytes((mnist_teacher / "best.pth").read_bytes())
    done = subprocess.run(
        [sys.executable, str(repo / "train_teacher.py"), "--evaluate", str(path), *MNIST,
         "--data_folder", str(mnist_small), "--save_folder", str(tmp_path / "save"),
         "--multiprocessing-distributed", "--nproc", "2", "--dist-url", f"tcp://127.0.0.1:{port}"],
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}, timeout=300,
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sum(line.startswith("evaluate ") for line in done.stdout.splitlines()) == 1
    result = json.loads(record_in(tmp_path / "save", path).read_text())
    summary = read_summary(mnist_teacher)
    assert result["world_size"] == 2 and result["images"] == 500
    assert abs(result["acc"] - summary["best_acc"]) < 0.3  # float summation order may flip one
    assert not (tmp_path / "best.pth.eval.json").exists()


def by_hand(model, data_folder, mean, std, dataset="cifar100"):
    """Top-1 (%) and mean cross-entropy of ``model`` on the test split of a CIFAR folder,
    normalised with ``mean``/``std`` in float64 (an independent path: the pickle read here, one
    image at a time)."""
    import pickle
    split, key = {"cifar100": ("cifar-100-python/test", b"fine_labels"),
                  "cifar10": ("cifar-10-batches-py/test_batch", b"labels")}[dataset]
    with open(Path(data_folder) / split, "rb") as f:
        entry = pickle.load(f)
    images = torch.tensor(entry[b"data"], dtype=torch.float64).view(-1, 3, 32, 32) / 255
    m = torch.tensor(mean, dtype=torch.float64).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, 3, 1, 1)
    correct, loss = 0, 0.0
    with torch.no_grad():
        for x, y in zip((images - m) / s, entry[key]):
            logits = model(x[None].float()).double()
            correct += int(logits.argmax(1).item() == y)
            loss += torch.nn.functional.cross_entropy(logits, torch.tensor([y])).item()
    return 100.0 * correct / len(images), loss / len(images)


def test_a_checkpoint_is_scored_on_its_own_normalisation(cifar100_tiny, tmp_path, capsys):
    """A checkpoint recording ImageNet's mean and std, scored on CIFAR-100 (whose pipeline
    normalises otherwise), sees its own normalisation: the by-hand accuracy on those inputs."""
    from helpers import save_teacher
    from models import create_model
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    path = save_teacher("resnet8", tmp_path / "resnet8.pth")
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["normalization"] = {"mean": imagenet[0], "std": imagenet[1]}
    torch.save(checkpoint, path)
    model = create_model("resnet8", 100).eval()
    model.load_state_dict(checkpoint["model"])
    acc, loss = by_hand(model, cifar100_tiny, *imagenet)
    line = _evaluate(train_teacher, capsys, path, "--dataset", "cifar100", "--data_folder",
                     cifar100_tiny, "--save_folder", tmp_path / "save")
    result = json.loads(record_in(tmp_path / "save", path).read_text())
    assert result["acc"] == pytest.approx(acc, abs=1e-9)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["normalization"]["checkpoint"] == {"mean": imagenet[0], "std": imagenet[1]}
    assert result["normalization"]["data"]["mean"] == pytest.approx([0.5071, 0.4867, 0.4408])
    assert "re-normalised" in line
    # the same file without its record is scored on the data's normalisation
    del checkpoint["normalization"]
    torch.save(checkpoint, path)
    _evaluate(train_teacher, capsys, path, "--dataset", "cifar100", "--data_folder",
              cifar100_tiny, "--save_folder", tmp_path / "save")
    plain = json.loads(record_in(tmp_path / "save", path).read_text())
    cifar = ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    acc, loss_cifar = by_hand(model, cifar100_tiny, *cifar)
    assert plain["acc"] == pytest.approx(acc, abs=1e-9)
    assert plain["loss"] == pytest.approx(loss_cifar, rel=1e-5)
    assert abs(loss_cifar - loss) > 1e-3 * loss  # the two normalisations score differently
    assert "checkpoint" not in plain["normalization"]

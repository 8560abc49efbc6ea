"""What a user sees when a run folder is contested or a write fails (issue 21): one line on
stderr, exit code 2 (130 for Ctrl-C), the folder owned by one run at a time, and no leftovers."""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import helper.core.files
import helper.run.trainer
import train_student
import train_teacher
from conftest import REPO
from helper.core.errors import UserError
from helper.core.files import atomic_save
from models import create_model

RUN = ("teachers", "mlp_800_vanilla_mnist_trial_0")


def _args(data, save, *more):
    return ["--model", "mlp_800", "--dataset", "mnist", "--data_folder", str(data),
            "--save_folder", str(save), "--epochs", "1", "--print_freq", "1000", *more]


def _fails(argv, capsys, *fragments, main=train_teacher.main, code=2):
    """Run ``main(argv)``: it must exit with ``code``, one line on stderr holding ``fragments``."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err.strip()


def _dead_pid():
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _leftovers(folder):
    """Lock and temporary files anywhere under ``folder``."""
    return [p.name for p in folder.rglob(".*")]


def _during_first_epoch(monkeypatch, action):
    """Call ``action()`` once, at the start of the first epoch trained from now on."""
    real, calls = helper.run.trainer.train_one_epoch, []

    def wrapped(*args, **kwargs):
        if not calls:
            calls.append(1)
            action()
        return real(*args, **kwargs)
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", wrapped)


def test_second_run_in_a_held_folder_is_refused(mnist_small, tmp_path, capsys, monkeypatch):
    args = _args(mnist_small, tmp_path, "--epochs", "2")
    errors = []

    def second_runs():
        capsys.readouterr()
        for argv in (args, [*args, "--learning_rate", "0.1"], [*args, "--resume"]):
            errors.append(_fails(argv, capsys, "is in use by another run",
                                 f"pid {os.getpid()} on {socket.gethostname()}"))
    _during_first_epoch(monkeypatch, second_runs)
    train_teacher.main(args)
    assert len(errors) == 3
    run = tmp_path.joinpath(*RUN)
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 2
    assert json.loads((run / "summary.json").read_text())["args"]["learning_rate"] == 0.05
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert _leftovers(tmp_path) == []  # the lock is gone with the run


def test_stale_lock_and_temporary_files_are_taken_over(mnist_small, tmp_path, capsys):
    run = tmp_path.joinpath(*RUN)
    run.mkdir(parents=True)
    dead = _dead_pid()
    (run / ".lock").write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    (run / f".last.pth.tmp{dead}").write_bytes(b"\0" * 1000)  # a write killed by kill -9
    train_teacher.main(_args(mnist_small, tmp_path))
    assert f"locked by pid {dead}, which is no longer running" in capsys.readouterr().out
    assert _leftovers(tmp_path) == []
    assert (run / "last.pth").exists()


def test_lock_of_another_host_is_refused_and_kept(mnist_small, tmp_path, capsys):
    run = tmp_path.joinpath(*RUN)
    run.mkdir(parents=True)
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    _fails(_args(mnist_small, tmp_path), capsys, "in use by a run on host elsewhere (pid 1)",
           f"if that run is dead, delete {run / '.lock'}")
    assert [p.name for p in run.iterdir()] == [".lock"]


def test_resume_refuses_changed_arguments(mnist_small, tmp_path, capsys):
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("mlp_1200", 10).state_dict(), "model_name": "mlp_1200"},
               teacher)
    other = tmp_path / "other.pth"  # the same architecture, other weights
    torch.save({"model": create_model("mlp_1200", 10).state_dict(), "model_name": "mlp_1200"},
               other)
    args = ["--model_s", "mlp_800", "--path_t", str(teacher), *_args(mnist_small, tmp_path)[2:]]
    train_student.main(args)
    run = next((tmp_path / "students").iterdir())
    _fails([*args, "--resume", "--path_t", str(other)], capsys,
           f"the teacher file {other} is not the one the run started with",
           main=train_student.main)
    for flag, value, old in (("--learning_rate", "0.1", "0.05"),
                             ("--batch_size", "32", "64"), ("--kd_T", "2", "4.0")):
        _fails([*args, "--resume", flag, str(value)], capsys,
               f"it was trained with {flag} {old}, this run has {value}", main=train_student.main)
    teacher_copy = tmp_path / "copy" / teacher.name  # the same bytes: the same teacher
    teacher_copy.parent.mkdir()
    teacher_copy.write_bytes(teacher.read_bytes())
    train_student.main([*args, "--resume", "--epochs", "2", "--path_t", str(teacher_copy)])
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["args"]["learning_rate"] == 0.05
    _fails([*args, "--resume", "--epochs", "1"], capsys,
           "this run already has 2 epochs; pass --epochs > 2 to continue it",
           main=train_student.main)
    assert _leftovers(tmp_path) == []


def test_failure_before_the_first_epoch_ends_leaves_nothing(mnist_small, tmp_path, capsys,
                                                            monkeypatch):
    save = tmp_path / "save"

    def fail():
        raise UserError("the method failed")
    _during_first_epoch(monkeypatch, fail)
    _fails(_args(mnist_small, save), capsys, "the method failed")
    assert not save.exists()

    def interrupt():
        raise KeyboardInterrupt
    _during_first_epoch(monkeypatch, interrupt)
    with pytest.raises(KeyboardInterrupt) as exit_info:  # also a SystemExit with code 130
        train_teacher.main(_args(mnist_small, save))
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted at epoch 1; nothing was saved\n"
    assert not save.exists()


def test_failed_resume_keeps_the_previous_run(mnist_small, tmp_path, capsys, monkeypatch):
    train_teacher.main(_args(mnist_small, tmp_path))
    run = tmp_path.joinpath(*RUN)
    before = sorted(p.name for p in run.iterdir())

    def fail():
        raise UserError("the method failed")
    _during_first_epoch(monkeypatch, fail)
    _fails(_args(mnist_small, tmp_path, "--resume", "--epochs", "2"), capsys, "the method failed")
    assert sorted(p.name for p in run.iterdir()) == before  # no lock, no second events file
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1


class _FullDisk:
    """A file whose writes fail with ENOSPC, as on a full disk."""

    def __init__(self, f):
        self.f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _disk_full_for(monkeypatch, name):
    """Writes through ``atomic_write`` to files named ``name`` fail as on a full disk."""
    def fake_open(path, mode="r", *args, **kwargs):
        f = open(path, mode, *args, **kwargs)
        return _FullDisk(f) if f"{name}.tmp" in str(path) else f
    monkeypatch.setattr(helper.core.files, "open", fake_open, raising=False)


def test_torch_save_on_a_full_disk_is_an_os_error(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    atomic_save({"epoch": 1}, path)
    _disk_full_for(monkeypatch, "last.pth")
    with pytest.raises(OSError) as error:  # torch.save raises "RuntimeError: ... unexpected pos"
        atomic_save({"w": torch.zeros(1000)}, path)
    assert error.value.errno == errno.ENOSPC
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_full_disk_at_the_first_checkpoint_claims_no_previous_one(mnist_small, tmp_path, capsys,
                                                                  monkeypatch):
    _disk_full_for(monkeypatch, "best.pth")
    err = _fails(_args(mnist_small, tmp_path / "save"), capsys,
                 "best.pth (No space left on device)", "start the run again")
    assert "previous" not in err and "--resume" not in err
    assert not (tmp_path / "save").exists()


def test_full_disk_at_summary_leaves_no_temporary_file(mnist_small, tmp_path, capsys, monkeypatch):
    _disk_full_for(monkeypatch, "summary.json")
    _fails(_args(mnist_small, tmp_path), capsys, "summary.json (No space left on device)",
           "continue with --resume")
    run = tmp_path.joinpath(*RUN)
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    assert _leftovers(tmp_path) == []


def test_full_disk_at_tensorboard_events_is_one_line(mnist_small, tmp_path, capsys, monkeypatch):
    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    printed = []  # what reaches the hook that prints a thread's traceback
    monkeypatch.setattr(threading, "excepthook", printed.append)
    monkeypatch.setattr(RecordWriter, "write", full)
    _fails(_args(mnist_small, tmp_path / "save"), capsys, "TensorBoard events",
           "No space left on device")
    assert printed == []
    assert not (tmp_path / "save").exists()


def test_full_disk_before_the_run_starts_is_one_line(mnist_small, tmp_path, capsys, monkeypatch):
    real_write = os.write

    def full(fd, data):
        if fd > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)
    monkeypatch.setattr(os, "write", full)
    _fails(_args(mnist_small, tmp_path / "save"), capsys, "cannot write in the run folder",
           "No space left on device")
    monkeypatch.undo()
    assert not (tmp_path / "save").exists()


def test_save_folder_that_is_a_file(mnist_small, tmp_path, capsys):
    save = tmp_path / "save"
    save.write_text("not a folder")
    _fails(_args(mnist_small, save), capsys, f"{save} is a file, not a folder", "--save_folder")
    assert save.read_text() == "not a folder"


@pytest.mark.skipif(os.geteuid() == 0, reason="permission bits do not stop root from writing")
@pytest.mark.parametrize("where", ["save folder", "parent"])
def test_save_folder_that_cannot_be_written(mnist_small, tmp_path, capsys, where):
    locked = tmp_path / "locked"
    locked.mkdir()
    save = locked if where == "save folder" else locked / "save"
    locked.chmod(0o555)
    try:
        _fails(_args(mnist_small, save), capsys, "cannot create the run folder",
               "Permission denied", "--save_folder")
    finally:
        locked.chmod(0o755)
    assert list(locked.iterdir()) == []


def test_ctrl_c_is_one_line_and_keeps_the_last_epoch(mnist_small, tmp_path):
    argv = _args(mnist_small, tmp_path, "--epochs", "100")
    # A suite started in the background (CI, nohup ... &) has SIGINT ignored, which children
    # inherit and Python then never turns into KeyboardInterrupt: give the child the default.
    process = subprocess.Popen([sys.executable, "train_teacher.py", *argv], cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={**os.environ, "OMP_NUM_THREADS": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in process.stdout:
            if line.startswith("Epoch 2:"):  # epoch 1 is saved
                break
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith("; continue with --resume"), err
    epoch = int(lines[0].split("interrupted at epoch ")[1].split(";")[0])
    run = tmp_path.joinpath(*RUN)
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] in (epoch - 1, epoch)
    assert _leftovers(tmp_path) == []


def test_ctrl_c_during_an_epochs_files_takes_effect_after_them():
    """A KeyboardInterrupt raised inside TensorBoard's writer can leave its queue's lock held
    (the run then hangs at exit): Ctrl-C while the epoch's files are written waits for them."""
    from helper.run.run_folder import deferred_interrupt
    done = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with deferred_interrupt():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler has run: nothing was raised here
                done.append("files written")
        assert done == ["files written"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, previous)

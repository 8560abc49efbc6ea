"""Issue 29, items 2-9: the new surfaces fail cleanly (one line, exit code 2, nothing
half-written) and a checkpoint or data file never runs code: CIFAR pickles, --config, the
teacher zoo's --url, a user's model that raises, lock files, -b, and the --resume checks (the
teacher file by its SHA-256; every option fixed unless declared free)."""
import json
import os
import pickle
import socket
import struct

import numpy as np
import pytest
import torch

import train_teacher
from dataset.cifar import load_cifar
from distillers import distiller_names
from helper.teachers import zoo as teachers
from helper.core.errors import UserError
from helper.run.options import (parse_student_args, parse_teacher_args, student_parser,
                            teacher_parser)
from helper.run.resume import RESUME_FREE, check_same_args, plain
from helper.run.run_folder import RunFolder, pid_alive
from helpers import one_line_exit, run_student, save_teacher




# ---- 2. CIFAR pickles: data only ------------------------------------------------------------
def _py2_str(raw: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle writes it (SHORT_BINSTRING, or BINSTRING when long)."""
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + struct.pack("<i", len(raw)) + raw


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if 0 <= value < 65536:
        return b"M" + struct.pack("<H", value)
    return b"J" + struct.pack("<i", value)


def _py2_value(value) -> bytes:
    """``value`` (a str, an int, a list of them, a 2-d uint8 array) as Python 2's cPickle
    protocol 2 writes it, with numpy 1's array reduction, as in the published CIFAR files."""
    if isinstance(value, str):
        return _py2_str(value.encode("latin1"))
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    assert value.dtype == np.uint8 and value.ndim == 2
    dtype = (b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"
             b"(" + _py2_int(3) + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff"
             + _py2_int(0) + b"tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85"
            + _py2_str(b"b") + b"\x87R(" + _py2_int(1) + _py2_int(value.shape[0])
            + _py2_int(value.shape[1]) + b"\x86" + dtype + b"\x89" + _py2_str(value.tobytes())
            + b"tb")


def _py2_pickle(entries: dict) -> bytes:
    items = b"".join(_py2_value(k) + _py2_value(v) for k, v in entries.items())
    return b"\x80\x02}(" + items + b"u."


def _cifar100_entries(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 100, n).tolist()
    return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": labels,
            "coarse_labels": [k // 5 for k in labels], "batch_label": "training batch 1 of 1",
            "filenames": [f"img_{i}.png" for i in range(n)]}


def _write_cifar100(folder, write):
    """CIFAR-100's three files in ``folder``, each written by ``write(path, dict)``; returns
    the train and test dicts."""
    folder.mkdir(parents=True)
    train, test = _cifar100_entries(6, 0), _cifar100_entries(4, 1)
    for name, entries in (("train", train), ("test", test), ("meta", {
            "fine_label_names": [f"c{i}" for i in range(100)],
            "coarse_label_names": [f"s{i}" for i in range(20)]})):
        write(folder / name, entries)
    return train, test


def _assert_loads(root, train, test):
    train_x, train_y, test_x, test_y, n = load_cifar("cifar100", root, download=False)
    assert n == 100
    assert np.array_equal(train_x.numpy().reshape(-1, 3072), train["data"])
    assert train_y.tolist() == train["fine_labels"] and test_y.tolist() == test["fine_labels"]
    assert np.array_equal(test_x.numpy().reshape(-1, 3072), test["data"])


class _RunsCode:
    """Unpickled by a full ``pickle.load``, it makes the folder ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("planted", ["meta", "train"])
def test_cifar_pickles_build_data_only(tmp_path, planted):
    # the published files (Python 2, protocol 2) and Python 3's protocols 0 to 5 load
    def python2(path, entries):
        raw = _py2_pickle(entries)
        assert pickle.loads(raw, encoding="latin1").keys() == entries.keys()  # a valid pickle
        path.write_bytes(raw)
    _assert_loads(tmp_path / "py2", *_write_cifar100(tmp_path / "py2" / "cifar-100-python",
                                                     python2))
    for protocol in range(6):
        def python3(path, entries):
            path.write_bytes(pickle.dumps({k.encode(): v for k, v in entries.items()},
                                          protocol=protocol))
        root = tmp_path / f"protocol{protocol}"
        _assert_loads(root, *_write_cifar100(root / "cifar-100-python", python3))

    # a file whose pickle would run code is refused, and the code never runs
    folder = tmp_path / "py2" / "cifar-100-python"
    entries = pickle.loads((folder / planted).read_bytes(), encoding="latin1")
    marker = tmp_path / "code_ran"
    entries["filenames" if planted == "train" else "fine_label_names"] = _RunsCode(marker)
    (folder / planted).write_bytes(pickle.dumps(entries, protocol=2))
    with pytest.raises(UserError) as e:
        load_cifar("cifar100", tmp_path / "py2", download=False)
    assert f"CIFAR file {folder / planted} names code to run (posix.mkdir)" in str(e.value)
    assert "\n" not in str(e.value)
    assert not marker.exists()


# ---- 3. --config: a binary file ------------------------------------------------------------
def test_config_pointing_at_a_checkpoint_is_one_line(tmp_path, capsys):
    checkpoint = tmp_path / "best.pth"
    torch.save({"model": {"w": torch.randn(64, 64)}}, checkpoint)
    line = one_line_exit(capsys, parse_student_args, "--config", str(checkpoint))
    assert f"--config {checkpoint}: not a text file (not UTF-8)" in line


# ---- 4. teacher zoo: --url that is no URL --------------------------------------------------
def test_fetch_with_a_url_that_is_none_is_one_line(tmp_path, capsys):
    save = tmp_path / "save"
    line = one_line_exit(capsys, teachers.main, "fetch", "resnet56", "--url", "notaurl",
                          "--save_folder", str(save))
    assert "cannot download 'notaurl': not a URL" in line and "https://" in line
    assert not save.exists()


# ---- 5. --model FILE.py:FUNCTION whose function raises --------------------------------------
def test_user_model_that_raises_keeps_its_traceback_then_one_line(tmp_path, capsys,
                                                                  cifar100_micro):
    source = tmp_path / "mymodel.py"
    source.write_text("def check(num_classes):\n"
                      "    raise ValueError(f'no net for {num_classes} classes')\n\n\n"
                      "def raises(num_classes):\n"
                      "    check(num_classes)\n")
    save = tmp_path / "save"
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", f"{source}:raises", "--data_folder", str(cifar100_micro),
                            "--save_folder", str(save), "--epochs", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"
    assert f'File "{source}", line 6, in raises' in err[1]  # the user's frames, not ours
    assert err[-2] == "ValueError: no net for 100 classes"
    assert err[-1].startswith(f"error: raises(num_classes=100) in {source} raised ValueError")
    assert not save.exists()


# ---- 6. lock files: every content gets a decision and a line --------------------------------
def _pid_here(pid):
    return lambda lock: lock.write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


NOT_A_LOCK = 'holds no {"pid": ..., "host": ...}'


@pytest.mark.parametrize("write, says", [
    (_pid_here(99999999999), "holds pid 99999999999, which no process can have"),
    (_pid_here(0), "holds pid 0, which no process can have"),
    (_pid_here(-1), "holds pid -1, which no process can have"),
    (lambda lock: lock.write_bytes(b"\x80\x04\x95garbage\xff\x00"), NOT_A_LOCK),
    (lambda lock: lock.write_text('{"pid": "12", "host": 3}'), NOT_A_LOCK),
    (lambda lock: lock.write_text("[" * 100000), NOT_A_LOCK),
    (lambda lock: lock.write_text(""), "is empty"),
    (lambda lock: lock.mkdir(), "is a folder, not a lock file"),
], ids=["huge_pid", "pid_0", "negative_pid", "garbage", "wrong_types", "deep_json", "empty",
        "folder"])
def test_any_lock_content_is_refused_in_one_line_and_kept(tmp_path, write, says):
    run = tmp_path / "run"
    run.mkdir()
    lock = run / ".lock"
    write(lock)
    before = lock.read_bytes() if lock.is_file() else None
    with pytest.raises(UserError) as e:
        with RunFolder(run, log=print):
            pass
    message = str(e.value)
    assert message.startswith(f"{run} is locked: its .lock {says}")
    assert message.endswith(f"if no run uses this folder, delete {lock} and start again")
    assert "\n" not in message
    assert (lock.read_bytes() if lock.is_file() else None) == before and lock.exists()


def test_temporary_file_named_by_an_impossible_pid_is_removed(tmp_path):
    assert not pid_alive(99999999999) and not pid_alive(0) and not pid_alive(-1)
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last.pth.tmp99999999999").write_bytes(b"half")
    with RunFolder(run, log=print):
        assert [p.name for p in run.iterdir()] == [".lock"]


# ---- 7. -b naming a method twice, or one not in --distill ------------------------------------
def test_b_naming_a_method_twice_or_an_unknown_one_is_one_line(capsys):
    for distill, beta, says in (
            ("dkd+rkd", "dkd=1,dkd=2", "dkd is named twice in 'dkd=1,dkd=2'"),
            ("dkd", "dkd=1,dkd=2", "dkd is named twice"),
            ("fitnet+kd", "fitnet=1,hint=2", "-b names fitnet twice (as hint too)"),
            ("fitnet", "hint=1,fitnet=2", "-b names fitnet 2 times (hint, fitnet)"),
            ("dkd+rkd", "dkd=1,foo=2", "-b names foo, which is not in --distill dkd+rkd")):
        line = one_line_exit(capsys, parse_student_args, "--distill", distill, "-b", beta)
        assert says in line, line


# ---- 8. and 9. --resume: the teacher file by content, every option fixed unless free ----------
def test_resume_compares_the_teacher_file_and_the_seed(tmp_path, capsys, cifar100_micro):
    teacher = save_teacher("resnet8", tmp_path / "teacher.pth", batch_size=4)
    original = teacher.read_bytes()

    def run(*flags, path_t=teacher):
        return run_student("kd", "resnet8", cifar100_micro, tmp_path / "save", *flags,
                           teacher=path_t, batch_size=10)
    folder = run()
    last = folder / "last.pth"
    assert json.loads((folder / "summary.json").read_text())["teacher_sha256"] == [
        torch.load(last, weights_only=True)["teacher_sha256"][0]]
    written = last.read_bytes()

    other = torch.load(teacher, weights_only=True)  # the same architecture, other weights
    other["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in other["model"].items()}
    torch.save(other, teacher)
    capsys.readouterr()
    line = one_line_exit(capsys, lambda argv: run(*argv), "--epochs", "2", "--resume")
    assert f"the teacher file {teacher} is not the one the run started with" in line
    moved = tmp_path / "moved.pth"
    moved.write_bytes(original)
    line = one_line_exit(capsys, lambda argv: run(*argv, path_t=moved), "--epochs", "2",
                          "--resume", "--seed", "7")
    assert "it was trained with --seed 12345, this run has 7" in line
    assert last.read_bytes() == written
    assert json.loads((folder / "summary.json").read_text())["args"]["seed"] == 12345

    run("--epochs", "2", "--resume", path_t=moved)  # the run's teacher, moved: it continues
    assert torch.load(last, weights_only=True)["epoch"] == 2


def _changed(value):
    """A value unlike ``value`` (as last.pth stores it)."""
    return "something else" if value != "something else" else "another thing"


def _runs():
    """A run of each parser and each method: together they use every declared option."""
    yield parse_teacher_args(["--dataset", "mnist", "--model", "mlp_800"])
    for name in distiller_names():
        yield parse_student_args(["--distill", name])


def test_every_declared_option_is_fixed_on_resume_or_declared_free():
    declared = {a.dest for parser in (student_parser(), teacher_parser())
                for a in parser._actions if a.dest != "help"}
    assert RESUME_FREE <= declared, sorted(RESUME_FREE - declared)  # no stale names
    refused = set()
    for config in _runs():
        stored = plain(config.effective_args())
        check_same_args(config, stored, "last.pth")  # unchanged: it continues
        for name in config.option_names:
            try:
                check_same_args(config, {**stored, name: _changed(stored.get(name))}, "last.pth")
            except UserError as e:
                assert f"--{name} " in str(e)
                refused.add(name)
    assert not refused & RESUME_FREE, sorted(refused & RESUME_FREE)
    assert declared - RESUME_FREE == refused, sorted(declared - RESUME_FREE - refused)
    assert {"seed", "jitter", "trial", "aug", "mixup", "dkd_alpha"} <= refused


def test_resume_refuses_a_changed_seed_or_jitter_and_allows_more_epochs(capsys):
    flags = ["--dataset", "mnist", "--model", "mlp_800"]
    stored = plain(parse_teacher_args(flags).effective_args())
    for more, says in ((["--seed", "7"], "--seed 12345, this run has 7"),
                       (["--jitter", "2"], "--jitter 0, this run has 2")):
        with pytest.raises(UserError) as e:
            check_same_args(parse_teacher_args([*flags, *more]), stored, "last.pth")
        assert says in str(e.value)
    check_same_args(parse_teacher_args([*flags, "--epochs", "300"]), stored, "last.pth")

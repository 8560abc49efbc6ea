"""The report over damaged run folders (issue 21): a summary.json it cannot use, and a run
folder without one, is skipped with one line naming it; the good runs are still reported."""
import json
import os
import socket
import subprocess

import pytest

from helper.report import load_runs, main, report
from test_report import _write


def test_truncated_summary_is_skipped_with_one_warning(tmp_path, capsys):
    _write(tmp_path, "good", best=74.0, last=73.0)
    _write(tmp_path, "cut", best=75.0, last=74.0, trial="1")
    cut = tmp_path / "cut" / "summary.json"
    cut.write_text(cut.read_text()[:40])  # an interrupted copy
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    [line] = err.splitlines()
    assert line.startswith(f"warning: skipped {cut}: not valid JSON (") and line.endswith("; truncated?)")
    rows = out.splitlines()[2:]
    assert len(rows) == 1 and "| 1 | 74.00 ± 0.00 | 73.00 ± 0.00 |" in rows[0]


@pytest.mark.parametrize("text,why", [
    ("", "not valid JSON"),
    ("[1, 2]", "holds no JSON object"),
    (json.dumps({"args": {}, "dataset": "cifar100"}), "lacks model_name, distill, best_acc, last_acc"),
    (json.dumps({"args": [], "dataset": "c", "model_name": "m", "distill": "kd", "best_acc": 1,
                 "last_acc": 1}), "its args are not a JSON object"),
    (json.dumps({"args": {}, "dataset": "c", "model_name": "m", "distill": "kd",
                 "best_acc": None, "last_acc": "1"}), "its best_acc and last_acc are not a number"),
    (json.dumps({"args": {}, "dataset": "c", "model_name": "m", "distill": "kd", "best_acc": 1,
                 "last_acc": 1, "extra_models": {"peer1": {"best_acc": 1}}}),
     "its extra_models entry 'peer1' lacks a model_name or accuracies"),
])
def test_unusable_summaries_are_named(tmp_path, text, why):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(text)
    (tmp_path / "bytes").mkdir()
    (tmp_path / "bytes" / "summary.json").write_bytes(b"\xff\xfe{")
    warnings = []
    assert load_runs([tmp_path], warnings.append) == []
    assert warnings[0].startswith(f"warning: skipped {tmp_path / 'bytes' / 'summary.json'}: "
                                  f"cannot be read (UnicodeDecodeError")
    assert warnings[1].startswith(f"warning: skipped {tmp_path / 'run' / 'summary.json'}: {why}")
    assert len(warnings) == 2


def test_only_unusable_summaries_is_an_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text('{"args": {')
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith(f"warning: skipped {tmp_path / 'run' / 'summary.json'}")
    assert "no readable summary.json" in err and "1 skipped" in err


def _lock(folder, pid):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("epochs: 1\n")
    (folder / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))


def test_run_folders_without_summary_are_named(tmp_path, capsys):
    """A run killed in its first epoch leaves its config.yaml and lock (its pid, now dead);
    killed after its last.pth but before its summary.json (its lock since removed by hand), its
    config.yaml and last.pth; a run in its first epoch holds its lock: each is named in one
    line, the other runs are reported. A config.yaml alone (a copy) is no run folder."""
    _write(tmp_path, "good", best=74.0, last=73.0)
    dead = subprocess.Popen(["true"])  # a pid that no longer runs
    dead.wait()
    _lock(tmp_path / "killed", dead.pid)
    _lock(tmp_path / "training", os.getpid())
    (tmp_path / "saved").mkdir()
    for name in ("config.yaml", "last.pth"):  # no lock: removed by hand
        (tmp_path / "saved" / name).write_bytes(b"")
    (tmp_path / "copy").mkdir()  # a config.yaml kept to rerun a run: no run folder
    (tmp_path / "copy" / "config.yaml").write_text("epochs: 1\n")
    main([str(tmp_path)])
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        f"warning: skipped {tmp_path / 'killed'}: no summary.json; its run stopped before "
        "writing one (failed or killed in its first epoch): start it again, or delete the folder",
        f"warning: skipped {tmp_path / 'saved'}: no summary.json; its run stopped before "
        "writing one (failed or killed in its first epoch): start it again, or delete the folder",
        f"note: skipped {tmp_path / 'training'}: no summary.json yet; its run is in its first "
        "epoch"]
    assert len(out.splitlines()[2:]) == 1


def test_unreadable_lock_and_other_host_count_as_running(tmp_path):
    """A lock that cannot be read, or held on another host (whose processes cannot be asked),
    is taken as held, as RunFolder does: the run counts as running."""
    for name, lock in (("garbled", "{"), ("remote", json.dumps({"pid": 1, "host": "elsewhere"}))):
        folder = _write(tmp_path, name, best=1.0, last=1.0, finished=False, trial=name)
        (folder / ".lock").write_text(lock)
    [row] = report(load_runs([tmp_path])).splitlines()[2:]
    assert "| 0 (+2 running) |" in row

"""The report over real run folders (issue 26): every kind of run the entry scripts write (a
plain run and its trial, a ``--config`` rerun, combined methods with their text betas, two
teachers, DML's peers, a teacher, a run still training, an interrupted run, one killed in its
first epoch, a truncated summary) gives one table and exit code 0; and, last in the session,
so does every run folder the suite made. Which flags make a recipe is checked against the
parsers, so that a new flag cannot be left out."""
import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import helper.run.trainer
import train_student
import train_teacher
from helper.report import (NOT_RECIPE, PRESENCE_ONLY, RECIPE, accuracy_curve, load_runs, main,
                           report)
from helpers import run_student

REPO = Path(__file__).resolve().parents[1]
TINY = ("--batch_size", "16", "--deterministic")

# A process that dies as by SIGKILL in its first epoch: its config.yaml and lock stay.
KILLED_IN_FIRST_EPOCH = ("import os, signal, sys; import helper.run.trainer as t; "
                         "t.train_one_epoch = lambda *a, **k: "
                         "os.kill(os.getpid(), signal.SIGKILL); "
                         "import train_student; train_student.main(sys.argv[1:])")


def _dests(parser):
    return {a.dest for a in parser._actions if a.dest != "help"}


def _method_flags():
    from distillers import option_owners
    from distillers.options import add_options
    parser = argparse.ArgumentParser()
    add_options(parser, option_owners())
    return _dests(parser)


def _run_flags():
    """The flags of the two entry scripts that are not a method's options."""
    from helper.run.options import student_parser, teacher_parser
    return (_dests(student_parser()) | _dests(teacher_parser())) - _method_flags()


def test_every_flag_is_recipe_or_not():
    """Each flag of the entry scripts is a method's option (recipe) or in exactly one of the
    report's sets; none of those names a flag that no longer exists."""
    run_flags = _run_flags()
    classified = [NOT_RECIPE, PRESENCE_ONLY, RECIPE]
    unclassified = run_flags - set().union(*classified)
    assert not unclassified, f"classify in helper/report.py: {sorted(unclassified)}"
    assert sum(len(s) for s in classified) == len(set().union(*classified))  # disjoint
    assert set().union(*classified) <= run_flags


def _interrupted_in_second_epoch(seen, *argv):
    """``train_student.main(argv)`` (two epochs) interrupted by Ctrl-C in its second epoch; at
    the start of each epoch ``seen`` gets the report's warnings and table over its folder."""
    real = helper.run.trainer.train_one_epoch
    save = Path(argv[argv.index("--save_folder") + 1])

    def watched(model, loader, optimizer, epoch, *args, **kwargs):
        warnings = []
        runs = load_runs([save], warnings.append)
        seen.append((warnings, report(runs) if runs else None))
        if epoch == 2:
            raise KeyboardInterrupt("simulated Ctrl-C")
        return real(model, loader, optimizer, epoch, *args, **kwargs)

    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(helper.run.trainer, "train_one_epoch", watched)
        with pytest.raises(KeyboardInterrupt):
            train_student.main(list(argv))


def _killed_in_first_epoch(*argv):
    done = subprocess.run([sys.executable, "-c", KILLED_IN_FIRST_EPOCH, *map(str, argv)],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == -9, done.stderr


@pytest.fixture(scope="session")
def real_runs(tmp_path_factory, cifar100_micro, teacher_ckpt):
    """``(root, {label: run folder}, what the report saw while a run trained)``: one epoch of
    each kind of run on 10 images, each under its own save folder in ``root``."""
    root = tmp_path_factory.mktemp("report_runs")
    data, t1, t2 = cifar100_micro, teacher_ckpt("resnet8"), teacher_ckpt("resnet8x4")
    runs = {}

    def student(label, method, *flags, teacher=t1):
        runs[label] = run_student(method, "resnet8", data, root / label, *TINY, *flags,
                                  teacher=teacher, batch_size=16)

    student("kd", "kd")
    student("kd_trial1", "kd", "--trial", "1")
    train_student.main(["--config", str(runs["kd"] / "config.yaml"),
                        "--save_folder", str(root / "rerun")])
    runs["rerun"] = next((root / "rerun" / "students").iterdir())
    student("combined", "dkd+rkd", "-b", "dkd=1,rkd=2")
    student("two_teachers", "kd", "--path_t", str(t1), str(t2))
    student("dml", "dml", "--dml_peers", "resnet8", teacher=None)
    train_teacher.main(["--model", "resnet8", "--dataset", "cifar100", "--data_folder",
                        str(data), "--save_folder", str(root / "teacher"), "--epochs", "1",
                        "--print_freq", "1000", *TINY])
    runs["teacher"] = next((root / "teacher" / "teachers").iterdir())
    seen = []
    common = ["--distill", "kd", "--model_s", "resnet8", "--path_t", str(t1),
              "--teacher_forward", "eager", "--dataset", "cifar100", "--data_folder", str(data),
              "--epochs", "2", "--print_freq", "1000", *TINY]
    _interrupted_in_second_epoch(seen, *common, "--save_folder", str(root / "interrupted"))
    _killed_in_first_epoch(*common, "--save_folder", root / "killed")
    runs["killed"] = next((root / "killed" / "students").iterdir())
    runs["truncated"] = root / "copy" / "truncated"
    shutil.copytree(runs["combined"], runs["truncated"])
    summary = runs["truncated"] / "summary.json"
    summary.write_text(summary.read_text()[:100])  # an interrupted copy
    return root, runs, seen


def test_real_runs_give_one_table(real_runs, capsys):
    root, runs, _ = real_runs
    main([str(root)])
    out, err = capsys.readouterr()
    truncated, killed = err.splitlines()
    assert truncated.startswith(f"warning: skipped {runs['truncated'] / 'summary.json'}: not "
                                "valid JSON (") and truncated.endswith("; truncated?)")
    assert killed == (f"warning: skipped {runs['killed']}: no summary.json; its run stopped "
                      "before writing one (failed or killed in its first epoch): start it "
                      "again, or delete the folder")
    header, rule, *rows = out.splitlines()
    assert header.startswith("| data |") and rule.startswith("|---")
    cells = [[c.strip() for c in row.split("|")[1:6]] for row in rows]
    assert sorted(cells) == sorted([
        # trial 0, trial 1 and the --config rerun of trial 0: one recipe
        ["cifar100", "resnet8", "resnet8", "kd (r:1 a:1 b:0, epochs=1)", "3"],
        ["cifar100", "resnet8", "resnet8", "kd (r:1 a:1 b:0, epochs=2)", "0 (+1 stopped)"],
        ["cifar100", "resnet8", "resnet8", "dkd+rkd (r:1 a:0 b:dkd=1,rkd=2)", "1"],
        ["cifar100", "resnet8+resnet8x4", "resnet8", "kd (r:1 a:1 b:0)", "1"],
        ["cifar100", "none", "resnet8", "dml (r:1 a:0 b:1)", "1"],
        ["cifar100", "none", "resnet8", "dml peer1 (r:1 a:0 b:1)", "1"],
        ["cifar100", "-", "resnet8", "vanilla (r:1 a:0 b:0)", "1"],
    ])


def test_plot_of_real_runs_draws_peers_too(real_runs, tmp_path):
    """``--plot`` over every kind of run; DML's peer has its curve under its own tag."""
    pytest.importorskip("matplotlib")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root, runs, _ = real_runs
    main([str(root), "--plot", str(tmp_path / "acc.png")])
    assert (tmp_path / "acc.png").stat().st_size > 1000
    events = EventAccumulator(str(runs["dml"]))
    events.Reload()
    assert list(accuracy_curve({"role": "peer1"}, events)) == [1]
    assert list(accuracy_curve({"role": ""}, events)) == [1]


def test_config_rerun_is_the_run_itself(real_runs):
    """What makes the rerun a trial of its run: the same weights, bit for bit (``--deterministic``
    on the CPU), and args that differ only in --config and --save_folder."""
    _, runs, _ = real_runs
    first, rerun = (torch.load(runs[k] / "best.pth", weights_only=True) for k in ("kd", "rerun"))
    assert all(torch.equal(first["model"][k], rerun["model"][k]) for k in first["model"])
    args = [json.loads((runs[k] / "summary.json").read_text())["args"] for k in ("kd", "rerun")]
    assert {k for k in args[0] if args[0][k] != args[1][k]} == {"config", "save_folder"}


def test_every_recorded_arg_is_a_flag(real_runs):
    """summary.json's args hold the flags only, so every key is classified."""
    _, runs, _ = real_runs
    flags = _run_flags() | _method_flags()
    for label in ("kd", "combined", "two_teachers", "dml", "teacher"):
        args = json.loads((runs[label] / "summary.json").read_text())["args"]
        assert set(args) <= flags, label


def test_a_run_in_training_is_shown_running(real_runs):
    """Seen from inside the run: in its first epoch (no summary.json yet) one note line, in its
    second a row counting it as running; after the Ctrl-C it is stopped (the table above)."""
    root, _, seen = real_runs
    (first_warnings, first_table), (second_warnings, second_table) = seen
    [folder] = (root / "interrupted" / "students").iterdir()
    assert first_warnings == [f"note: skipped {folder}: no summary.json yet; its run is in its "
                              "first epoch"] and first_table is None
    assert second_warnings == []
    [row] = second_table.splitlines()[2:]
    assert "| kd (r:1 a:1 b:0) | 0 (+1 running) |" in row


@pytest.mark.last
def test_report_over_every_run_folder_of_the_session(real_runs, tmp_path_factory):
    """``python -m helper.report`` over every folder the tests of this session wrote (all under
    the session's base temporary folder): one table, exit code 0, whatever the tests left."""
    root = tmp_path_factory.getbasetemp()
    done = subprocess.run([sys.executable, "-m", "helper.report", str(root)], cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| data |") and lines[1].startswith("|---")
    assert all(line.startswith("| ") for line in lines[2:]) and len(lines) > 2
    assert "Traceback" not in done.stderr

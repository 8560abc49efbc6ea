"""The report groups trials, computes mean ± std, sets published figures beside them and keeps
runs in progress, or stopped, apart."""
import json
import os
import socket

import pytest

from helper.report import load_runs, main, report


def _write(root, name, *, best, last, finished=True, running=False, method="kd",
           student="resnet8x4", teacher="resnet32x4", trial="0", **args):
    """A summary.json; ``running``: its folder's lock held by this process, as a run's."""
    folder = root / name
    folder.mkdir(parents=True)
    all_args = {"trial": trial, "cls": 1.0, "div": 1.0, "beta": 0.0, "kd_T": 4.0, "epochs": 240,
                "save_folder": str(root), **args}
    (folder / "summary.json").write_text(json.dumps({
        "args": all_args, "dataset": "cifar100", "teacher": teacher, "model_name": student,
        "distill": method, "best_acc": best, "last_acc": last, "finished": finished}))
    if running:
        (folder / ".lock").write_text(json.dumps({"pid": os.getpid(),
                                                  "host": socket.gethostname()}))
    return folder


def _rows(table):
    """``{method label: row}`` of a table whose student and teacher are the same throughout."""
    return {line.split("|")[4].strip(): line for line in table.splitlines()[2:]}


def test_trials_grouped_with_mean_std_and_published_difference(tmp_path):
    _write(tmp_path, "a", best=74.0, last=73.0, trial="0")
    _write(tmp_path, "b", best=75.0, last=74.0, trial="1")
    _write(tmp_path, "c", best=10.0, last=10.0, trial="2", finished=False, running=True)
    _write(tmp_path, "f", best=12.0, last=11.0, trial="3", finished=False)  # interrupted
    _write(tmp_path, "d", best=77.0, last=76.5, method="simkd", factor=2, cls=0.0, div=0.0, beta=1.0)
    _write(tmp_path, "e", best=76.0, last=75.5, method="simkd", factor=8, cls=0.0, div=0.0, beta=1.0)
    table = report(load_runs([tmp_path]), "simkd_cifar100")
    rows = _rows(table)
    kd = rows["kd (r:1 a:1 b:0)"]
    assert "| 2 (+1 running, +1 stopped) |" in kd
    assert "74.50 ± 0.71" in kd and "73.50 ± 0.71" in kd
    assert "74.42" in kd and "+0.08" in kd  # SimKD's figure, compared on the best accuracy
    assert "78.08" in rows["simkd (r:0 a:0 b:1, factor=2)"]
    assert "76.73" in rows["simkd (r:0 a:0 b:1, factor=8)"] and "-0.73" in rows["simkd (r:0 a:0 b:1, factor=8)"]


def test_last_epoch_metric_and_weight_constraints(tmp_path):
    _write(tmp_path, "a", best=74.0, last=73.5, cls=0.1, div=0.9)
    _write(tmp_path, "b", best=74.0, last=73.5)  # SimKD's weights: not RepDistiller's kd row
    table = report(load_runs([tmp_path]), "repdistiller_cifar100")
    assert "73.33 | +0.17" in table
    assert table.count("73.33") == 1


def test_cli_errors_and_plot(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing")])
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        main([str(tmp_path)])
    assert "no summary.json" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    from torch.utils.tensorboard import SummaryWriter
    _write(tmp_path, "run", best=1.0, last=1.0)
    with SummaryWriter(str(tmp_path / "run")) as w:
        for step in (1, 2, 3):
            w.add_scalar("test/acc", step * 10.0, step)
    main([str(tmp_path), "--plot", str(tmp_path / "acc.png")])
    assert (tmp_path / "acc.png").stat().st_size > 1000


def test_combined_methods_and_several_teachers(tmp_path):
    """``--distill a+b`` records its betas as text (``dkd=1,rkd=2``), several teachers their
    checkpoints as a list and their names joined by '+': shown, grouped by their values."""
    for trial in ("0", "1"):
        _write(tmp_path, f"combined{trial}", best=70.0 + int(trial), last=69.0, trial=trial,
               method="dkd+rkd", beta="dkd=1,rkd=2", div=0.0)
    _write(tmp_path, "other_betas", best=60.0, last=60.0, method="dkd+rkd", beta="dkd=1,rkd=4",
           div=0.0)
    _write(tmp_path, "two_teachers", best=50.0, last=50.0, teacher="resnet32x4+wrn_40_2",
           path_t=["a/best.pth", "b/best.pth"], model_t=["resnet32x4", "wrn_40_2"])
    table = report(load_runs([tmp_path]), "simkd_cifar100")
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == 3
    combined = next(r for r in rows if "b:dkd=1,rkd=2" in r)
    assert "dkd+rkd (r:1 a:0 b:dkd=1,rkd=2)" in combined and "| 2 | 70.50 ± 0.71 |" in combined
    assert any("b:dkd=1,rkd=4" in r and "| 1 | 60.00 ± 0.00 |" in r for r in rows)
    assert any("| resnet32x4+wrn_40_2 | resnet8x4 | kd (r:1 a:1 b:0) | 1 |" in r for r in rows)


def test_config_reruns_and_machines_are_trials_recipes_are_not(tmp_path):
    """A ``--config`` rerun, another save or data folder, another machine's process layout and
    speed flags are trials of one recipe; a recipe flag that differs splits, and is named."""
    _write(tmp_path, "first", best=70.0, last=70.0, config=None, nproc=None)
    _write(tmp_path, "rerun", best=72.0, last=72.0, config="save/first/config.yaml", nproc=4,
           save_folder="/elsewhere", data_folder="/data", gpu_id=3,
           multiprocessing_distributed=True,
           teacher_forward="eager", memory_format="contiguous", deterministic=True, trial="1",
           path_t="other/teacher.pth", teacher_cache="/cache")
    _write(tmp_path, "amp", best=60.0, last=60.0, config=None, nproc=None, amp=True)
    _write(tmp_path, "fkd_a", best=50.0, last=50.0, config=None, nproc=None, fkd="/a/crops")
    _write(tmp_path, "fkd_b", best=52.0, last=52.0, config=None, nproc=None, fkd="/b/crops")
    rows = _rows(report(load_runs([tmp_path])))
    assert set(rows) == {"kd (r:1 a:1 b:0)", "kd (r:1 a:1 b:0, amp=True)",
                         "kd (r:1 a:1 b:0, fkd=True)"}
    assert "| 2 | 71.00 ± 1.41 |" in rows["kd (r:1 a:1 b:0)"]
    assert "| 2 | 51.00 ± 1.41 |" in rows["kd (r:1 a:1 b:0, fkd=True)"]  # where: not the recipe


def test_peers_have_their_own_rows(tmp_path):
    """DML's peers (summary.json's extra_models) each have a row, averaged over the trials."""
    for trial in ("0", "1"):
        folder = _write(tmp_path, trial, best=60.0, last=59.0, trial=trial, method="dml",
                        teacher="none", student="resnet8", cls=1.0, div=0.0, beta=1.0)
        summary = json.loads((folder / "summary.json").read_text())
        summary["extra_models"] = {"peer1": {"model_name": "wrn_16_2", "best_epoch": 1,
                                             "best_acc": 64.0 + int(trial), "last_acc": 63.0}}
        (folder / "summary.json").write_text(json.dumps(summary))
    lines = report(load_runs([tmp_path])).splitlines()[2:]
    assert len(lines) == 2
    assert "| none | resnet8 | dml (r:1 a:0 b:1) | 2 | 60.00 ± 0.00 |" in lines[0]
    assert "| none | wrn_16_2 | dml peer1 (r:1 a:0 b:1) | 2 | 64.50 ± 0.71 |" in lines[1]


def test_early_summary_formats(tmp_path):
    """Summaries as the first versions wrote them: the weights as given (None: the method's
    default), no teacher name (a teacher run), no finished flag (hand-written)."""
    folder = _write(tmp_path, "early", best=70.0, last=69.0, cls=None, div=None, beta=None)
    summary = json.loads((folder / "summary.json").read_text())
    del summary["teacher"], summary["finished"]
    (folder / "summary.json").write_text(json.dumps(summary))
    [row] = report(load_runs([tmp_path])).splitlines()[2:]
    assert "| cifar100 | - | resnet8x4 | kd (r:default a:default b:default) | 1 | 70.00" in row


def test_summaries_of_every_methods_options_group_with_scoped_ones(tmp_path):
    """A summary written before runs recorded only their methods' options holds every method's
    (dkd_beta in a kd run): it is a trial of the same recipe as a scoped one; the run's own
    method options still split."""
    _write(tmp_path, "old", best=70.0, last=70.0, dkd_beta=8.0, nce_k=16384)
    _write(tmp_path, "new", best=72.0, last=72.0)
    _write(tmp_path, "dkd_a", best=60.0, last=60.0, method="dkd", dkd_beta=8.0)
    _write(tmp_path, "dkd_b", best=61.0, last=61.0, method="dkd", dkd_beta=2.0)
    rows = _rows(report(load_runs([tmp_path])))
    assert "| 2 | 71.00 ± 1.41 |" in rows["kd (r:1 a:1 b:0)"]
    assert len([r for r in rows if r.startswith("dkd")]) == 2

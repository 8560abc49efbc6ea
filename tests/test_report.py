"""The report groups trials, computes mean ± std, sets published figures beside them and keeps
runs in progress apart."""
import json

import pytest

from helper.report import load_runs, main, report


def _write(root, name, *, best, last, finished=True, method="kd", student="resnet8x4",
           teacher="resnet32x4", trial="0", **args):
    folder = root / name
    folder.mkdir(parents=True)
    all_args = {"trial": trial, "cls": 1.0, "div": 1.0, "beta": 0.0, "kd_T": 4.0, "epochs": 240,
                "save_folder": str(root), **args}
    (folder / "summary.json").write_text(json.dumps({
        "args": all_args, "dataset": "cifar100", "teacher": teacher, "model_name": student,
        "distill": method, "best_acc": best, "last_acc": last, "finished": finished}))


def test_trials_grouped_with_mean_std_and_published_difference(tmp_path):
    _write(tmp_path, "a", best=74.0, last=73.0, trial="0")
    _write(tmp_path, "b", best=75.0, last=74.0, trial="1")
    _write(tmp_path, "c", best=10.0, last=10.0, trial="2", finished=False)
    _write(tmp_path, "d", best=77.0, last=76.5, method="simkd", factor=2, cls=0.0, div=0.0, beta=1.0)
    _write(tmp_path, "e", best=76.0, last=75.5, method="simkd", factor=8, cls=0.0, div=0.0, beta=1.0)
    table = report(load_runs([tmp_path]), "simkd_cifar100")
    rows = {line.split("|")[4].strip(): line for line in table.splitlines()[2:]}
    kd = rows["kd (r:1 a:1 b:0)"]
    assert "| 2 (+1 running) |" in kd and "74.50 ± 0.71" in kd and "73.50 ± 0.71" in kd
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

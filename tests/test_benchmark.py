"""scripts/benchmark.py: the table, its JSON, the timing hook, and its errors (small models)."""
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmark.py"
SMALL = ["--teacher", "resnet14", "--student", "resnet8", "--iters", "2", "--warmup", "1",
         "--chunk", "1", "--batch_size", "8", "--threads", "1"]


@pytest.fixture(scope="module")
def report(bench, tmp_path_factory):
    """One run of the whole script (a subprocess per method) for the floor, kd and fitnet."""
    path = tmp_path_factory.mktemp("bench") / "results.json"
    out = subprocess.run([sys.executable, str(SCRIPT), "--methods", "kd,fitnet", "--train_size",
                          "2000", "--json", str(path), *SMALL],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout, json.loads(path.read_text())


def _positive_finite(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_json_fields(report):
    _, data = report
    results = {r["method"]: r for r in data["results"]}
    assert list(results) == ["floor", "kd", "fitnet"]  # the floor always runs, first
    for name, r in results.items():
        assert r["status"] == "ok", r
        for key in ("synthetic_ms", "e2e_ms", "ratio_to_floor", "ratio_e2e_to_synthetic",
                    "peak_mib", "baseline_mib"):
            assert _positive_finite(r[key]), (name, key, r[key])
        assert len(r["synthetic_all_ms"]) == 2 and len(r["e2e_all_ms"]) == 2
        assert r["peak_mib"] >= r["baseline_mib"]
        assert r["threads"] == 1
        assert r["student_params"] > 0 and r["teacher_params"] > r["student_params"]
    # The ratios are the script's Python division of these same floats, which JSON writes and
    # reads back exactly: equal on any machine; approx's rel 1e-6 is only slack.
    assert results["floor"]["ratio_to_floor"] == pytest.approx(1.0)
    assert "floor_ms" not in results["floor"]
    for name in ("kd", "fitnet"):  # its own floor, timed in turns with it
        r = results[name]
        assert len(r["floor_all_ms"]) == 2 and _positive_finite(r["floor_ms"])
        assert r["ratio_to_floor"] == pytest.approx(r["synthetic_ms"] / r["floor_ms"])
        assert r["ratio_e2e_to_synthetic"] == pytest.approx(r["e2e_ms"] / r["synthetic_ms"])
        assert r["process_peak_mib"] >= r["peak_mib"]
    assert results["floor"]["extra_params"] == 0 and results["kd"]["extra_params"] == 0
    assert results["fitnet"]["extra_params"] > 0  # the hint regressor
    assert results["floor"]["loss_terms"] == ["cls"]
    assert results["kd"]["loss_terms"] == ["cls", "kd"]
    assert "hint" in results["fitnet"]["loss_terms"]
    assert "CPU" in data["machine"] and torch.__version__ in data["machine"]


def test_markdown_table(report):
    stdout, _ = report
    lines = stdout.splitlines()
    assert "torch threads" in lines[0] and torch.__version__ in lines[0]
    header = next(i for i, line in enumerate(lines) if line.startswith("| method |"))
    assert [c.strip() for c in lines[header].strip("|").split("|")] == [
        "method", "extra params", "synthetic ms/iter", "ratio to floor", "end-to-end ms/iter",
        "ratio to synthetic", "peak memory"]
    rows = [line for line in lines[header + 2:] if line.startswith("|")]
    assert [r.split("|")[1].strip() for r in rows] == ["floor (a)", "kd", "fitnet"]
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 7
        for cell in cells[2:6]:
            assert _positive_finite(float(cell))
        assert cells[6].endswith(" MiB")
    assert any(line.startswith("Epoch estimate (2,000 images = 250 iterations") for line in lines)


def test_unknown_method_is_one_line_exit_2(bench, capsys):
    assert bench.main(["--methods", "kd,no_such_method", *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method 'no_such_method'" in err[0] and "kd" in err[0]
    out = subprocess.run([sys.executable, str(SCRIPT), "--methods", "nope"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "unknown method 'nope'" in out.stderr


def test_method_that_cannot_work_with_the_pair_is_na(bench, capsys):
    # MGD needs each student stage no wider than the teacher's: resnet8x4 is wider than resnet8
    argv = ["--one", "mgd", "--teacher", "resnet8", "--student", "resnet8x4", "--threads",
            str(torch.get_num_threads())]
    assert bench.main(argv) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["status"] == "n/a" and "wider" in record["reason"]
    floor = {"method": "floor", "status": "ok", "synthetic_ms": 2.0, "e2e_ms": 3.0,
             "peak_mib": 1.0, "extra_params": 0}
    opts = bench.parser().parse_args([])
    rows = bench.table(bench.add_ratios([floor, record]), opts)
    assert rows[-1].startswith("| mgd | n/a (--distill mgd needs")
    assert "| 1.50 |" in rows[2]  # end to end / synthetic of the floor


def test_synthetic_batches_carry_the_method_keys(bench):
    opts = bench.parser().parse_args(SMALL)
    nce_k = bench.method_config("crd", opts).method.options.nce_k
    requests = {"index": {}, "contrast_index": {"nce_k": nce_k, "mode": "exact"}}
    batch = next(bench.synthetic_batches(requests, opts, torch.device("cpu")))
    assert batch["images"].shape == (8, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert batch["contrast_index"].shape == (8, nce_k + 1)
    assert torch.equal(batch["contrast_index"][:, 0], batch["index"])  # --mode exact
    assert int(batch["index"].max()) < opts.train_size == 50000
    assert int(batch["contrast_index"].max()) < opts.train_size


def test_timed_loader_includes_data_only_end_to_end(bench, monkeypatch):
    # A clock that only the data and the "iteration" advance, by binary fractions: the times
    # are exact, where sleeping and reading the real clock gives bounds that a busy machine
    # can break (a descheduled process makes a 5 ms iteration take 40 ms).
    now = [0.0]
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: now[0]))

    def slow_source():
        while True:
            now[0] += 1 / 16  # producing the batch
            yield {"x": 1}

    for include_data in (False, True):
        loader = bench.TimedLoader(slow_source(), 3, "cpu", include_data)
        assert len(loader) == 3
        for _ in loader:
            now[0] += 1 / 128  # the "iteration"
        expected = 1 / 16 + 1 / 128 if include_data else 1 / 128
        assert loader.times(0) == [expected] * 3


def test_non_finite_loss_keeps_the_times(bench):
    class Diverging(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, images, targets, **batch):
            logits = images.flatten(1)[:, :3] * self.w
            return logits, {"cls": (logits.sum() * float("nan"))}

    batches = [{"images": torch.randn(2, 3, 4, 4), "targets": torch.zeros(2, dtype=torch.long)}
               for _ in range(4)]
    model = Diverging()
    loader = bench.TimedLoader(batches, 4, "cpu", include_data=False)
    record = {}
    times, terms = bench._timed_run(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                    bench.Precision(), record, warmup=1)
    assert terms is None and "non-finite" in record["nonfinite"]
    assert len(times) == 2 and all(t > 0 for t in times)  # the last iteration ends in the check
    floor = {"method": "floor", "status": "ok", "synthetic_ms": 2.0, "nonfinite": "x"}
    opts = bench.parser().parse_args([])
    rows = bench.table(bench.add_ratios([floor]), opts)
    assert rows[2].startswith("| floor (a) (c) |")
    assert any(line.startswith("(c) floor:") for line in bench.notes([floor], opts))

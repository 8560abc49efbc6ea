"""scripts/gpu_check.py: its CPU dry run (the plumbing of the GPU check: data, teacher, methods,
report, kill and --resume) and its planning; the CUDA steps themselves need a GPU."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help():
    out = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--quick" in out.stdout and "--source" in out.stdout


def test_parse_output_reads_rate_and_peak_over_processes():
    g = _module()
    text = ("Epoch 1 [10/40] loss 2.3 cls 2.3 acc@1 9.00 800 img/s ETA 3s\n"
            "Epoch 1 [40/40] loss 2.1 cls 2.1 acc@1 19.00 1234 img/s ETA 0s\n"
            + g.MARK + json.dumps({"peak_bytes": 2 ** 20, "rank": 0}) + "\n"
            + g.MARK + json.dumps({"peak_bytes": 3 * 2 ** 20, "rank": 1}) + "\n")
    assert g.parse_output(text) == (1234.0, 3 * 2 ** 20)
    assert g.parse_output("nothing") == (None, None)


def test_plan_covers_every_method_in_fp32_and_fp16():
    g = _module()
    methods = ["kd", "at", "crd", "sskd", "vanilla"]
    plan, skipped = g.build_plan(g.parse_args([]), True, 1, methods)
    cells = {(label, pr) for label, _, pr, _ in plan}
    for label in methods + ["kd+logit_stand", "kd+ctkd"]:
        assert {(label, "fp32"), (label, "fp16")} <= cells
    assert ("kd", "compile") in cells and ("sskd", "compile") not in cells
    assert ("kd", "bf16") in cells and ("kd", "channels_last") in cells
    assert skipped  # says what it leaves out
    sskd = next(extra for label, _, pr, extra in plan if label == "sskd")
    assert sskd == ["--sskd_t_epochs", "1"]
    quick, _ = g.build_plan(g.parse_args(["--quick", "--combined", "kd+at"]), True, 1, methods)
    assert len(quick) < len(plan) and ("combined:kd+at", "fp32") in {(x[0], x[2]) for x in quick}
    dry, _ = g.build_plan(g.parse_args([]), False, 0, methods)
    assert [(x[0], x[2]) for x in dry] == [("kd", "fp32"), ("at", "fp32")]


def test_cpu_dry_run_writes_its_report_and_exits_0(tmp_path):
    out = tmp_path / "report" / "cpu.md"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    # One method keeps it short (the default dry run adds at); the plumbing is the same.
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry_run", "--methods", "kd", "--out", str(out),
                           "--work", str(tmp_path / "work")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[0].startswith("CUDA is not available: running the CPU dry run")
    report = json.loads(out.with_suffix(".json").read_text())
    rows = {r["step"]: r for r in report["rows"]}
    assert set(rows) == {"teacher", "kd_fp32", "dali_gpu", "torchrun_nccl", "resume"}
    for step in ("teacher", "kd_fp32", "resume"):
        row = rows[step]
        assert row["status"] == "pass", row
        assert row["finite"] and row["img_s"] > 0 and row["wall_s"] > 0
    assert rows["resume"]["max_weight_diff"] == 0.0  # the CPU is bit-deterministic
    assert rows["dali_gpu"]["status"] == rows["torchrun_nccl"]["status"] == "skip"
    text = out.read_text()
    assert "| kd_fp32 | kd | fp32 |" in text and "total time" in text and "torch " in text
    assert not (tmp_path / "work" / "cpu_dry_run.md").exists()  # --out was honoured


def test_a_failing_step_is_a_failed_row_with_its_command(tmp_path):
    g = _module()
    (tmp_path / "logs").mkdir()
    step = g.Step("bad", "train_student", ["--distill", "kd", "--no_such_flag"], timeout=120)
    row = g.run_step(step, tmp_path / "save", tmp_path / "logs")
    assert row["status"] == "fail" and row["why"] == "exit 2"
    assert "--no_such_flag" in row["command"] and "train_student.py: error" in row["tail"]
    assert (tmp_path / "logs" / "bad.log").read_text().startswith(row["command"])

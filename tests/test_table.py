"""The table launcher without a SLURM controller: LAUNCHER=local unchanged, LAUNCHER=slurm's
jobs (arrays, afterok dependencies, skipped finished rows, multi-process rows under torchrun),
``python -m helper.table status`` and the run folder's lock for a requeued SLURM job."""
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from helper import slurm, table
from helper.core.errors import UserError
from helper.run.run_folder import RunFolder

REPO = Path(__file__).resolve().parents[1]


def _script(name, **env):
    env = {**os.environ, "DRY_RUN": "1", "TRIALS": "2", "ZOO": "0", "SAVE": "./save", **env}
    out = subprocess.run(["bash", str(REPO / "scripts" / name)], env=env, capture_output=True,
                         text=True, check=True)
    return out.stdout.splitlines()


def test_slurm_dry_run_prints_the_same_commands_then_its_jobs():
    local = _script("hinton_mnist.sh")
    remote = _script("hinton_mnist.sh", LAUNCHER="slurm", SLURM_GPUS_PER_JOB="0",
                     SLURM_PARTITION="gpu", SLURM_TIME="1:00:00", SLURM_ACCOUNT="kd",
                     SBATCH_OPTIONS="--qos=high --mem=8G")
    jobs = [l for l in remote if l.startswith("# slurm: sbatch")]
    assert [l for l in remote if not l.startswith("# slurm:")] == local
    assert len(jobs) == 3  # the teacher; baselines and students as arrays of 2 trials
    teacher, baselines, students = jobs
    assert "--array" not in teacher and "--dependency" not in teacher
    assert "--array=1,2" in baselines and "--dependency" not in baselines
    assert "--array=1,2" in students and "--dependency=afterok:<1>" in students
    for line in jobs:
        for option in ("--partition=gpu", "--time=1:00:00", "--account=kd", "--requeue",
                       "--signal=B:USR1@120", "--open-mode=append", "--qos=high", "--mem=8G"):
            assert option in line
        assert "--gpus" not in line


def test_local_launcher_is_unchanged_by_default():
    with pytest.raises(subprocess.CalledProcessError):
        _script("hinton_mnist.sh", LAUNCHER="cloud")
    lines = _script("hinton_mnist.sh", LAUNCHER="local")
    assert not any(l.startswith("# slurm") for l in lines)
    assert lines == _script("hinton_mnist.sh")


def _plan(save, trials=(1, 2)):
    s = f"--dataset mnist --epochs 2 --save_folder {save} --data_folder /nonexistent"
    t = f"{save}/teachers/mlp_1200_vanilla_mnist_trial_0/best.pth"
    plan = [f"python train_teacher.py --model mlp_1200 {s}"]
    plan += [f"python train_student.py --path_t {t} --model_s mlp_800 --distill kd {s} "
             f"--trial {n}" for n in trials]
    return [shlex.split(p) for p in plan]


def test_plan_submits_teacher_then_students_as_an_array(tmp_path):
    scripts = []

    def submit(script):
        scripts.append(script)
        return str(100 + len(scripts))
    entries = slurm.plan_jobs(_plan(tmp_path), tmp_path, submit=submit, jobs={}, log=lambda m: 0)
    assert [e["job"] for e in entries] == ["101", "102_1", "102_2"]
    assert "#SBATCH --dependency=afterok:101" in scripts[1]
    assert "#SBATCH --array=1,2" in scripts[1]
    assert "--trial ${SLURM_ARRAY_TASK_ID}" in scripts[1]
    assert "-m helper.slurm run -- python train_student.py" in scripts[1]
    assert "scontrol requeue" in scripts[1] and "trap requeue USR1 TERM" in scripts[1]
    manifest = table.read_manifest(tmp_path)
    assert len(manifest) == 3


def test_finished_rows_are_skipped_and_queued_jobs_not_resubmitted(tmp_path):
    teacher = tmp_path / "teachers" / "mlp_1200_vanilla_mnist_trial_0"
    teacher.mkdir(parents=True)
    (teacher / "summary.json").write_text(json.dumps({"finished": True, "best_acc": 97.0}))
    scripts = []
    entries = slurm.plan_jobs(_plan(tmp_path), tmp_path, jobs={},
                              submit=lambda s: scripts.append(s) or "7", log=lambda m: 0)
    assert [e["job"] for e in entries] == ["7_1", "7_2"]
    assert "--dependency" not in scripts[0]
    # submitted again while the array still waits: nothing new
    again = slurm.plan_jobs(_plan(tmp_path), tmp_path, submit=lambda s: "8", log=lambda m: 0,
                            jobs={"7_1": ("PENDING", "Resources"), "7_2": ("RUNNING", "None")})
    assert again == []


def test_multi_process_rows_run_under_torchrun():
    argv = shlex.split("python train_student.py --model_s resnet18 --multiprocessing-distributed "
                       "--nproc 4 --dist-url tcp://127.0.0.1:23456 --dataset imagenet")
    options = slurm.sbatch_options(argv, "/x/row.log")
    assert "--gpus-per-node=4" in options and "--ntasks-per-node=1" in options
    script = slurm.batch_script(argv, options)
    assert "MASTER_ADDR=$(scontrol show hostnames" in script and "--nproc 4" in script
    cmd = slurm.torchrun_command(argv, 4)
    assert cmd[:2] == ["srun", "--ntasks-per-node=1"] and "--nproc_per_node=4" in cmd
    assert "--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}" in cmd
    assert not {"--multiprocessing-distributed", "--nproc", "--dist-url"} & set(cmd)
    assert cmd[cmd.index("train_student.py"):] == [
        "train_student.py", "--model_s", "resnet18", "--dataset", "imagenet"]


def test_run_resumes_an_unfinished_folder_and_skips_a_finished_one(tmp_path, monkeypatch):
    argv = _plan(tmp_path)[0]
    folder = table.run_folder(argv)
    assert folder == tmp_path / "teachers" / "mlp_1200_vanilla_mnist_trial_0"
    ran = []
    monkeypatch.setattr(os, "execvp", lambda prog, args: ran.append(args))
    slurm.run(argv)
    assert ran[-1] == argv
    folder.mkdir(parents=True)
    (folder / "last.pth").write_bytes(b"x")
    slurm.run(argv)
    assert ran[-1] == [*argv, "--resume"]
    (folder / "summary.json").write_text(json.dumps({"finished": True}))
    assert slurm.run(argv) == 0 and len(ran) == 2


def test_status_lists_every_row(tmp_path, monkeypatch):
    plan = _plan(tmp_path, trials=(1, 2, 3))
    folders = [table.run_folder(a) for a in plan]
    folders[0].mkdir(parents=True)
    (folders[0] / "summary.json").write_text(json.dumps({"finished": True, "best_acc": 97.5}))
    logs = tmp_path / ".table" / "logs"
    logs.mkdir(parents=True)
    (logs / "s1.log").write_text("Epoch 1 ...\nerror: out of memory\n")
    with open(tmp_path / table.MANIFEST, "w") as f:
        for folder, job, log in ((folders[1], "5_1", logs / "s1.log"), (folders[2], "5_2", ""),
                                 (folders[3], "5_3", "")):
            f.write(json.dumps({"folder": str(folder), "job": job, "log": str(log)}) + "\n")
    monkeypatch.setattr(table, "queue", lambda: {"5_2": ("RUNNING", "None"),
                                                  "5_3": ("PENDING", "Dependency")})
    plan.append(shlex.split(f"python train_teacher.py --model mlp_800 --dataset mnist "
                            f"--save_folder {tmp_path}"))
    rows = table.status_rows(tmp_path, plan)
    assert [r[1] for r in rows] == ["done", "failed", "running", "queued", "not started"]
    assert rows[0][2] == "best top-1 97.50"
    assert rows[1][2].endswith("error: out of memory")
    assert rows[2][2] == "job 5_2" and rows[3][2] == "job 5_3 (Dependency)"


def test_status_script_flag(tmp_path):
    lines = _script("hinton_mnist.sh", STATUS="1", SAVE=str(tmp_path), DRY_RUN="0")
    assert sum(l.startswith("not started") for l in lines) == 5
    assert lines[-1] == "# 5 not started"


def _lock(folder, pid, host, job=None):
    folder.mkdir(parents=True, exist_ok=True)
    owner = {"pid": pid, "host": host}
    if job:
        owner["slurm_job"] = job
    (folder / ".lock").write_text(json.dumps(owner))


def test_lock_records_the_slurm_job_and_a_requeued_job_takes_it_over(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    with RunFolder(folder, log=lambda m: 0):
        owner = json.loads((folder / ".lock").read_text())
        assert owner["slurm_job"] == "42" and owner["pid"] == os.getpid()
    _lock(folder, 1234, "node-a", job="42")  # the same job, before its requeue, on node-a
    notes = []
    with RunFolder(folder, log=notes.append):
        assert json.loads((folder / ".lock").read_text())["host"] != "node-a"
    assert "SLURM job 42 on host node-a, requeued here" in notes[0]


def test_lock_of_another_job_or_no_job_on_another_host_is_refused(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    for job in ("41", None):
        _lock(folder, 1234, "node-a", job=job)
        with pytest.raises(UserError, match="in use by a run on host node-a"):
            with RunFolder(folder, log=lambda m: 0):
                pass
        assert (folder / ".lock").exists()
    monkeypatch.delenv("SLURM_JOB_ID")
    _lock(folder, 1234, "node-a", job="42")
    with pytest.raises(UserError, match="in use by a run on host node-a"):
        with RunFolder(folder, log=lambda m: 0):
            pass

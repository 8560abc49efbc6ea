"""LAUNCHER=slurm against a real SLURM: a one-node cluster (munged, slurmctld, slurmd, 4 CPU
slots) is started in a temporary folder, a tiny table (2 teachers, 2 student rows x 2 trials as
job arrays, on 30,000 real MNIST images) is submitted through scripts/common.sh, one student
job is told to stop mid-run with ``scancel --signal=USR1 --batch`` and requeues itself, and
every row must finish, the requeued one with the same weights as an uninterrupted run.

Skipped, with the reason, where SLURM cannot start: not root, Debian's slurm-wlm and munge
absent and not installable (``apt-get install -y slurm-wlm munge`` is tried when root), or a
daemon that does not come up. About 2-3 minutes on 2 cores."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import mnist_subset

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel")
TIMEOUT = 240  # seconds for the whole table

TABLE = """\
source {repo}/scripts/common.sh
S="--dataset mnist --batch_size 128 --learning_rate 0.01 --weight_decay 0"
job python train_teacher.py --model mlp_1200 $S --epochs 1
job python train_teacher.py --model mlp_800 $S --epochs 1
barrier
for trial in $(seq 1 "$TRIALS"); do
  job python train_student.py --path_t "$(teacher_path mlp_1200 mnist best)" --model_s mlp_800 \\
    --distill kd --kd_T 4 $S --epochs 2 --lr_decay_epochs 1 --trial "$trial"
  job python train_student.py --path_t "$(teacher_path mlp_800 mnist best)" --model_s mlp_800 \\
    --distill kd --kd_T 4 $S --epochs 2 --lr_decay_epochs 1 --trial "$trial"
done
barrier
"""


def _which(tool):
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin")


def _ensure_tools():
    """The SLURM and munge programs, installed with apt when absent; else a skip reason."""
    if os.name != "posix" or os.geteuid() != 0:
        return "not root: slurmd and munged cannot be started here"
    if all(_which(t) for t in TOOLS):
        return None
    if not shutil.which("apt-get"):
        return "slurm-wlm and munge are absent and apt-get is not available to install them"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    out = subprocess.run("apt-get install -y -qq slurm-wlm munge || "
                         "(apt-get update -qq && apt-get install -y -qq slurm-wlm munge)",
                         shell=True, env=env, capture_output=True, text=True, timeout=600)
    missing = [t for t in TOOLS if not _which(t)]
    if missing:
        return (f"slurm-wlm/munge could not be installed (apt-get exit {out.returncode}: "
                f"{(out.stderr or out.stdout).strip()[-300:]}); missing {', '.join(missing)}")
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A one-node SLURM in ``root``: its own munge key and socket, state and logs."""

    def __init__(self, root):
        self.root = Path(root)
        self.pids = []
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self):
        root = self.root
        for d in ("state", "spool", "munge"):
            (root / d).mkdir(parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = root / "munge" / "munge.socket"
        self._daemon([_which("munged"), "--force", f"--key-file={key}", f"--socket={socket_path}",
                      f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                      f"--seed-file={root}/munge/munged.seed"], root / "munge" / "munged.pid")
        self.conf.write_text("\n".join([
            "ClusterName=kdtest", f"SlurmctldHost={self.host}", "SlurmUser=root",
            "SlurmdUser=root", f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge", f"AuthInfo=socket={socket_path}",
            f"StateSaveLocation={root}/state", f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none", "MpiDefault=none", "ReturnToService=2",
            "SlurmdParameters=config_overrides", "MinJobAge=600", "KillWait=10",
            f"NodeName={self.host} CPUs=4 State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        self._daemon([_which("slurmctld"), "-f", str(self.conf)], root / "slurmctld.pid")
        self._daemon([_which("slurmd"), "-f", str(self.conf)], root / "slurmd.pid")
        for _ in range(60):
            out = self.run("sinfo", "-h", "-o", "%T", check=False)
            if out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated"):
                return None
            time.sleep(0.5)
        logs = "; ".join(f"{p.name}: {p.read_text()[-300:]}" for p in
                         (root / "slurmctld.log", root / "slurmd.log") if p.exists())
        return f"the local SLURM node did not become idle (sinfo: {out.stdout.strip()} " \
               f"{out.stderr.strip()}); {logs}"

    def _daemon(self, argv, pid_file):
        subprocess.run(argv, env=self.env, check=True, capture_output=True, timeout=60)
        for _ in range(50):
            if pid_file.exists() and pid_file.read_text().strip():
                self.pids.append(int(pid_file.read_text().split()[0]))
                return
            time.sleep(0.1)

    def run(self, *argv, check=True):
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, check=check,
                              timeout=60)

    def stop(self):
        if self.pids:  # end the jobs first, so that no slurmstepd outlives its slurmd
            subprocess.run(["scancel", "--user=root"], env=self.env, capture_output=True)
            for _ in range(60):
                out = self.run("squeue", "-h", "-o", "%i", check=False)
                if out.returncode != 0 or not out.stdout.strip():
                    break
                time.sleep(0.5)
        for pid in reversed(self.pids):  # slurmd, slurmctld, munged: only those started here
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = _ensure_tools()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        reason = c.start()
    except (subprocess.SubprocessError, OSError) as e:
        reason = f"a SLURM daemon failed to start: {e}"
    if reason:
        c.stop()
        pytest.skip(reason)
    yield c
    c.stop()


@pytest.fixture(scope="module")
def mnist_30k(tmp_path_factory):
    return mnist_subset(tmp_path_factory, "mnist_30k", 30000, 1000)


def _manifest(save):
    path = save / ".table" / "jobs.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def _status(cluster, save):
    out = subprocess.run([sys.executable, "-m", "helper.table", "status", str(save)], cwd=REPO,
                         env=cluster.env, capture_output=True, text=True, check=True)
    return out.stdout


def test_tiny_table_through_slurm_with_a_requeue(cluster, mnist_30k, tmp_path):
    start = time.time()
    save = tmp_path / "save"
    script = tmp_path / "tiny_table.sh"
    script.write_text(TABLE.format(repo=REPO))
    env = {**cluster.env, "LAUNCHER": "slurm", "SLURM_GPUS_PER_JOB": "0", "TRIALS": "2",
           "ZOO": "0", "SAVE": str(save), "DATA": str(mnist_30k), "EXTRA": "--deterministic",
           "OMP_NUM_THREADS": "1", "SLURM_SIGNAL_TIME": "30"}
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    jobs = _manifest(save)
    assert len(jobs) == 6, out.stdout
    teachers = [j for j in jobs if "/teachers/" in j["folder"]]
    students = [j for j in jobs if "/students/" in j["folder"]]
    assert len(teachers) == 2 and len(students) == 4
    assert all("_" in j["job"] for j in students)  # job arrays: ID_TASK
    # students wait for their teacher (afterok), not for a barrier
    # (the dependency itself, set at submission: the reason column lags the scheduler's pass)
    queued = dict(line.split(" ", 1) for line in
                  cluster.run("squeue", "-h", "-r", "-o", "%i %E").stdout.splitlines())
    for job in students:
        assert ("afterok" in queued.get(job["job"], "")
                or Path(job["folder"], "last.pth").exists()), queued

    # stop one student mid-run (after its first epoch's last.pth): it requeues itself
    victim = students[0]
    folder = Path(victim["folder"])
    while not (folder / "last.pth").exists():
        assert time.time() - start < TIMEOUT, _status(cluster, save)
        time.sleep(0.2)
    cluster.run("scancel", "--signal=USR1", "--batch", victim["job"])
    while True:  # requeued jobs wait ~2 minutes (BeginTime); start it in a few seconds
        state = cluster.run("squeue", "-h", "-r", "-j", victim["job"], "-o", "%T %r",
                            check=False).stdout.split()
        if state[:1] == ["PENDING"]:
            # not at once: slurmd refuses a job whose credential is no newer, to the second,
            # than the revocation of its previous run's; the job then ends without running
            # (CI saw it once). BeginTime's wait is SLURM's own guard against that.
            cluster.run("scontrol", "update", f"JobId={victim['job']}", "StartTime=now+3")
            break
        assert time.time() - start < TIMEOUT, f"{victim['job']} not requeued: {state}"
        time.sleep(0.2)
    middle = _status(cluster, save)

    while True:
        status = _status(cluster, save)
        if status.count("\ndone") + status.startswith("done") == 6 or "failed" in status:
            break
        assert time.time() - start < TIMEOUT, status
        time.sleep(1)
    assert "6 done" in status, (status + Path(victim["log"]).read_text() + cluster.run(
        "squeue", "-r", "--states=all", check=False).stdout
        + (cluster.root / "slurmctld.log").read_text()[-4000:]
        + (cluster.root / "slurmd.log").read_text()[-3000:])
    log = Path(victim["log"]).read_text()
    assert "requeueing it" in log and "continuing" in log and "--resume" in log, log
    assert any(w in middle for w in ("queued", "running")), middle

    # the requeued run ends with the weights of an uninterrupted one
    reference = tmp_path / "reference"
    argv = victim["command"].split()
    i = argv.index("--save_folder")
    argv[i + 1] = str(reference)
    subprocess.run([sys.executable, *argv[1:]], cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=120)
    got = torch.load(folder / "last.pth", weights_only=True)
    want = torch.load(next(reference.glob("students/*/last.pth")), weights_only=True)
    assert got["epoch"] == want["epoch"] == 2
    for key, value in want["model"].items():
        assert torch.equal(got["model"][key], value), key

    report = subprocess.run([sys.executable, "-m", "helper.report", str(save)], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "mlp_800" in report.stdout
    assert time.time() - start < 300

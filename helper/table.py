"""Where a table stands: ``python -m helper.table status SAVE`` (or a table script with
``STATUS=1``) lists each row, one line each:

    done        a finished run (summary.json says so), or a published teacher
    running     its SLURM job runs (job id), or a local run holds the folder's lock (pid)
    queued      its SLURM job waits (job id and SLURM's reason: Dependency, Resources, ...)
    failed      its job ended without finishing the run: the last line of its log (or, for a
                folder no job owns, the epoch it stopped at)
    not started no folder and no job

The rows are those a launch recorded in ``SAVE/.table/jobs.jsonl`` (``helper/slurm.py``), the
run folders under ``SAVE/teachers`` and ``SAVE/students``, and, with ``--plan FILE`` (what a
script writes under ``STATUS=1``), every command of the table, each mapped to its run folder
by ``run_folder``. Also ``python -m helper.table folder -- python train_student.py ARGS``:
the run folder a command writes.
"""
import argparse
import json
import shlex
import socket
import subprocess
import sys
from pathlib import Path

MANIFEST = Path(".table") / "jobs.jsonl"
SCRIPTS = ("train_teacher.py", "train_student.py")


def _script_args(argv):
    """``(script name, its arguments)`` of a command such as ``python train_student.py ...``."""
    for i, word in enumerate(argv):
        if Path(word).name in SCRIPTS:
            return Path(word).name, list(argv[i + 1:])
    raise ValueError(f"not a training command: {shlex.join(argv)}")


def _teacher_names(teacher):
    """The teachers' architectures for the student folder name, without building them:
    --model_t, else the toolbox's folder convention, else the checkpoint's stored name."""
    from helper.run.checkpoint import model_name_from_path
    from models.teachers import teacher_specs
    names = []
    for path, name in teacher_specs(teacher.path_t, teacher.model_t):
        name = name or model_name_from_path(path)
        if name is None and Path(path).is_file():
            import torch
            stored = torch.load(path, map_location="cpu", weights_only=True)
            name = stored.get("model_name") if isinstance(stored, dict) else None
        names.append(name or "unknown")
    return names


def run_folder(argv):
    """The run folder the training command ``argv`` writes (its --save_folder included)."""
    from helper.run.options import parse_student_args, parse_teacher_args
    from helper.run.run_folder import student_run_name, teacher_run_name
    script, args = _script_args(argv)
    if script == "train_teacher.py":
        config = parse_teacher_args(args)
        return Path(config.run.save_folder) / "teachers" / teacher_run_name(config)
    config = parse_student_args(args)
    names = _teacher_names(config.teacher) if config.method.requires_teacher() else []
    return Path(config.run.save_folder) / "students" / student_run_name(config, names or "none")


def summary(folder):
    try:
        return json.loads((Path(folder) / "summary.json").read_text())
    except (OSError, ValueError):
        return None


def finished(folder):
    """A run that trained to its last epoch, or a published teacher (best.pth alone)."""
    folder = Path(folder)
    if (folder / "best.pth").exists() and not (folder / "last.pth").exists() \
            and not (folder / "summary.json").exists():
        return True
    data = summary(folder)
    return bool(isinstance(data, dict) and data.get("finished"))


def read_manifest(save):
    """``{run folder (str): entry}`` of the jobs launched for SAVE, the latest per folder."""
    entries = {}
    path = Path(save) / MANIFEST
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return entries
    for line in lines:
        try:
            entry = json.loads(line)
            entries[str(Path(entry["folder"]))] = entry
        except (ValueError, KeyError, TypeError):
            continue
    return entries


def queue():
    """``{job id: (state, reason)}`` of the jobs SLURM still holds (array tasks one by one),
    or None where squeue is not available."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T|%r"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def _last_line(path):
    try:
        lines = [l.strip() for l in Path(path).read_text(errors="replace").splitlines()]
    except OSError:
        return f"no log at {path}"
    lines = [l for l in lines if l]
    return lines[-1] if lines else f"empty log {path}"


def _local_owner(folder):
    """The pid holding a folder's lock on this machine, while it lives; else None."""
    from helper.run.run_folder import ForeignLock, pid_alive, read_lock
    try:
        owner = read_lock(Path(folder) / ".lock")
    except ForeignLock:  # no run of this toolbox holds it
        return None
    if owner is not None and owner[1] == socket.gethostname() and pid_alive(owner[0]):
        return owner[0]
    return None


RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"}
QUEUED = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "SUSPENDED", "PREEMPTED"}


def row_status(folder, entry, jobs):
    """``(status, detail)`` of one row (see the module's docstring)."""
    folder = Path(folder)
    if finished(folder):
        data = summary(folder) or {}
        best = data.get("best_acc")
        return "done", (f"best top-1 {best:.2f}" if isinstance(best, (int, float)) else "")
    job = entry.get("job") if entry else None
    if job and jobs is not None and job in jobs:
        state, reason = jobs[job]
        if state in RUNNING:
            return "running", f"job {job}"
        if state in QUEUED:
            return "queued", f"job {job} ({reason})"
        return "failed", f"job {job} {state}: {_last_line(entry.get('log', ''))}"
    pid = _local_owner(folder)
    if pid is not None:
        return "running", f"pid {pid}"
    if job and jobs is None:
        return "queued", f"job {job} (squeue not available to tell)"
    if job:
        return "failed", f"job {job}: {_last_line(entry.get('log', ''))}"
    if folder.exists():
        data = summary(folder) or {}
        done = data.get("epochs_done")
        return "failed", (f"stopped after epoch {done}; rerun the table to continue it"
                          if done is not None else "stopped before its first epoch ended")
    return "not started", ""


def status_rows(save, plan=None):
    """``[(folder, status, detail)]``: the plan's rows in order, then every other row known."""
    save = Path(save)
    manifest = read_manifest(save)
    folders = []
    for argv in plan or []:
        try:
            folders.append(str(run_folder(argv)))
        except (Exception, SystemExit) as e:  # a row that cannot parse is listed, with why
            folders.append(f"(cannot name the run folder of {shlex.join(argv)}: {e})")
    known = set(folders)
    for folder in list(manifest) + sorted(str(p) for kind in ("teachers", "students")
                                          for p in (save / kind).glob("*") if p.is_dir()):
        if folder not in known:
            known.add(folder)
            folders.append(folder)
    jobs = queue() if any(e.get("job") for e in manifest.values()) else {}
    rows = []
    for folder in folders:
        if folder.startswith("("):
            rows.append((folder, "failed", "this command cannot run"))
            continue
        rows.append((folder, *row_status(folder, manifest.get(folder), jobs)))
    return rows


def read_plan(path):
    """The commands of a plan file: one shell-quoted command a line (common.sh's format)."""
    return [shlex.split(line) for line in Path(path).read_text().splitlines() if line.strip()]


def print_status(save, plan=None, out=sys.stdout):
    rows = status_rows(save, plan)
    counts = {}
    for folder, state, detail in rows:
        counts[state] = counts.get(state, 0) + 1
        print(f"{state:<12} {folder}" + (f"  {detail}" if detail else ""), file=out)
    order = ("done", "running", "queued", "failed", "not started")
    print("# " + ", ".join(f"{counts[s]} {s}" for s in order if s in counts) if counts
          else f"# no rows under {save}", file=out)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helper.table", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="one line per row of the table in SAVE")
    status.add_argument("save")
    status.add_argument("--plan", help="the table's commands, one a line (STATUS=1 writes it)")
    folder = sub.add_parser("folder", help="the run folder of: -- python train_*.py ARGS")
    folder.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "status":
        print_status(args.save, read_plan(args.plan) if args.plan else None)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    print(run_folder(cmd))
    return 0


if __name__ == "__main__":
    sys.exit(main())

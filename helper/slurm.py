"""The SLURM launcher behind the table scripts (``LAUNCHER=slurm``, scripts/common.sh).

A table script records its commands (one shell-quoted line each, the plan) instead of running
them; at its end ``python -m helper.slurm submit PLAN`` turns them into sbatch jobs:

- rows whose run folder is finished are skipped; a row whose job is still queued or running
  (``SAVE/.table/jobs.jsonl`` and squeue) is not submitted twice, and serves as a dependency;
- the trials of one row (commands equal but for ``--trial N``, N numbers) form one job array,
  ``--array=N,...``, the task's ``--trial`` being ``$SLURM_ARRAY_TASK_ID``;
- a command that reads a file in another row's run folder (``--path_t``, ``--pretrained``)
  waits for that row's job: ``--dependency=afterok:ID`` (``ID_TASK`` for one array task) with
  ``--kill-on-invalid-dep=yes``, so teachers go first and students start as soon as their own
  teacher ends, with no barrier;
- a row of several processes (``--multiprocessing-distributed --nproc N``) becomes one job of
  ``SLURM_NODES`` nodes (default 1) with N GPUs each, started by ``srun`` + ``torchrun`` with
  its c10d rendezvous on the first node of ``SLURM_JOB_NODELIST`` (``MASTER_ADDR``).

Each job runs ``python -m helper.slurm run -- COMMAND``, which decides at run time: a
finished run folder ends the job at once, an unfinished one (``last.pth``) continues with
``--resume``, else the run starts. So a job requeued after preemption or its time limit
continues exactly where its last epoch ended.

Preemption and time limits: plain sbatch, no submitit (no Python dependency, and the toolbox
already stops cleanly on SIGINT: the epoch's files are written before it exits). Jobs are
submitted with ``--requeue --signal=B:USR1@SLURM_SIGNAL_TIME``; the batch shell traps USR1 (a
time limit coming, or ``scancel --signal=USR1 --batch ID`` by hand) and TERM (preemption),
sends SIGINT to the run (SIGTERM to srun/torchrun), waits for it and calls
``scontrol requeue $SLURM_JOB_ID``. The requeued job keeps its id; the run folder's lock records
``SLURM_JOB_ID``, so the requeued job takes the folder over even on another node
(helper/run/run_folder.py). Logs: ``SAVE/.table/logs/<row>[.<task>].log``, appended across requeues.

Environment: SLURM_PARTITION, SLURM_ACCOUNT, SLURM_TIME (``--time``), SLURM_GPUS_PER_JOB
(GPUs of a one-process row, default 1; 0 for CPU jobs), SLURM_CPUS_PER_JOB (``--cpus-per-task``),
SLURM_NODES (nodes of a multi-process row), SLURM_SIGNAL_TIME (seconds before the time limit
the run is told to stop, default 120), SBATCH_OPTIONS (more sbatch options, passed through).
"""
import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from helper import table

REPO = Path(__file__).resolve().parents[1]
TRIAL = "__TRIAL__"


def _env(name, default=""):
    return os.environ.get(name, default).strip()


def _trial(argv):
    """The index of --trial's value in argv, or None."""
    index = None
    for i, word in enumerate(argv[:-1]):
        if word == "--trial":
            index = i + 1
    return index


def _distributed(argv):
    """N for a ``--multiprocessing-distributed --nproc N`` command, else None."""
    if "--multiprocessing-distributed" not in argv:
        return None
    nproc = 1
    for i, word in enumerate(argv[:-1]):
        if word == "--nproc":
            nproc = int(argv[i + 1])
    return nproc


def torchrun_command(argv, nproc):
    """``argv`` under torchrun: --multiprocessing-distributed, --nproc and --dist-url dropped
    (torchrun's processes find each other through its rendezvous)."""
    script, args = table._script_args(argv)
    kept, skip = [], False
    for word in args:
        if skip:
            skip = False
            continue
        if word in ("--nproc", "--dist-url", "--dist_url"):
            skip = True
            continue
        if word == "--multiprocessing-distributed" or word.startswith(("--nproc=", "--dist-url=")):
            continue
        kept.append(word)
    return ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
            "torchrun", "--nnodes=${SLURM_JOB_NUM_NODES}", f"--nproc_per_node={nproc}",
            "--rdzv_id=${SLURM_JOB_ID}", "--rdzv_backend=c10d",
            "--rdzv_endpoint=${MASTER_ADDR}:${MASTER_PORT}", script, *kept]


def sbatch_options(row, log, dependency=None, array=None):
    """The ``#SBATCH`` options of one row's job."""
    nproc = _distributed(row)
    options = [f"--job-name=kd:{Path(log).name.split('.')[0][:60]}",
               f"--output={log}", "--open-mode=append", "--requeue",
               f"--signal=B:USR1@{_env('SLURM_SIGNAL_TIME', '120')}", f"--chdir={REPO}"]
    for env, flag in (("SLURM_PARTITION", "--partition"), ("SLURM_ACCOUNT", "--account"),
                      ("SLURM_TIME", "--time"), ("SLURM_CPUS_PER_JOB", "--cpus-per-task")):
        if _env(env):
            options.append(f"{flag}={_env(env)}")
    if nproc:
        options += [f"--nodes={_env('SLURM_NODES', '1')}", "--ntasks-per-node=1",
                    f"--gpus-per-node={nproc}"]
    elif int(_env("SLURM_GPUS_PER_JOB", "1") or 0) > 0:
        options.append(f"--gpus={_env('SLURM_GPUS_PER_JOB', '1')}")
    if array:
        options.append("--array=" + ",".join(map(str, array)))
    if dependency:
        options += ["--dependency=afterok:" + ":".join(dependency), "--kill-on-invalid-dep=yes"]
    options += shlex.split(_env("SBATCH_OPTIONS"))
    return options


def batch_script(row, options):
    """The batch script of one row (``row`` holds TRIAL where an array task's trial goes)."""
    nproc = _distributed(row)
    words = [w if w != TRIAL else "${SLURM_ARRAY_TASK_ID}" for w in row]
    quoted = " ".join(w if "${SLURM_ARRAY_TASK_ID}" in w else shlex.quote(w) for w in words)
    run = f"{shlex.quote(sys.executable)} -m helper.slurm run"
    stop = "INT"
    lines = ["#!/bin/bash"] + [f"#SBATCH {o}" for o in options] + [
        "# written by helper/slurm.py: the run continues with --resume after a requeue",
        f"cd {shlex.quote(str(REPO))}",
        'echo "# slurm: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) '
        'at $(date -u +%FT%TZ)"',
    ]
    if nproc:
        stop = "TERM"
        lines += ['export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
                  "export MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
                  f"{run} --nproc {nproc} -- {quoted} &"]
    else:
        lines.append(f"{run} -- {quoted} &")
    lines += [
        "child=$!",
        "requeue() {",
        "  trap '' USR1 TERM  # once: SLURM's own TERM after the requeue must not requeue again",
        '  echo "# slurm: job ${SLURM_JOB_ID} told to stop; requeueing it"',
        f'  kill -{stop} "$child" 2>/dev/null; wait "$child"',
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "}",
        "trap requeue USR1 TERM",
        'wait "$child"',
        "status=$?",
        'echo "# slurm: job ${SLURM_JOB_ID} exit code $status"',
        'exit "$status"',
    ]
    return "\n".join(lines) + "\n"


def _log_name(folder):
    return re.sub(r"[^A-Za-z0-9._+=-]", "-", Path(folder).name)


def _group(records):
    """Rows: ``[(row argv with TRIAL, [(trial or None, argv, folder)])]`` in first-seen order;
    commands equal but for a numeric --trial go into one row (a job array)."""
    rows, index = [], {}
    for argv, folder in records:
        i = _trial(argv)
        if i is not None and re.fullmatch(r"[0-9]+", argv[i]):
            key = tuple(argv[:i] + [TRIAL] + argv[i + 1:])
            trial = int(argv[i])
        else:
            key, trial = tuple(argv), None
        if key not in index or trial is None:
            index[key] = len(rows)
            rows.append((list(key) if trial is not None else argv, []))
        rows[index[key]][1].append((trial, argv, folder))
    return rows


def _owner_of(word, owners):
    """The job that writes the run folder a path argument lies in, or None."""
    if "/" not in word and os.sep not in word:
        return None
    parent = os.path.normpath(os.path.dirname(os.path.abspath(word)))
    return owners.get(parent)


def plan_jobs(plan, save, submit=None, jobs=None, log=print):
    """Submit (``submit(script) -> job id``; None: a dry run numbering jobs 1, 2, ...) the
    plan's commands; returns the manifest entries written."""
    save = Path(save)
    manifest = table.read_manifest(save)
    logs = save / ".table" / "logs"
    records = []
    for argv in plan:
        folder = table.run_folder(argv)
        records.append((argv, folder))
    owners = {}     # absolute run folder -> job id that writes it
    entries, fake = [], 0
    if jobs is None and submit is not None:
        jobs = table.queue() or {}
    for row, tasks in _group(records):
        todo, dependency = [], set()
        for trial, argv, folder in tasks:
            if table.finished(folder):
                log(f"# slurm: {folder}: finished, skipped")
                continue
            old = manifest.get(str(folder), {}).get("job")
            if old and jobs and old in jobs and jobs[old][0] in table.RUNNING | table.QUEUED:
                log(f"# slurm: {folder}: job {old} already {jobs[old][0].lower()}, not resubmitted")
                owners[os.path.abspath(folder)] = old
                continue
            todo.append((trial, argv, folder))
            for word in argv:
                job = _owner_of(word, owners)
                if job:
                    dependency.add(job)
        if not todo:
            continue
        array = [t for t, _, _ in todo] if todo[0][0] is not None else None
        name = _log_name(todo[0][2])
        if array is not None:  # the first trial's folder name, less its trial, names the row
            name = re.sub(rf"_{todo[0][0]}$", "", name) or name
        log_path = logs / (f"{name}.%a.log" if array else f"{name}.log")
        options = sbatch_options(row if array else todo[0][1], log_path.resolve(),
                                 sorted(dependency), array)
        script = batch_script(row if array else todo[0][1], options)
        if submit is None:
            fake += 1
            job = f"<{fake}>"
            log("# slurm: sbatch " + " ".join(shlex.quote(o) for o in options))
        else:
            job = submit(script)
        for trial, argv, folder in todo:
            task = f"{job}_{trial}" if array else job
            owners[os.path.abspath(folder)] = task
            path = str(log_path).replace("%a", str(trial)) if array else str(log_path)
            entries.append({"folder": str(folder), "job": task, "log": path,
                            "command": shlex.join(argv), "submitted": time.time()})
            if submit is not None:
                log(f"# slurm: {folder}: job {task}")
    if submit is not None and entries:
        logs.mkdir(parents=True, exist_ok=True)
        with open(save / table.MANIFEST, "a") as f:
            for entry in entries:
                f.write(json.dumps(entry) + "\n")
    return entries


def sbatch(script):
    """Submit one batch script; its job id."""
    out = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"sbatch failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]


def run(argv, nproc=None):
    """In the job: skip a finished run, continue an unfinished one, then run the command."""
    try:
        folder = table.run_folder(argv)
    except (ValueError, SystemExit):
        folder = None  # the command itself reports what is wrong
    if folder is not None and table.finished(folder):
        print(f"# slurm: {folder} is finished; nothing to run", flush=True)
        return 0
    if folder is not None and (folder / "last.pth").exists() and "--resume" not in argv:
        print(f"# slurm: continuing {folder} with --resume", flush=True)
        argv = [*argv, "--resume"]
    if nproc:
        argv = [os.path.expandvars(w) for w in torchrun_command(argv, nproc)]
    print("# slurm: " + shlex.join(argv), flush=True)
    # The batch shell starts this in the background, where SIGINT is ignored (no job control):
    # restore it, so that the trap's SIGINT stops the run cleanly (Python's KeyboardInterrupt).
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.execvp(argv[0], argv)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m helper.slurm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    submit = sub.add_parser("submit", help="submit a plan (one command a line)")
    submit.add_argument("plan")
    submit.add_argument("--save", required=True, help="the table's SAVE (jobs.jsonl, logs)")
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch options only")
    runner = sub.add_parser("run", help="in a job: skip, resume or start: -- COMMAND")
    runner.add_argument("--nproc", type=int, help="processes per node (torchrun)")
    runner.add_argument("cmd", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "submit":
        plan = table.read_plan(args.plan)
        plan_jobs(plan, args.save, submit=None if args.dry_run else sbatch)
        return 0
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    return run(cmd, args.nproc)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""One-command GPU check of the toolbox: every step runs the entry scripts as users do
(``train_teacher.py`` / ``train_student.py`` in subprocesses) on a small subset of real
CIFAR-10 JPEGs, and the results land in ``results/gpu/<gpu name>.md`` (and ``.json``).

    python scripts/gpu_check.py                  # full check, about 8 minutes on one modern GPU
    python scripts/gpu_check.py --quick          # about 2 minutes
    python scripts/gpu_check.py --source ~/data  # a torchvision CIFAR-10 folder, an image folder or tar

Steps (CUDA): 1. the source becomes an image folder subset (``--per_class`` training and
``--per_class_test`` test images per class) and, with ``scripts/image_folder_to_cifar.py``, the
CIFAR layout; 2. a short teacher (``--teacher``, ``--teacher_epochs``); 3. one epoch of every
registered method (one epoch per stage for multi-stage ones), plus ``--logit_stand``, ``--ctkd``
and ``--combined SPEC``, under each precision of the grid (fp32 and ``--amp`` fp16 for every
method; bf16, ``--channels_last`` and ``--compile`` for a representative subset); 4. a teacher
epoch with ``--dali gpu`` on the JPEG folder; 5. torchrun over all visible GPUs (NCCL and
``--sync-bn`` when more than one); 6. a run killed (SIGKILL) in its last epoch and resumed with
``--resume`` under ``--deterministic``, whose ``last.pth`` weights must match an uninterrupted
run's exactly or within ``--resume_tol``.

Every row records img/s (the trainer's own count over the last training epoch), the peak
memory of PyTorch's CUDA allocator (``torch.cuda.max_memory_allocated``, printed by a wrapper
around the entry script's ``main``), whether the run finished with a finite training loss, and
pass/fail. The exit code is 1 when anything failed; each failing command is printed.

Without CUDA it says so in one line and runs a CPU dry run of its own plumbing on tiny sizes
(synthetic images when no source is found, resnet8, a few methods, fp32, the kill/resume check),
writes its report under ``--work`` (or ``--out``), never under ``results/gpu``, and exits 0 when
the plumbing works.
"""
import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).resolve()
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
WRAP = "--_wrap"
MARK = "GPU_CHECK_PEAK "
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp"}

# Options that make multi-stage methods run one epoch per stage, and CRD fit small data.
SMALL = {"crd": ["--nce_k", "256"], "ab": ["--init_epochs", "1"], "fsp": ["--init_epochs", "1"],
         "ft": ["--init_epochs", "1"], "sskd": ["--sskd_t_epochs", "1"],
         "pad_l2": ["--pad_l2_l2_epochs", "1"], "fitnet": ["--fitnet_stage1_epochs", "1"],
         "mgd": ["--mgd_update_freq", "1"]}
PRECISIONS = {"fp32": [], "fp16": ["--amp", "--amp_dtype", "fp16"], "bf16": ["--amp", "--amp_dtype", "bf16"],
              "channels_last": ["--channels_last"], "compile": ["--compile"]}
# Methods that stand for the others under bf16 / channels_last / compile (logit-only, feature
# maps, memory bank, multi-level fusion, projector).
SUBSET = ["kd", "at", "crd", "dkd", "reviewkd", "simkd"]
QUICK_METHODS = ["kd", "at", "crd", "dkd"]


# ----------------------------------------------------------------------------------- wrapper
def wrap_main(argv):
    """``gpu_check.py --_wrap ENTRY ARGS...``: run ``ENTRY.main(ARGS)`` and print the peak CUDA
    memory as one JSON line (also under torchrun, once per process)."""
    sys.path.insert(0, str(REPO))
    import importlib
    entry, args = argv[0], argv[1:]
    sys.argv = [f"{entry}.py", *args]  # usage and error lines name the entry script
    module = importlib.import_module(entry)
    code = 0
    try:
        module.main(args)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        import torch
        peak = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            peak = max(torch.cuda.max_memory_allocated(d) for d in range(torch.cuda.device_count()))
        print(MARK + json.dumps({"peak_bytes": peak, "rank": int(os.environ.get("RANK", 0))}), flush=True)
    sys.exit(code)


# -------------------------------------------------------------------------------------- data
def _per_class_files(folder, per_class):
    """``{class: [first per_class image files in sorted order]}`` of one split folder."""
    out = {}
    for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        out[cls.name] = files[:per_class]
    return out


def _test_split(root):
    for name in ("test", "val"):
        if (root / name).is_dir():
            return root / name
    raise SystemExit(f"error: {root} has no test/ or val/ folder")


def _find_top(folder):
    """The folder holding train/ (the folder itself or its single subfolder)."""
    if (folder / "train").is_dir():
        return folder
    subs = [p for p in folder.iterdir() if p.is_dir() and (p / "train").is_dir()]
    if len(subs) == 1:
        return subs[0]
    return None


def _write_synthetic(dest, classes, n_train, n_test, seed=0):
    """Learnable 32x32 JPEGs (a class-coloured blob on noise): data for the dry run anywhere."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = dest / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(37 * c) % 256, (91 * c) % 256, (151 * c) % 256], dtype=np.float64)
            for i in range(n):
                img = rng.normal(128, 40, (32, 32, 3))
                img[8:24, 8:24] = colour
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.jpg", quality=95)
    return dest


def _cifar_pickles_to_folder(batches, dest, per_class, per_class_test):
    """torchvision's ``cifar-10-batches-py`` -> a JPEG folder subset."""
    import pickle

    import numpy as np
    from PIL import Image
    names = pickle.load(open(batches / "batches.meta", "rb"), encoding="latin1")["label_names"]
    for split, files, n in (("train", [f"data_batch_{i}" for i in range(1, 6)], per_class),
                            ("test", ["test_batch"], per_class_test)):
        counts = {}
        for f in files:
            d = pickle.load(open(batches / f, "rb"), encoding="latin1")
            for i, (row, label) in enumerate(zip(d["data"], d["labels"])):
                if counts.get(label, 0) >= n:
                    continue
                counts[label] = counts.get(label, 0) + 1
                folder = dest / split / names[label]
                folder.mkdir(parents=True, exist_ok=True)
                img = np.asarray(row, dtype=np.uint8).reshape(3, 32, 32).transpose(1, 2, 0)
                Image.fromarray(img).save(folder / f"{f}_{i:05d}.jpg", quality=95)
    return dest


def prepare_images(source, dest, per_class, per_class_test):
    """A ``{train,test}/<class>/*.jpg`` folder with the first images of each class."""
    if dest.exists():
        shutil.rmtree(dest)
    if source is None:
        return _write_synthetic(dest, 10, per_class, per_class_test)
    source = Path(source)
    if source.is_file():  # tar archive
        sys.path.insert(0, str(REPO))
        from dataset.folder import extract_image_archive
        tmp = dest.parent / (dest.name + "_extract")
        shutil.rmtree(tmp, ignore_errors=True)
        top = extract_image_archive(source, tmp, per_class=max(per_class, per_class_test),
                                    splits=("train", "test", "val"))
        source = top
    if not source.is_dir():
        raise SystemExit(f"error: source {source} is neither a folder nor an archive")
    for cand in (source, source / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file():
            return _cifar_pickles_to_folder(cand, dest, per_class, per_class_test)
    top = _find_top(source)
    if top is None:
        raise SystemExit(f"error: {source} holds neither train/ and test/ image folders nor cifar-10-batches-py")
    for split, folder, n in (("train", top / "train", per_class), ("test", _test_split(top), per_class_test)):
        for cls, files in _per_class_files(folder, n).items():
            (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for f in files:
                shutil.copyfile(f, dest / split / cls / f.name)
    return dest


# -------------------------------------------------------------------------------------- steps
LINE = re.compile(r"Epoch (\d+) \[(\d+)/(\d+)\] loss (\S+) .* ([0-9.]+) img/s")


class Step:
    def __init__(self, name, entry, args, *, method="", precision="", kind="train", torchrun=0,
                 env=None, timeout=300):
        self.name, self.entry, self.args = name, entry, list(args)
        self.method, self.precision, self.kind = method, precision, kind
        self.torchrun, self.env, self.timeout = torchrun, env or {}, timeout

    def command(self):
        base = [str(SCRIPT), WRAP, self.entry, *self.args]
        if self.torchrun:
            return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={self.torchrun}", *base]
        return [sys.executable, *base]


def shell_line(cmd):
    import shlex
    return " ".join(shlex.quote(c) for c in cmd)


def _summary(save):
    found = sorted(Path(save).glob("*/*/summary.json"))
    return json.loads(found[-1].read_text()) if found else None


def parse_output(text):
    """(img/s of the last training progress line, peak bytes over processes) from a run's output."""
    rate, peak = None, None
    for line in text.splitlines():
        m = LINE.search(line)
        if m:
            rate = float(m.group(5))
        if line.startswith(MARK):
            p = json.loads(line[len(MARK):])["peak_bytes"]
            if p is not None:
                peak = max(peak or 0, p)
    return rate, peak


def run_step(step, save, log_dir):
    """Run one step; returns its row."""
    cmd = step.command()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **step.env)
    start = time.time()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=step.timeout, start_new_session=True)
        out, rc = proc.stdout, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        out += f"\n[gpu_check] timed out after {step.timeout}s"
        rc = "timeout"
    wall = time.time() - start
    (log_dir / f"{step.name}.log").write_text(shell_line(cmd) + "\n\n" + out)
    rate, peak = parse_output(out)
    summary = _summary(save)
    loss = summary.get("last_train_loss") if summary else None
    finite = loss is not None and math.isfinite(loss)
    finished = bool(summary and summary.get("finished"))
    ok = rc == 0 and finished and finite
    why = "" if ok else (f"exit {rc}" if rc != 0 else ("not finished" if not finished else "loss not finite"))
    return {"step": step.name, "kind": step.kind, "method": step.method, "precision": step.precision,
            "status": "pass" if ok else "fail", "why": why, "img_s": rate,
            "peak_mib": None if peak is None else round(peak / 2 ** 20, 1),
            "loss": loss, "finite": finite, "best_acc": summary.get("best_acc") if summary else None,
            "wall_s": round(wall, 1), "command": shell_line(cmd), "log": str(log_dir / f"{step.name}.log"),
            "tail": "" if ok else "\n".join(out.strip().splitlines()[-15:])}


def skip_row(name, kind, why, method="", precision=""):
    return {"step": name, "kind": kind, "method": method, "precision": precision, "status": "skip",
            "why": why, "img_s": None, "peak_mib": None, "loss": None, "finite": None,
            "best_acc": None, "wall_s": 0.0, "command": "", "log": "", "tail": ""}


def resume_check(common, work, log_dir, timeout, tol):
    """An uninterrupted run against one SIGKILLed after the first batch of its last epoch was
    logged and then continued with --resume: the last.pth weights must agree."""
    import torch
    epochs = "2"
    # cuBLAS is deterministic only with a fixed workspace (set before CUDA starts).
    det_env = {"CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG", ":4096:8")}
    args = [*common, "--epochs", epochs, "--deterministic", "--lr_decay_epochs", "1"]
    full = Step("resume_uninterrupted", "train_student", [*args, "--save_folder", str(work / "resume_full")],
                method="kd", precision="fp32", kind="resume", env=det_env, timeout=timeout)
    row = run_step(full, work / "resume_full", log_dir)
    if row["status"] != "pass":
        return row
    save = work / "resume_killed"
    killed = Step("resume_killed", "train_student",
                  [*args, "--save_folder", str(save), "--print_freq", "1"], timeout=timeout)
    cmd = killed.command()
    env = dict(os.environ, PYTHONUNBUFFERED="1", **det_env)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    lines, was_killed = [], False
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(f"Epoch {epochs} [1/") and not was_killed:
            os.killpg(proc.pid, signal.SIGKILL)  # as the OOM killer or a lost node would
            was_killed = True
    proc.wait()
    timer.cancel()
    (log_dir / "resume_killed.log").write_text(shell_line(cmd) + "\n\n" + "".join(lines))
    resumed = Step("resume_resumed", "train_student", [*args, "--save_folder", str(save), "--resume"],
                   method="kd", precision="fp32", kind="resume", env=det_env, timeout=timeout)
    row = run_step(resumed, save, log_dir)
    row["step"] = "resume"
    row["command"] = f"{shell_line(cmd)}  (SIGKILL in epoch {epochs}), then {row['command']}"
    if row["status"] != "pass":
        return row
    if not was_killed:
        row.update(status="fail", why=f"the run ended before the kill (exit {proc.returncode}); "
                                         "use more --per_class images")
        return row
    a = torch.load(next((work / "resume_full").glob("*/*/last.pth")), map_location="cpu", weights_only=True)
    b = torch.load(next(save.glob("*/*/last.pth")), map_location="cpu", weights_only=True)
    diff = 0.0
    for k, v in a["model"].items():
        if torch.is_floating_point(v):
            diff = max(diff, (v.float() - b["model"][k].float()).abs().max().item())
        elif not torch.equal(v, b["model"][k]):
            diff = math.inf
    row["max_weight_diff"] = diff
    if diff == 0:
        row["why"] = "weights identical"
    elif diff <= tol:
        row["why"] = f"weights within {tol:g} (max abs diff {diff:.3g})"
    else:
        row.update(status="fail", why=f"max abs weight diff {diff:.3g} > --resume_tol {tol:g}")
    return row


# ------------------------------------------------------------------------------------- report
def gpu_name():
    """The first GPU's name, from nvidia-smi so that this process starts no CUDA context."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip().splitlines()
        if out and out[0].strip():
            return out[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    import torch
    return torch.cuda.get_device_name(0)


def versions():
    import torch
    v = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        v["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    except RuntimeError:  # no driver
        v["cudnn"] = None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        v["driver"] = out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        v["driver"] = None
    try:
        import nvidia.dali
        v["dali"] = nvidia.dali.__version__
    except (ImportError, OSError) as e:  # not installed, or its libraries do not load here
        v["dali"] = f"not importable ({type(e).__name__}: {e})"
    return v


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def write_report(out, meta, rows):
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"# GPU check: {meta['device']}", "",
             f"Command: `{meta['command']}`  ",
             f"Mode: {meta['mode']}; total time {meta['total_s']:.0f} s; "
             f"{sum(r['status'] == 'pass' for r in rows)} passed, "
             f"{sum(r['status'] == 'fail' for r in rows)} failed, "
             f"{sum(r['status'] == 'skip' for r in rows)} skipped.  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + "  ",
             f"Data: {meta['data']}  ",
             f"Teacher {meta['teacher']}, student {meta['student']}, batch {meta['batch_size']}, "
             f"{meta['jobs']} step(s) at a time (img/s is the trainer's own count over the last "
             "training epoch; with more than one step at a time they share the GPU).  ",
             f"Skipped to fit: {meta['skipped']}", "",
             "| step | method | precision | img/s | peak MiB | loss | finite | status | note | wall s |",
             "|---|---|---|---:|---:|---:|---|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['step']} | {r['method']} | {r['precision']} | {_fmt(r['img_s'], '.0f')} | "
                     f"{_fmt(r['peak_mib'], '.0f')} | {_fmt(r['loss'], '.4f')} | "
                     f"{'' if r['finite'] is None else ('yes' if r['finite'] else 'NO')} | "
                     f"{r['status']} | {r['why']} | {r['wall_s']:.1f} |")
    failed = [r for r in rows if r["status"] == "fail"]
    if failed:
        lines += ["", "## Failed commands", ""]
        for r in failed:
            lines += [f"- {r['step']}: `{r['command']}`", "", "```", r["tail"], "```"]
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


# --------------------------------------------------------------------------------------- main
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default=None,
                   help="CIFAR-10 JPEG tar or image folder ({train,test}/<class>/*), or a torchvision "
                        f"CIFAR-10 folder (default {DEFAULT_ARCHIVE} when present, else synthetic images "
                        "in the dry run)")
    p.add_argument("--quick", action="store_true", help="a 2-minute subset")
    p.add_argument("--out", default=None, help="report path (default results/gpu/<gpu name>.md on CUDA, "
                                               "<work>/cpu_dry_run.md without CUDA); a .json lies beside it")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder, removed "
                                                "unless --keep)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (data, runs, logs)")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods for the fp32/fp16 grid (default all; --quick: "
                        + ",".join(QUICK_METHODS) + ")")
    p.add_argument("--precisions", default=None,
                   help="comma-separated subset of " + ",".join(PRECISIONS) + " (default all on CUDA)")
    p.add_argument("--combined", default=None,
                   help="a combined --distill value to check as well (e.g. once the toolbox has one)")
    p.add_argument("--teacher", default=None, help="teacher model (resnet56; dry run resnet8)")
    p.add_argument("--student", default=None, help="student model (resnet20; dry run resnet8)")
    p.add_argument("--teacher_epochs", type=int, default=None, help="teacher epochs (5; --quick 2; dry run 1)")
    p.add_argument("--per_class", type=int, default=None,
                   help="training images per class (400; --quick 200; dry run 6)")
    p.add_argument("--per_class_test", type=int, default=None, help="test images per class (100; dry run 2)")
    p.add_argument("--batch_size", type=int, default=None, help="batch (128; dry run 8)")
    p.add_argument("--jobs", type=int, default=None,
                   help="method steps run at once (2 on CUDA: halves the time, img/s then shares the GPU)")
    p.add_argument("--timeout", type=int, default=300, help="seconds per step (--compile steps: twice)")
    p.add_argument("--resume_tol", type=float, default=1e-3,
                   help="largest absolute weight difference accepted by the resume check when CUDA is "
                        "not bit-deterministic (0 demands identical weights)")
    p.add_argument("--dry_run", action="store_true", help="the CPU dry run even where CUDA is available")
    return p.parse_args(argv)


def build_plan(a, cuda, ngpu, methods_all):
    """(steps before the grid, grid steps, steps after, skipped notes) -- without the teacher."""
    dry = not cuda
    if a.methods:
        methods = a.methods.split(",")
    elif dry:
        methods = ["kd", "at"]
    elif a.quick:
        methods = QUICK_METHODS
    else:
        methods = methods_all
    if a.precisions:
        precisions = a.precisions.split(",")
    else:
        precisions = ["fp32"] if dry else list(PRECISIONS)
    for pr in precisions:
        if pr not in PRECISIONS:
            raise SystemExit(f"error: unknown precision {pr}; choose from {', '.join(PRECISIONS)}")
    specs = [(m, m, SMALL.get(m, [])) for m in methods]
    if not dry and not a.methods:
        specs += [("kd+logit_stand", "kd", ["--logit_stand"]), ("kd+ctkd", "kd", ["--ctkd"])]
    if a.combined:
        specs.append((f"combined:{a.combined}", a.combined, []))
    subset = ["kd"] if a.quick else SUBSET
    compiled = ["kd"] if a.quick else ["kd", "at"]
    extra_subset = [] if a.quick else ["kd+logit_stand"]
    plan, skipped = [], []
    for pr in precisions:
        for label, method, extra in specs:
            if (pr in ("fp32", "fp16") or (pr == "compile" and label in compiled)
                    or (pr in ("bf16", "channels_last") and label in subset + extra_subset)):
                plan.append((label, method, pr, extra))
    if not dry:
        skipped.append(f"bf16 and channels_last only for {', '.join(subset + extra_subset)}; "
                       f"--compile only for {', '.join(compiled)}")
        if a.quick:
            skipped.append(f"methods other than {', '.join(QUICK_METHODS)}")
        if not a.combined:
            skipped.append("a combined --distill (pass --combined SPEC)")
    return plan, skipped


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == WRAP:
        return wrap_main(argv[1:])
    a = parse_args(argv)
    t0 = time.time()
    sys.path.insert(0, str(REPO))
    import torch
    available = torch.cuda.is_available()
    cuda = available and not a.dry_run
    if not cuda:
        print(("CUDA is not available" if not available else "--dry_run")
              + ": running the CPU dry run of gpu_check's own plumbing (tiny sizes, no CUDA checks)", flush=True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the steps (subprocesses) train on the CPU too
    ngpu = torch.cuda.device_count() if cuda else 0
    device = (gpu_name() + (f" x{ngpu}" if ngpu > 1 else "")) if cuda else "CPU dry run"
    dry = not cuda
    teacher = a.teacher or ("resnet8" if dry else "resnet56")
    student = a.student or ("resnet8" if dry else "resnet20")
    per_class = a.per_class or (6 if dry else (200 if a.quick else 400))
    per_class_test = a.per_class_test or (2 if dry else 100)
    bs = a.batch_size or (8 if dry else 128)
    teacher_epochs = a.teacher_epochs or (1 if dry else (2 if a.quick else 5))
    jobs = a.jobs or (1 if dry else 2)
    source = a.source
    if source is None and DEFAULT_ARCHIVE.is_file() and not dry:
        source = str(DEFAULT_ARCHIVE)
    if source is None and not dry:
        raise SystemExit(f"error: pass --source (no {DEFAULT_ARCHIVE}): a CIFAR-10 JPEG tar or folder, "
                         "or torchvision's CIFAR-10 folder")

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("teacher", "runs", "dali", "torchrun", "resume_full", "resume_killed", "logs"):
        shutil.rmtree(work / sub, ignore_errors=True)  # a reused --work: the entry scripts never overwrite runs
    logs = work / "logs"
    logs.mkdir(exist_ok=True)
    if a.out:
        out = Path(a.out)
    elif dry:
        out = work / "cpu_dry_run.md"
    else:
        out = REPO / "results" / "gpu" / (re.sub(r"[^A-Za-z0-9._-]+", "_", device) + ".md")

    from distillers import distiller_classes
    plan, skipped = build_plan(a, cuda, ngpu, [c.name for c in distiller_classes()])
    rows = []

    def report():
        meta = {"device": device, "mode": "dry run (no CUDA)" if dry else ("quick" if a.quick else "full"),
                "command": shell_line([sys.executable, "scripts/gpu_check.py", *argv]),
                "total_s": time.time() - t0, "versions": versions(), "teacher": teacher, "student": student,
                "batch_size": bs, "jobs": jobs,
                "data": f"{source or 'synthetic JPEGs'}: {per_class} training and {per_class_test} test "
                        "images per class",
                "skipped": "; ".join(skipped) or "nothing"}
        write_report(out, meta, rows)

    # 1. data
    print(f"[gpu_check] data from {source or 'synthetic images'} -> {work}", flush=True)
    images = prepare_images(source, work / "images", per_class, per_class_test)
    cifar = work / "cifar"
    shutil.rmtree(cifar, ignore_errors=True)
    conv = subprocess.run([sys.executable, str(REPO / "scripts" / "image_folder_to_cifar.py"), str(images),
                           str(cifar)], cwd=REPO, capture_output=True, text=True)
    if conv.returncode != 0:
        print(f"[gpu_check] FAILED: image_folder_to_cifar.py {images} {cifar}\n{conv.stdout}{conv.stderr}")
        return 1
    data = ["--dataset", "cifar10", "--data_folder", str(cifar), "--batch_size", str(bs),
            "--print_freq", "1000"]

    def go(step, save):
        print(f"[gpu_check] {step.name}", flush=True)
        row = run_step(step, save, logs)
        print(f"[gpu_check] {step.name}: {row['status']} {row['why']} ({row['wall_s']:.0f}s)", flush=True)
        return row

    # 2. teacher
    tsave = work / "teacher"
    rows.append(go(Step("teacher", "train_teacher", ["--model", teacher, *data, "--epochs", str(teacher_epochs),
                                                      "--save_folder", str(tsave)],
                        method="vanilla", precision="fp32", kind="teacher", timeout=a.timeout), tsave))
    if rows[-1]["status"] != "pass":
        report()
        print(f"[gpu_check] the teacher failed; stopping. Command:\n{rows[-1]['command']}\n{rows[-1]['tail']}")
        return 1
    path_t = str(next(tsave.glob("*/*/best.pth")))
    common = ["--path_t", path_t, "--model_s", student, *data]

    # 3. the method x precision grid
    def grid_step(item):
        label, method, pr, extra = item
        name = re.sub(r"[^A-Za-z0-9._+-]+", "_", f"{label}_{pr}")
        save = work / "runs" / name
        timeout = a.timeout * (2 if pr == "compile" else 1)
        return go(Step(name, "train_student", [*common, "--distill", method, "--epochs", "1", *extra,
                                               *PRECISIONS[pr], "--save_folder", str(save)],
                       method=label, precision=pr, kind="method", timeout=timeout), save)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        rows += list(pool.map(grid_step, plan))

    # 4. DALI gpu decoding of the JPEG folder
    if dry:
        rows.append(skip_row("dali_gpu", "dali", "no CUDA"))
    else:
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            rows.append(skip_row("dali_gpu", "dali", "DALI is not installed"))
        else:
            dsave = work / "dali"
            rows.append(go(Step("dali_gpu", "train_teacher",
                                ["--model", "resnet18", "--dataset", "folder", "--data_folder", str(images),
                                 "--dali", "gpu", "--num_workers", "4", "--epochs", "1", "--batch_size",
                                 str(bs), "--print_freq", "1000", "--save_folder", str(dsave)],
                                method="vanilla", precision="fp32", kind="dali", timeout=a.timeout), dsave))

    # 5. torchrun (NCCL, --sync-bn with more than one GPU)
    if dry:
        rows.append(skip_row("torchrun_nccl", "distributed", "no CUDA"))
    else:
        dsave = work / "torchrun"
        extra = ["--sync-bn"] if ngpu > 1 else []
        rows.append(go(Step(f"torchrun_x{ngpu}", "train_student",
                            [*common, "--distill", "kd", "--epochs", "1", *extra, "--save_folder", str(dsave)],
                            method="kd", precision="fp32", kind="distributed", torchrun=ngpu,
                            timeout=a.timeout), dsave))
        if ngpu == 1:
            rows[-1]["why"] = (rows[-1]["why"] + "; " if rows[-1]["why"] else "") + \
                "one GPU: world size 1 runs without a process group (no NCCL, no --sync-bn)"

    # 6. kill and --resume under --deterministic
    print("[gpu_check] resume (kill and --resume)", flush=True)
    row = resume_check([*common, "--distill", "kd"], work, logs, a.timeout, a.resume_tol)
    print(f"[gpu_check] resume: {row['status']} {row['why']}", flush=True)
    rows.append(row)

    report()
    failed = [r for r in rows if r["status"] == "fail"]
    total = time.time() - t0
    print(f"[gpu_check] {len(rows) - len(failed)} of {len(rows)} steps passed or skipped in {total:.0f} s; "
          f"report: {out}", flush=True)
    for r in failed:
        print(f"[gpu_check] FAILED {r['step']} ({r['why']}): {r['command']}\n  log: {r['log']}\n{r['tail']}",
              flush=True)
    if failed or a.keep or a.work or out.resolve().is_relative_to(work.resolve()):
        print(f"[gpu_check] scratch folder kept: {work}", flush=True)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

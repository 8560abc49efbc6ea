"""The run folder (DESIGN.md, "Run folder"): TensorBoard events, last/best checkpoints and
summary.json, all written atomically and by rank 0 only, which owns the folder through a lock
file while the run lasts."""
import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

from helper.core.files import atomic_save, atomic_write
from helper.core.errors import UserError
from models.registry import folder_name

SEP = "~" if sys.platform.startswith("win") else ":"


def teacher_run_name(config):
    """SimKD's teacher folder name: ``<model>_vanilla_<dataset>_trial_<trial>``."""
    return f"{folder_name(config.model)}_vanilla_{config.data.dataset}_trial_{config.run.trial}"


def student_run_name(config, teacher_name):
    """SimKD's student folder name: ``S:<s>_T:<t>_<dataset>_<method>_r:<c>_a:<d>_b:<b>_<trial>``,
    with the method's canonical name (``_fkd`` after it for ``--fkd``) and its effective
    weights."""
    s, w = SEP, config.method.weights
    model = folder_name(config.model)
    teacher = "+".join(folder_name(t) for t in  # several teachers: --path_t A B
                       ([teacher_name] if isinstance(teacher_name, str) else teacher_name))
    # FKD's stored crops: another training
    fkd = "_fkd" if config.teacher is not None and config.teacher.fkd else ""
    return (f"S{s}{model}_T{s}{teacher}_{config.data.dataset}_{config.method.name}{fkd}_"
            f"r{s}{w.cls:g}_a{s}{w.div:g}_b{s}{config.method.beta_label()}_{config.run.trial}")


@contextmanager
def deferred_interrupt():
    """Ctrl-C during the block (an epoch's checkpoints, events and summary) takes effect at
    its end. Raised inside TensorBoard's writer, a KeyboardInterrupt can leave its queue's lock
    held, and the run then hangs at exit instead of stopping."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(signal.SIGINT, received[0])


class RunFolder:
    """Writes one run's files; a context manager. On entry, rank 0 creates the folder and takes
    its lock (``.lock``: the owner's pid and host, and SLURM_JOB_ID in a SLURM job), refusing
    a folder another run holds; on exit it releases the lock, and removes the folder when it created it and the run failed before
    any last.pth. On ranks other than 0 every method does nothing."""

    def __init__(self, path, write=True, log=print):
        self.path, self.write, self.log = Path(path), write, log
        self.lock = self.path / ".lock"
        self.writer = None
        self.created = []     # the folders this run created, the run folder first
        self.locked = False
        self.saved = False    # whether this run wrote a last.pth

    def __enter__(self):
        if self.write:
            try:
                self._make_folder()
                self._take_lock()
                self._remove_temporaries()
            except BaseException:
                self._release(failed=True)
                raise
        return self

    def __exit__(self, kind, error, traceback):
        self._release(failed=kind is not None)

    def _make_folder(self):
        self.created = [p for p in (self.path, *self.path.parents) if not p.exists()]
        try:
            self.path.mkdir(parents=True)
        except FileExistsError:
            self.created = []
            if self.path.is_dir():
                return
            raise self._cannot_create(None)
        except OSError as e:
            raise self._cannot_create(e) from e

    def _cannot_create(self, error):
        blocker = next((p for p in (self.path, *self.path.parents)
                        if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else error.strerror or error
        return UserError(f"cannot create the run folder {self.path} ({why}); check --save_folder")

    def _take_lock(self):
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if os.environ.get("SLURM_JOB_ID"):  # a requeued job (same id) may take it over
            me["slurm_job"] = os.environ["SLURM_JOB_ID"]
        me = json.dumps(me)
        while True:
            try:
                fd = os.open(self.lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._check_owner()
                continue
            except OSError as e:
                raise self._cannot_write(e) from e
            self.locked = True  # from here on, _release removes the lock
            try:
                os.write(fd, me.encode())
            except OSError as e:
                raise self._cannot_write(e) from e
            finally:
                os.close(fd)
            return

    def _check_owner(self):
        """Refuse the folder while its lock's owner may be alive; remove a stale lock."""
        owner = self._read_owner()
        if owner is None:
            return  # released meanwhile: try again
        pid, host, job = owner
        if job is not None and job == os.environ.get("SLURM_JOB_ID") \
                and host != socket.gethostname():
            # the same SLURM job, requeued onto another node: its earlier run is over
            self._take_over(f"SLURM job {job} on host {host}, requeued here")
            return
        if host != socket.gethostname():
            raise UserError(f"{self.path} is in use by a run on host {host} (pid {pid}); if that "
                            f"run is dead, delete {self.lock} and start again")
        if pid_alive(pid):
            raise UserError(f"{self.path} is in use by another run (pid {pid} on {host}); wait "
                            "for it to end, or use another --trial or --save_folder (if pid "
                            f"{pid} is no training run, delete {self.lock})")
        self._take_over(f"pid {pid}, which is no longer running")

    def _take_over(self, holder):
        """Remove the lock of a run that is over (``holder`` says whose), to take the folder."""
        self.log(f"note: {self.path} was locked by {holder}; taking it over")
        try:
            self.lock.unlink(missing_ok=True)
        except OSError as e:
            raise self._cannot_write(e) from e

    def _read_owner(self):
        """The lock's ``(pid, host, SLURM job or None)``; None when it is gone. A lock this
        toolbox did not write (or one a run died writing) is refused, never taken over: what
        holds it is unknown."""
        try:
            return read_lock(self.lock)
        except ForeignLock as e:
            raise self._foreign_lock(str(e)) from None

    def _foreign_lock(self, what):
        return UserError(f"{self.path} is locked: its {self.lock.name} {what}; if no run uses "
                         f"this folder, delete {self.lock} and start again")

    def _cannot_write(self, error):
        return UserError(f"cannot write in the run folder {self.path} ({error.strerror or error}); "
                         "check --save_folder and free disk space")

    def _remove_temporaries(self):
        """Remove the temporary files of writes killed midway (``.<name>.tmp<pid>``)."""
        for tmp in self.path.glob(".*.tmp*"):
            match = re.fullmatch(r"\..+\.tmp(\d+)", tmp.name)
            if match and not pid_alive(int(match.group(1))):
                tmp.unlink(missing_ok=True)

    def _release(self, failed):
        if self.writer is not None:
            try:
                self.writer.close()
            except OSError:
                pass  # every epoch's scalars were flushed, or their failure already reported
            self.writer = None
        if self.locked and failed and not self.saved and self.path in self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.locked:
            self.lock.unlink(missing_ok=True)
        self.locked = False
        for folder in self.created if failed else ():  # those still holding something stay
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:
                break

    def scalars(self, values, step):
        if not self.write:
            return
        try:
            if self.writer is None:  # at the first epoch's end: a run failing before leaves none
                from torch.utils.tensorboard import SummaryWriter
                _quiet_tensorboard_threads()
                # Drops what an interrupted run logged after the last.pth this run resumed.
                self.writer = SummaryWriter(str(self.path), purge_step=step)
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)
            self.writer.flush()
        except OSError as e:
            raise UserError(f"cannot write the TensorBoard events in {self.path} "
                            f"({e.strerror or e}); {self._advice()}") from e

    def save(self, state, name):
        if self.write:
            self._atomic(name, lambda path: atomic_save(state, path))
            self.saved = self.saved or name == "last.pth"

    def summary(self, data):
        if self.write:
            text = json.dumps(data, indent=2, default=str).encode()
            self._atomic("summary.json", lambda path: atomic_write(path, lambda f: f.write(text)))

    def _atomic(self, name, write):
        path = self.path / name
        try:
            write(path)
        except OSError as e:
            kept = f"the previous {name} is kept; " if path.exists() else ""
            raise UserError(f"cannot write {path} ({e.strerror or e}); {kept}"
                            f"{self._advice()}") from e

    def _advice(self):
        if (self.path / "last.pth").exists():
            return "free disk space and continue with --resume"
        return "free disk space and start the run again"


# Process ids are positive C ints; os.kill(0 or -1, ...) would signal a group of processes.
MAX_PID = 2**31 - 1


class ForeignLock(ValueError):
    """A lock file this toolbox did not write (or one a run died writing); its text says why."""


def read_lock(lock):
    """A run folder's lock as ``(pid, host, SLURM job id or None)``; None when there is none.
    ForeignLock for anything a run of this toolbox does not write."""
    lock = Path(lock)
    if lock.is_dir():
        raise ForeignLock("is a folder, not a lock file")
    try:
        text = lock.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ForeignLock(f"cannot be read ({e.strerror or e})") from None
    if not text.strip():
        raise ForeignLock("is empty (a run stopped while taking it, or one is taking it now)")
    try:
        owner = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested too deep to parse
        owner = None
    if not (isinstance(owner, dict) and type(owner.get("pid")) is int
            and isinstance(owner.get("host"), str)):
        raise ForeignLock('holds no {"pid": ..., "host": ...} of a run')
    if not 0 < owner["pid"] <= MAX_PID:
        raise ForeignLock(f"holds pid {owner['pid']}, which no process can have")
    job = owner.get("slurm_job")
    return owner["pid"], owner["host"], job if isinstance(job, str) and job else None


def pid_alive(pid):
    """Whether process ``pid`` of this machine runs (Windows: assumed, as it cannot be asked
    without a risk of killing it)."""
    if not 0 < pid <= MAX_PID:
        return False
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _quiet_tensorboard_threads():
    """TensorBoard's writer thread prints the traceback of a failed write, which the writer
    raises again in the main thread, where ``RunFolder.scalars`` reports it in one line."""
    hook = threading.excepthook
    if getattr(hook, "quiet_tensorboard", False):
        return

    def quiet(args):
        if type(args.thread).__name__ != "_AsyncWriterThread":
            hook(args)
    quiet.quiet_tensorboard = True
    threading.excepthook = quiet

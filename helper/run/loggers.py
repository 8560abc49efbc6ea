"""Where a run's logs go besides its TensorBoard scalars and summary.json.

- ``train.log`` (``train_log``): every line the run prints (``ctx.log`` on rank 0: the
  teachers' scores, one line per epoch, the iteration lines of ``--print_freq``, the final
  line), appended and flushed line by line, so ``tail -f`` follows it and ``--resume`` adds to
  it after a ``# started <time>`` line.
- TensorBoard's HParams tab (``RunLoggers``): each run folder is one session in its own
  events: its hyper-parameters (``hparams``: the method, the student, the teacher, the data
  set, the trial and every option that changes what is trained) are written when its first
  epoch ends, its session end (status success) when its last epoch ends. No experiment summary
  is written: TensorBoard then builds the table from every session under ``--logdir`` (the
  union of their hyper-parameters, so runs of different methods share one table) with their
  scalars as metrics: ``test/acc`` (the last epoch's top-1), ``test/best_acc`` (written here
  each epoch: the best top-1 so far) and the others. ``tensorboard --logdir save`` shows a
  whole table of runs in one view.
- ``--logger wandb`` / ``--logger mlflow`` (optional; the package is imported only when asked,
  a missing one refused in one line at parse time): the same scalars at the same steps, and
  the hyper-parameters as the run's config (wandb) or params (mlflow). wandb: project from
  ``WANDB_PROJECT`` (wandb's own variable), the run id derived from the run folder's path, so
  ``--resume`` continues the same wandb run; ``WANDB_MODE=offline`` works as wandb documents.
  MLflow: tracking URI and experiment from ``MLFLOW_TRACKING_URI`` and
  ``MLFLOW_EXPERIMENT_NAME`` (MLflow's own variables; default experiment ``kd_toolbox``; a local
  ``file:`` store works offline, with ``MLFLOW_ALLOW_FILE_STORE=true`` from MLflow 3 on);
  the run is tagged ``kd_toolbox.run_folder`` with the folder's path and ``--resume`` continues
  it; params already logged are not logged again (MLflow refuses a changed value: a grown
  ``--epochs`` keeps the first). Only rank 0 logs.
"""
import hashlib
import importlib
import importlib.util
import os
import sys
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from helper.core.errors import UserError

LOGGERS = ("wandb", "mlflow")
LOG_FILE = "train.log"
MLFLOW_TAG = "kd_toolbox.run_folder"
BEST_TAG = "test/best_acc"  # the best top-1 so far, a scalar beside test/acc (HParams metric)
_PACKAGES = {"wandb": "wandb", "mlflow": "mlflow (or the lighter mlflow-skinny)"}


def check_installed(name):
    """``--logger NAME``: its package must be installed (found, not imported)."""
    if (name is not None and sys.modules.get(name) is None
            and importlib.util.find_spec(name) is None):
        raise UserError(f"--logger {name} needs the {name} package, which is not installed; "
                        f"pip install {_PACKAGES[name].split(' ')[0]}, or drop --logger")


# ---- train.log -------------------------------------------------------------------------------

class _TrainLog:
    """``<run>/train.log`` opened for appending; a write that fails (a full disk) is reported
    once through ``log`` and the run goes on without it."""

    def __init__(self, path, log):
        self.path, self.log, self.file = Path(path), log, None
        try:
            self.file = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            self._failed(e)

    def write(self, text):
        if self.file is None:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except OSError as e:
            self._failed(e)

    def _failed(self, error):
        self.close()
        self.log(f"warning: cannot write {self.path} ({error.strerror or error}); the run goes "
                 "on without it")

    def close(self):
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
            self.file = None


@contextmanager
def train_log(run, ctx):
    """While the block runs, every ``ctx.log`` line is also appended to ``run``'s train.log
    (rank 0, which writes the folder). ``Context`` is a frozen dataclass, so the tee is an
    instance attribute set with ``object.__setattr__``, shadowing the method for the block
    and removed after it: every line the run prints through ``ctx`` (those of ``before_fit``
    included) lands in the file, and no caller needs another logger passed in."""
    if not run.write:
        yield ctx.log
        return
    printed = ctx.log
    file = _TrainLog(Path(run.path) / LOG_FILE, printed)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    file.write(f"# started {now} (pid {os.getpid()}; config.yaml holds the options)\n")

    def tee(*args, sep=" ", end="\n", **kwargs):
        printed(*args, sep=sep, end=end, **kwargs)
        file.write(sep.join(map(str, args)) + end)
    object.__setattr__(ctx, "log", tee)
    try:
        yield tee
    finally:
        object.__delattr__(ctx, "log")
        file.close()


# ---- HParams and --logger --------------------------------------------------------------------

def hparams(config, meta):
    """The run's hyper-parameters as TensorBoard's HParams plugin takes them (int, float, str
    or bool): who (method, student, teacher, data set, trial) and the recipe: every option of
    the run that changes what is trained (those ``--resume`` keeps fixed, ``helper.run.resume``:
    the method's options and weights, the schedule, the data and augmentation, precision, the
    seed) and ``--epochs``; lists joined by commas, None as ``none``."""
    from helper.run.resume import RESUME_FREE
    args = config.effective_args()
    teacher = meta.get("teacher")
    values = {"method": meta.get("distill") or config.method.name, "student": config.model,
              "teacher": "+".join(teacher) if isinstance(teacher, list) else str(teacher or "none"),
              "dataset": args.get("dataset"), "trial": str(args.get("trial")),
              **{k: v for k, v in args.items() if k == "epochs" or k not in RESUME_FREE}}
    return {k: _hparam_value(v) for k, v in values.items()}


def _hparam_value(value):
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return "none"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


class RunLoggers:
    """One run's HParams session and ``--logger`` mirror, on the rank that writes the run
    folder; a context manager (on exit the external run ends: finished, failed or killed)."""

    def __init__(self, run, config, meta, log=print):
        self.run, self.log = run, log
        self.name = config.run.logger if run.write else None
        self.hparams = hparams(config, meta) if run.write else {}
        self.started = False
        self.backend = None

    def __enter__(self):
        if self.name is not None:
            kind = {"wandb": _Wandb, "mlflow": _Mlflow}[self.name]
            try:
                self.backend = kind(self.run, self.hparams)
            except UserError:
                raise
            except Exception as e:  # the package's own errors: a store, a login, a network
                raise UserError(f"--logger {self.name} cannot start its run "
                                f"({type(e).__name__}: {' '.join(str(e).split())}); fix its "
                                "settings, or drop --logger") from e
        return self

    def __exit__(self, kind, error, traceback):
        if self.backend is not None:
            status = ("finished" if kind is None else
                      "killed" if issubclass(kind, KeyboardInterrupt) else "failed")
            backend, self.backend = self.backend, None
            try:
                backend.close(status)
            except Exception as e:
                self.log(f"warning: --logger {self.name} could not end its run "
                         f"({type(e).__name__}: {' '.join(str(e).split())})")

    def epoch(self, values, step, best_acc, finished):
        """After ``run.scalars(values, step)``: the best top-1 so far as ``test/best_acc``, the
        HParams session start (once per process; TensorBoard keeps the first) and, at the last
        epoch, its end; the same scalars to the ``--logger``."""
        if not self.run.write:
            return
        values = {**values, BEST_TAG: best_acc}
        writer = self.run.writer
        try:
            writer.add_scalar(BEST_TAG, best_acc, step)
            if not self.started:
                self._session("start")
                self.started = True
            if finished:
                self._session("end")
            writer.flush()
        except OSError as e:
            raise UserError(f"cannot write the TensorBoard events in {self.run.path} "
                            f"({e.strerror or e}); free disk space and continue with "
                            "--resume") from e
        if self.backend is not None:
            try:
                self.backend.scalars(values, step)
            except Exception as e:  # a mirror never stops the training: warn once, go on
                self.log(f"warning: --logger {self.name} failed at epoch {step} "
                         f"({type(e).__name__}: {' '.join(str(e).split())}); the run goes on "
                         "without it (TensorBoard and summary.json keep everything)")
                self.backend = None

    def _session(self, which):
        from torch.utils.tensorboard.summary import hparams as hparams_summaries
        _, start, end = hparams_summaries(self.hparams, {"test/acc": 0.0, BEST_TAG: 0.0})
        self.run.writer.file_writer.add_summary(start if which == "start" else end)


def _import(name):
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise UserError(f"--logger {name} needs the {_PACKAGES[name]} package ({e}); "
                        f"pip install it, or drop --logger") from None


def _folder_key(run):
    return hashlib.sha256(str(Path(run.path).resolve()).encode()).hexdigest()


class _Wandb:
    """A wandb run per run folder: its id from the folder's path (``resume="allow"``)."""

    def __init__(self, run, params):
        self.wandb = _import("wandb")
        self.run = self.wandb.init(id=_folder_key(run)[:32], name=Path(run.path).name,
                                   dir=str(run.path), config=params, resume="allow")

    def scalars(self, values, step):
        self.run.log(dict(values), step=step)

    def close(self, status):
        self.run.finish(exit_code=0 if status == "finished" else 1)


class _Mlflow:
    """An MLflow run per run folder, found again by its ``kd_toolbox.run_folder`` tag."""

    def __init__(self, run, params):
        self.mlflow = mlflow = _import("mlflow")
        from mlflow.tracking import MlflowClient
        self.client = MlflowClient()
        folder = str(Path(run.path).resolve())
        experiment = mlflow.set_experiment(_experiment_name())
        found = self.client.search_runs([experiment.experiment_id],
                                        filter_string=f"tags.`{MLFLOW_TAG}` = '{_quoted(folder)}'",
                                        max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            self.run_id = self.client.create_run(
                experiment.experiment_id, run_name=Path(run.path).name,
                tags={MLFLOW_TAG: folder}).info.run_id
        logged = self.client.get_run(self.run_id).data.params
        from mlflow.entities import Param
        new = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        for start in range(0, len(new), 100):  # MLflow's batch limit for params
            self.client.log_batch(self.run_id, params=new[start:start + 100])

    def scalars(self, values, step):
        from mlflow.entities import Metric
        now = int(datetime.now(timezone.utc).timestamp() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in values.items()])

    def close(self, status):
        self.client.set_terminated(self.run_id, status={"finished": "FINISHED",
                                                        "killed": "KILLED"}.get(status, "FAILED"))


def _experiment_name():
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or "kd_toolbox"


def _quoted(text):
    return text.replace("\\", "\\\\").replace("'", "\\'")

"""Logs where researchers look (helper/run/loggers.py): train.log in every run folder, TensorBoard's
HParams tab over a folder of runs (read back with TensorBoard's own backend), and --logger
mlflow (MLflow's local file store) and wandb (a stand-in module: the package is not installed
here)."""
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

import train_student
import train_teacher

REPO = Path(__file__).resolve().parents[1]


def _flags(data, save, epochs=1):
    return ["--dataset", "mnist", "--data_folder", str(data), "--save_folder", str(save),
            "--batch_size", "250", "--epochs", str(epochs), "--lr_decay_epochs", "5",
            "--print_freq", "4", "--learning_rate", "0.05"]


def _teacher(data, save, *more, epochs=1):
    train_teacher.main(["--model", "mlp_800", *_flags(data, save, epochs), *more])
    return save / "teachers" / "mlp_800_vanilla_mnist_trial_0"


def _hparams_groups(logdir):
    """The session groups of TensorBoard's HParams tab over ``logdir``: ``{run: (hparams,
    metrics, statuses)}``, as its ``/session_groups`` request computes them."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, list_session_groups
    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    tb = base_plugin.TBContext(data_provider=data_provider.MultiplexerDataProvider(
        mux, str(logdir)), logdir=str(logdir))
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=100, include_metrics=True,
        allowed_statuses=[api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS,
                          api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING])
    response = list_session_groups.Handler(context.RequestContext(),
                                           backend_context.Context(tb), "", request).run()

    def value(v):
        kind = v.WhichOneof("kind")
        return getattr(v, kind) if kind else None
    return {g.name: ({k: value(v) for k, v in g.hparams.items()},
                     {m.name.tag: m.value for m in g.metric_values},
                     [s.status for s in g.sessions])
            for g in response.session_groups}


def test_hparams_tab_lists_each_run_with_its_recipe_and_metrics(mnist_small, tmp_path):
    """A teacher and a KD student in one --save_folder: TensorBoard's HParams backend shows
    both, each with its method, student, teacher, weights, temperature and recipe, and its
    best and last top-1 as the summary has them."""
    save = tmp_path / "save"
    teacher = _teacher(mnist_small, save)
    train_student.main(["--model_s", "mlp_800", "--path_t", str(teacher / "best.pth"),
                        "--distill", "kd", "--kd_T", "4", "-d", "0.9", "-c", "0.1",
                        *_flags(mnist_small, save)])
    student = next((save / "students").iterdir())
    groups = _hparams_groups(save)
    assert set(groups) == {f"teachers/{teacher.name}", f"students/{student.name}"}
    for folder, method, trained_from in ((teacher, "vanilla", "none"), (student, "kd", "mlp_800")):
        hparams, metrics, statuses = groups[f"{folder.parent.name}/{folder.name}"]
        summary = json.loads((folder / "summary.json").read_text())
        assert hparams["method"] == method and hparams["student"] == "mlp_800"
        assert hparams["teacher"] == trained_from and hparams["dataset"] == "mnist"
        assert hparams["learning_rate"] == pytest.approx(0.05)
        assert hparams["lr_decay_epochs"] == "5" and hparams["trial"] == "0"
        assert metrics["test/acc"] == pytest.approx(summary["last_acc"], abs=1e-4)
        assert metrics["test/best_acc"] == pytest.approx(summary["best_acc"], abs=1e-4)
        assert statuses == [1]  # STATUS_SUCCESS: the run finished
    hparams = groups[f"students/{student.name}"][0]
    assert (hparams["cls"], hparams["div"], hparams["kd_T"]) == (0.1, 0.9, 4)
    assert "save_folder" not in hparams and "num_workers" not in hparams  # not recipe


def test_train_log_holds_the_printed_lines_and_grows_on_resume(mnist_small, tmp_path, capsys):
    save = tmp_path / "save"
    teacher = _teacher(mnist_small, save)
    capsys.readouterr()
    train_student.main(["--model_s", "mlp_800", "--path_t", str(teacher / "best.pth"),
                        "--distill", "kd", *_flags(mnist_small, save)])
    first = capsys.readouterr().out
    student = next((save / "students").iterdir())
    log = (student / "train.log").read_text().splitlines()
    assert log[0].startswith("# started ")
    # every line printed from the taking of the run folder on (the teacher's forward, chosen
    # before it, is not the run's), in order
    assert log[1:] == first.splitlines()[-len(log[1:]):] and len(log) > 4
    assert any(line.startswith("teacher mlp_800 from ") for line in log)
    train_student.main(["--model_s", "mlp_800", "--path_t", str(teacher / "best.pth"),
                        "--distill", "kd", *_flags(mnist_small, save, epochs=2), "--resume"])
    log = (student / "train.log").read_text().splitlines()
    assert sum(line.startswith("# started ") for line in log) == 2
    assert [line.split(":")[0] for line in log if line.startswith("Epoch ") and ": lr" in line] \
        == ["Epoch 1", "Epoch 2"]
    assert "resumed from epoch 1" in "\n".join(log)
    assert (teacher / "train.log").read_text().count("best top-1") == 1


def test_mlflow_mirrors_scalars_and_config_to_a_local_file_store(mnist_small, tmp_path,
                                                                 monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "kd_test")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3.x: file store opt-in
    save = tmp_path / "save"
    teacher = _teacher(mnist_small, save, "--logger", "mlflow")
    _teacher(mnist_small, save, "--logger", "mlflow", "--resume", epochs=2)  # the same run
    client = MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("kd_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == teacher.name
    assert run.data.tags["kd_toolbox.run_folder"] == str(teacher.resolve())
    assert run.data.params["method"] == "vanilla" and run.data.params["model"] == "mlp_800"
    assert float(run.data.params["learning_rate"]) == 0.05
    summary = json.loads((teacher / "summary.json").read_text())
    history = client.get_metric_history(run.info.run_id, "test/acc")
    assert [m.step for m in history] == [1, 2]
    assert history[-1].value == pytest.approx(summary["last_acc"])
    best = client.get_metric_history(run.info.run_id, "test/best_acc")
    assert best[-1].value == pytest.approx(summary["best_acc"])
    assert {"train/loss", "train/acc", "lr", "test/loss"} <= set(run.data.metrics)
    assert mlflow.active_run() is None  # nothing left open in the process


class _FakeWandb(types.ModuleType):
    """wandb's calls the logger makes: ``init(...)`` returning a run with ``log`` and
    ``finish``."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.finished = [], [], []

    def init(self, **kwargs):
        self.inits.append(kwargs)
        fake = self

        class Run:
            def log(self, values, step):
                fake.logged.append((step, dict(values)))

            def finish(self, exit_code=0):
                fake.finished.append(exit_code)
        return Run()


def test_wandb_gets_the_same_scalars_and_config(mnist_small, tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    save = tmp_path / "save"
    teacher = _teacher(mnist_small, save, "--logger", "wandb", epochs=2)
    summary = json.loads((teacher / "summary.json").read_text())
    (init,) = fake.inits
    assert init["name"] == teacher.name and init["resume"] == "allow"
    assert init["config"]["method"] == "vanilla" and init["config"]["epochs"] == 2
    assert [step for step, _ in fake.logged] == [1, 2]
    assert fake.logged[-1][1]["test/acc"] == pytest.approx(summary["last_acc"])
    assert fake.logged[-1][1]["test/best_acc"] == pytest.approx(summary["best_acc"])
    assert fake.finished == [0]


def test_a_missing_logger_package_is_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--logger", "wandb"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--logger wandb needs the wandb package" in err[0]


def test_logger_packages_are_imported_only_when_asked():
    code = ("import sys, train_student, train_teacher, helper.run.loggers, helper.run.trainer; "
            "sys.exit(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules) or 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr + done.stdout

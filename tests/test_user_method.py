"""A method of the user's own (distillers/sources.py): ``--distill FILE.py:CLASS`` trains, resumes
exactly after a killed run, reruns from its config.yaml, combines with ``+``, its student
evaluates, its options are flags; every way it can be wrong is one line and exit code 2; and a
method named by a file a run wrote (a checkpoint, a summary.json) is never imported."""
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import helper.report
import helper.run.trainer
import train_student
from conftest import write_cifar100
from helpers import DiesAfterOneBatch, event_scalars, one_line_exit, save_teacher
from distillers import registry, sources
from distillers.combine import split_methods
from distillers.sources import source_of, split_spec
from helper.core.errors import UserError
from helper.run.options import parse_student_args

REPO = Path(__file__).resolve().parents[1]

METHOD = '''
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from distillers import Distiller, MethodOptions, Weights, option


class PooledL2(Distiller):
    """L2 between the student's pooled feature, through a trained projection, and the
    teacher's."""
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        pooled_scale: float = option(1.0, "scale of both pooled features")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.proj = nn.Linear(student.feature_shapes()[-1][0], teacher.feature_shapes()[-1][0])

    def method_losses(self, *, feats_s, feats_t, **outputs):
        scale = self.options.pooled_scale
        return {"pooled_l2": self.beta * F.mse_loss(self.proj(feats_s[-1]) * scale,
                                                    feats_t[-1] * scale)}
'''


@pytest.fixture(autouse=True)
def own_registry():
    """The methods a test loads leave the registry when it is done."""
    saved, loaded = dict(registry._DISTILLERS), dict(sources._LOADED)
    yield
    registry._DISTILLERS.clear()
    registry._DISTILLERS.update(saved)
    sources._LOADED.clear()
    sources._LOADED.update(loaded)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The data, a teacher, and the method's file in a folder whose name holds '+' and ':'."""
    root = tmp_path_factory.mktemp("user_method")
    data = write_cifar100(root / "data", n_train=64, n_test=32)
    # BN statistics calibrated, so that the feature loss stays finite
    teacher = save_teacher("resnet14", root / "teacher.pth", batches=3)
    folder = root / "c++:methods"
    folder.mkdir()
    (folder / "pooled_l2.py").write_text(METHOD)
    return data, teacher, folder / "pooled_l2.py"


def _argv(spec, data, teacher, save, *extra):
    return ["--distill", spec, "--model_s", "resnet8", "--path_t", str(teacher),
            "--teacher_forward", "eager", "--dataset", "cifar100", "--data_folder", str(data),
            "--save_folder", str(save), "--epochs", "2", "--batch_size", "32",
            "--print_freq", "1000", "--deterministic", "--lr_decay_epochs", "1", *extra]


def _run(save):
    return next((save / "students").iterdir())


def _same_weights(a, b):
    a, b = (torch.load(r / "last.pth", weights_only=True) for r in (a, b))
    assert a["epoch"] == b["epoch"]
    for part in ("model", "extras"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    return a


def test_trains_resumes_exactly_reruns_from_its_config_and_evaluates(setup, tmp_path,
                                                                     monkeypatch):
    data, teacher, method = setup
    spec = f"{method}:PooledL2"
    argv = _argv(spec, data, teacher, tmp_path / "full", "--pooled_scale", "0.5")
    train_student.main(argv)
    full = _run(tmp_path / "full")
    assert "_pooledl2_r:1_a:0_b:1_0" in full.name
    summary = json.loads((full / "summary.json").read_text())
    assert summary["distill"] == "pooledl2" and summary["epochs_done"] == 2
    assert summary["args"]["distill"] == spec and summary["args"]["pooled_scale"] == 0.5
    config = yaml.safe_load((full / "config.yaml").read_text())
    assert config["distill"] == spec and config["pooled_scale"] == 0.5
    assert "train/loss_pooled_l2" in event_scalars(full)
    last = torch.load(full / "last.pth", weights_only=True)
    assert set(last["extras"]) == {"proj.weight", "proj.bias"}

    # killed in its last epoch, then --resume: the same weights, extras and logs
    real = helper.run.trainer.train_one_epoch
    calls = {"n": 0}

    def killed_in_last_epoch(model, loader, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            return real(model, DiesAfterOneBatch(loader), *args, **kwargs)
        return real(model, loader, *args, **kwargs)
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", killed_in_last_epoch)
    cut_argv = _argv(spec, data, teacher, tmp_path / "cut", "--pooled_scale", "0.5")
    with pytest.raises(KeyboardInterrupt):
        train_student.main(cut_argv)
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", real)
    cut = tmp_path / "cut" / "students" / full.name
    assert torch.load(cut / "last.pth", weights_only=True)["epoch"] == 1
    train_student.main([*cut_argv, "--resume"])
    _same_weights(full, cut)
    assert event_scalars(full) == event_scalars(cut)

    # its config.yaml reruns it (loading the file it names), to the same weights
    train_student.main(["--config", str(full / "config.yaml"), "--save_folder",
                        str(tmp_path / "again")])
    _same_weights(full, tmp_path / "again" / "students" / full.name)
    other = parse_student_args(["--config", str(full / "config.yaml"), "--distill", "kd"])
    assert other.method.name == "kd" and "pooled_scale" not in other.file_args()

    # its student scores alone (the method's file is not needed)
    train_student.main(["--evaluate", str(full / "best.pth"), "--dataset", "cifar100",
                        "--data_folder", str(data), "--save_folder", str(tmp_path / "eval")])
    record = json.loads(next((tmp_path / "eval").glob("*.eval.json")).read_text())
    assert record["acc"] == pytest.approx(summary["best_acc"])
    assert record["recorded"]["distill"] == "pooledl2"


def test_combines_with_kd_and_shows_its_options(setup, tmp_path, capsys):
    data, teacher, method = setup
    spec = f"kd+{method}:PooledL2"
    with pytest.raises(SystemExit) as e:
        parse_student_args(["--distill", spec, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "pooledl2:\n  --pooled_scale" in out and "scale of both pooled features" in out
    train_student.main(_argv(spec, data, teacher, tmp_path, "--epochs", "1", "-d", "1",
                             "-b", "pooledl2=2", "--pooled_scale", "3"))
    run = _run(tmp_path)
    assert "_kd+pooledl2_r:1_a:1_b:0,2_0" in run.name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["distill"] == "kd+pooledl2" and summary["args"]["beta"] == "kd=0,pooledl2=2"
    assert {"train/loss_kd", "train/loss_pooled_l2"} <= set(event_scalars(run))
    extras = torch.load(run / "last.pth", weights_only=True)["extras"]
    assert set(extras) == {"methods.pooledl2.proj.weight", "methods.pooledl2.proj.bias"}


def test_spawned_processes_load_it_again(setup, tmp_path):
    """--multiprocessing-distributed: each spawned process loads the method before it
    unpickles the run's configuration (its Options class lives in the user's file)."""
    data, teacher, method = setup
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = _argv(f"{method}:PooledL2", data, teacher, tmp_path, "--epochs", "1",
                 "--multiprocessing-distributed", "--nproc", "2",
                 "--dist-url", f"tcp://127.0.0.1:{port}")
    subprocess.run([sys.executable, str(REPO / "train_student.py"), *argv], check=True,
                   timeout=300, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert json.loads((_run(tmp_path) / "summary.json").read_text())["epochs_done"] == 1


def test_the_parts_of_a_spec():
    """'+' separates parts, but belongs to a file's path after text that is not a method's name
    (up to its .py:CLASS); CLASS follows the last ':'."""
    assert split_spec("dkd+reviewkd") == ["dkd", "reviewkd"]
    assert split_spec("kd+my.py:Mine") == ["kd", "my.py:Mine"]
    assert split_spec("c++/my.py:Mine") == ["c++/my.py:Mine"]
    assert split_spec("kd+/s/S:a_T:b+c/my.py:Mine+dkd") == ["kd", "/s/S:a_T:b+c/my.py:Mine", "dkd"]
    assert split_spec("./kd+x.py:C") == ["./kd+x.py:C"]
    assert split_spec("pkg.mod:Cls+kd") == ["pkg.mod:Cls", "kd"]
    assert split_spec("kd+nokd") == ["kd", "nokd"]  # an unknown name stays a part (and fails)
    assert source_of("C:\\m\\my.py:Mine") == ("file", "C:\\m\\my.py", "Mine")
    assert source_of("/r/S:x_T:y/my.py:Mine") == ("file", "/r/S:x_T:y/my.py", "Mine")
    assert source_of("pkg.mod:Mine") == ("module", "pkg.mod", "Mine")
    assert source_of("kd") is None


NAMED = '''
from distillers import Distiller, register_distiller


@register_distiller("my-kd", "mykd_alias")
class Decorated(Distiller):
    pass


class Named(Distiller):
    name = "my_named"


class FromClass(Distiller):
    pass
'''


def test_its_name_decorated_named_or_from_its_class_and_a_module_spec(tmp_path, monkeypatch):
    (tmp_path / "named.py").write_text(NAMED)
    for cls, name in (("Decorated", "my-kd"), ("Named", "my_named"), ("FromClass", "fromclass")):
        config = parse_student_args(["--distill", f"{tmp_path}/named.py:{cls}"])
        assert config.method.name == name and config.args.distill == f"{tmp_path}/named.py:{cls}"
    package = tmp_path / "my_methods_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mine.py").write_text("from distillers.kd import KD\n\n\nclass Mine(KD):\n"
                                      "    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # a file relative to it, recorded by its absolute path
    config = parse_student_args(["--distill", "my_methods_pkg.mine:Mine+named.py:Named",
                                 "-d", "1"])
    assert config.method.name == "mine+my_named"
    assert config.args.distill == f"my_methods_pkg.mine:Mine+{tmp_path}/named.py:Named"


ERRORS = {  # file text, CLASS, what the line says
    "built-in name": ("from distillers import Distiller\nclass KD(Distiller):\n    pass\n", "KD",
                      "its name 'kd' is a built-in method's"),
    "built-in name attribute": ("from distillers import Distiller\nclass Mine(Distiller):\n"
                                "    name = 'dkd'\n", "Mine", "its name 'dkd' is a built-in"),
    "decorated with a built-in name": (
        "from distillers import Distiller, register_distiller\n@register_distiller('at')\n"
        "class Mine(Distiller):\n    pass\n", "Mine", "it registers the name 'at', which another"),
    "not a plain name": ("from distillers import Distiller\nclass Mine(Distiller):\n"
                         "    name = 'a/b'\n", "Mine", "'a/b' must be plain"),
    "missing attribute": ("x = 1\n", "Mine", "has no Mine"),
    "not a class": ("Mine = 3\n", "Mine", "Mine in {path} is an int, not a subclass of Distiller"),
    "not a Distiller": ("class Mine:\n    pass\n", "Mine",
                        "is a class, not a subclass of Distiller"),
    "a built-in class": ("from distillers.dkd import DKD\n", "DKD",
                         "DKD is the built-in method dkd; pass --distill dkd"),
    "a flag taken": ("from dataclasses import dataclass\n"
                     "from distillers import Distiller, MethodOptions, option\n"
                     "class Mine(Distiller):\n    @dataclass(frozen=True)\n"
                     "    class Options(MethodOptions):\n        at_p: float = option(2.0, 'p')\n",
                     "Mine", "conflicting option string: --at_p"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_each_mistake_is_one_line(case, tmp_path, capsys):
    text, cls, says = ERRORS[case]
    path = tmp_path / f"{case.replace(' ', '_')}.py"
    path.write_text(text)
    names = registry.distiller_names()
    line = one_line_exit(capsys, parse_student_args, "--distill", f"kd+{path}:{cls}", "-d", "1")
    assert says.format(path=path) in line, line
    assert registry.distiller_names() == names  # nothing of it is left registered


def test_a_missing_file_a_failing_file_and_a_missing_module(tmp_path, capsys):
    line = one_line_exit(capsys, parse_student_args, "--distill", f"{tmp_path}/nothing.py:Mine")
    assert f"no such file {tmp_path}/nothing.py for --distill" in line
    line = one_line_exit(capsys, parse_student_args, "--distill", "no_such_package.methods:Mine")
    assert "no module named no_such_package.methods" in line
    failing = tmp_path / "failing.py"
    failing.write_text(textwrap.dedent("""
        def helper():
            return {}["missing"]

        helper()
    """))
    with pytest.raises(SystemExit) as e:
        parse_student_args(["--distill", f"{failing}:Mine"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == "Traceback (most recent call last):"  # the user's traceback, then one line
    assert f'File "{failing}", line 3, in helper' in "\n".join(err)
    assert "importlib" not in "\n".join(err) and "user_code.py" not in "\n".join(err)
    assert err[-1].endswith(f"cannot import {failing} for --distill {failing}:Mine: it raised "
                            "KeyError: 'missing' (its traceback is above); fix the file")


def test_a_method_named_by_a_run_file_is_never_imported(setup, tmp_path, capsys):
    """A checkpoint's or summary.json's ``distill`` naming a file: --resume refuses it,
    --evaluate and the report read it, nothing imports it."""
    data, teacher, _ = setup
    marker = tmp_path / "imported"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\n"
                    "from distillers import Distiller\n\nclass Evil(Distiller):\n    pass\n")
    spec = f"{evil}:Evil"
    argv = _argv("kd", data, teacher, tmp_path / "save", "--epochs", "1")
    train_student.main(argv)
    run = _run(tmp_path / "save")
    checkpoint = torch.load(run / "last.pth", weights_only=True)
    checkpoint["distill"] = checkpoint["args"]["distill"] = spec
    torch.save(checkpoint, run / "last.pth")
    summary = json.loads((run / "summary.json").read_text())
    summary["distill"] = summary["args"]["distill"] = spec
    (run / "summary.json").write_text(json.dumps(summary))

    line = one_line_exit(capsys, train_student.main, *argv, "--resume")
    assert "cannot resume" in line and spec in line
    train_student.main(["--evaluate", str(run / "last.pth"), "--dataset", "cifar100",
                        "--data_folder", str(data), "--save_folder", str(tmp_path / "eval")])
    helper.report.main([str(tmp_path / "save")])
    assert f"| {spec} (r:1 a:1 b:0) |" in capsys.readouterr().out  # the name, as text
    with pytest.raises(UserError, match="loaded only when the command line names it"):
        split_methods(spec)
    assert not marker.exists()



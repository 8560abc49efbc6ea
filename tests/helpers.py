"""Scaffolding shared by the method tests (tests/test_<method>.py): building a distiller, the
checks every method's contract needs (gradients, extras), and real runs of train_student.main.
The teacher checkpoints themselves are the session fixture ``teacher_ckpt`` (conftest.py)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train_student
from distillers import MethodConfig, RunInfo
from models import create_model

# The teacher -> student pairs each method runs one real epoch on: SimKD's and RepDistiller's
# pairs, with resnet14x4 standing in for resnet32x4. It has the same stem and stage shapes
# (32 channels at 32x32, then 64, 128 and 256 channels at 32, 16 and 8) and pooled width,
# all a method sizes its extras and checks by, at 2 of resnet32x4's 5 blocks per stage, so a
# third of its cost; its own keys and parameter count are tested in test_models_*.py.
PAIRS = [("resnet14x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet14x4", "ShuffleV2")]


def save_teacher(name, path, num_classes=100, batches=1, batch_size=32, input_size=None):
    """An untrained teacher checkpoint whose BatchNorm statistics are estimated on random
    images (a plain average over ``batches``), as a trained teacher's fit its data. With the
    initial (0, 1) statistics an untrained deep teacher's features grow to hundreds in norm, far
    beyond a trained teacher's, and feature losses diverge at the default lr. One batch of 32
    gives every channel thousands of values (its cost, a few seconds for resnet32x4 on one
    thread, is paid once per session). ``input_size`` (C, H, W) replaces the model's own (a timm
    or torchvision model sized for 224 that trains on 32x32 data). The global RNG is left as it
    was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = create_model(name, num_classes)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.momentum = None
        model.train()
        with torch.no_grad():
            for _ in range(batches):
                model(torch.randn(batch_size, *(input_size or model.input_size)))
    torch.save({"model": model.state_dict(), "model_name": name, "num_classes": num_classes},
               path)
    return path


def kd_by_hand(s, t, T):
    """Hinton's KD term in plain Python: per row ``KL(softmax(t / T) || softmax(s / T))``,
    averaged over the rows, times ``T^2``."""
    total = 0.0
    for rs, rt in zip(s, t):
        es, et = [math.exp(v / T) for v in rs], [math.exp(v / T) for v in rt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s) * T * T


class NoClassifierTeacher(torch.nn.Module):
    """A teacher with a map and a pooled feature but no classifier to reuse (SRRL, SimKD)."""
    model_name = "odd"

    def feature_shapes(self, preact=False):
        return [(8, 4, 4), (8,)]

    def get_classifier(self):
        raise NotImplementedError


def build(method, student, teacher, args, **data):
    """The distiller of ``method`` over the two models, configured from the flags in ``args``
    (a namespace holding only what the test sets, as parsing would: the method reads its
    options, weights and KD options from it); ``epochs``, ``batch_size`` and ``data`` (e.g.
    ``train_size``) describe the run."""
    run = RunInfo(epochs=getattr(args, "epochs", 1), batch_size=getattr(args, "batch_size", 64),
                  **data)
    return MethodConfig.from_namespace(method, args).build(student, teacher, run)


def make_distiller(method, args, student="resnet8x4", teacher="resnet14x4", num_classes=100,
                   **data):
    """``(student, teacher, distiller)``, the two models created after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    s, t = create_model(student, num_classes), create_model(teacher, num_classes)
    return s, t, build(method, s, t, args, num_classes=num_classes, **data)


# ---- the distiller contract ---------------------------------------------------------------
def _parameters(extra):
    """The parameters of a module, or an iterable of parameters as it is."""
    return list(extra.parameters()) if isinstance(extra, torch.nn.Module) else list(extra)


def assert_gradients(student, teacher, *extras, every_student_param=False, extras_nonzero=True):
    """After a backward pass: the student (or the part of it under test) got gradients (every
    parameter with ``every_student_param``, else a non-zero one on its first conv), every
    parameter of each extra (a module or a list of parameters) one (non-zero with
    ``extras_nonzero``), the teacher none."""
    if every_student_param:
        assert all(p.grad is not None for p in student.parameters())
    else:
        assert student.conv1.weight.grad.abs().sum() > 0
    for extra in extras:
        if extras_nonzero:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in _parameters(extra))
        else:
            assert all(p.grad is not None for p in _parameters(extra))
    assert all(p.grad is None for p in teacher.parameters())


def assert_no_extras(distiller, student):
    """The method trains and saves nothing beyond the student."""
    assert len(distiller.trainable_parameters()) == len(list(student.parameters()))
    assert distiller.extra_state_dict() == {}
    distiller.load_extra_state_dict({})


def assert_extras_trainable(distiller, *extras):
    """Every parameter of the ``extras`` (modules or lists of parameters) is handed to the
    optimizer."""
    trainable = {id(p) for p in distiller.trainable_parameters()}
    assert all(id(p) in trainable for extra in extras for p in _parameters(extra))


def assert_extras_round_trip(state, other, shift=()):
    """``other`` (a second distiller of the same method), with the parameters ``shift`` moved
    by 1 first, loads ``state`` (the first one's ``extra_state_dict``) and then holds exactly it."""
    with torch.no_grad():
        for p in shift:
            p.add_(1.0)
    other.load_extra_state_dict({k: v.clone() for k, v in state.items()})
    for k, v in other.extra_state_dict().items():
        assert torch.equal(v, state[k]), k


# ---- real runs ----------------------------------------------------------------------------
def run_student(method, student, data, save, *extra, teacher=None, batch_size=64):
    """``train_student.main`` for one epoch (``extra`` flags come last and may override) of
    ``method`` on the CIFAR-100 files in ``data``, saving under ``save``; the run folder. The
    teacher runs as loaded (``--teacher_forward eager``): the folded teacher's start-up check
    costs more than these tiny runs (3 s of a 5 s WRN run), and tests/test_teacher_forward.py
    runs methods on the folded one; ``extra`` may give ``--teacher_forward auto``."""
    path_t = [] if teacher is None else ["--path_t", str(teacher), "--teacher_forward", "eager"]
    train_student.main(["--distill", method, "--model_s", student, *path_t,
                        "--dataset", "cifar100", "--data_folder", str(data),
                        "--save_folder", str(save), "--epochs", "1",
                        "--batch_size", str(batch_size), "--print_freq", "1000", *extra])
    return next((Path(save) / "students").iterdir())


def one_line_user_error(capsys, method, student, data, save, *extra, teacher=None):
    """``run_student`` that must stop with exit code 2 and a single line on stderr: that line."""
    with pytest.raises(SystemExit) as e:
        run_student(method, student, data, save, *extra, teacher=teacher)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def read_summary(run):
    return json.loads((Path(run) / "summary.json").read_text())


def one_epoch(method, teacher, student, data, save, *extra, stages=None, batch_size=64):
    """A real run (``run_student``) with the teacher checkpoint ``teacher`` (None: no
    ``--path_t``), one epoch per stage (``stages``, when given, the names in summary.json); it
    must finish them all with a finite test accuracy (the loop stops with an error on a
    non-finite loss). Returns (run folder, summary)."""
    run = run_student(method, student, data, save, *extra, teacher=teacher, batch_size=batch_size)
    summary = read_summary(run)
    if stages is not None:
        assert summary["stages"] == stages
    assert summary["epochs_done"] == len(stages or [1]) and np.isfinite(summary["last_acc"])
    return run, summary


def assert_resume_is_exact(run, before_resume=None):
    """``run(folder, *flags)`` (a ``run_student`` under ``folder``, deterministic) trains two
    epochs straight in "a", and one epoch then ``--resume`` to two in "b" (``before_resume()``
    called in between): both last.pth are at epoch 2 with the same student weights and extras.
    Returns the two checkpoints."""
    a = run("a", "--epochs", "2")
    run("b", "--epochs", "1")
    if before_resume is not None:
        before_resume()
    b = run("b", "--epochs", "2", "--resume")
    a, b = (torch.load(r / "last.pth", weights_only=True) for r in (a, b))
    assert a["epoch"] == b["epoch"] == 2
    for key in a["extras"]:
        assert torch.equal(a["extras"][key], b["extras"][key]), key
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    return a, b


def event_scalars(run):
    """Every scalar a run's TensorBoard events hold: ``{tag: [(step, value)]}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class DiesAfterOneBatch:
    """The training loader, killed (as by SIGKILL: nothing more is written) after one batch."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        it = iter(self.loader)
        yield next(it)
        raise KeyboardInterrupt("simulated kill")


def one_line_exit(capsys, call, *argv):
    """``call(argv)`` must exit with code 2 and one line on stderr: that line."""
    import pytest
    with pytest.raises(SystemExit) as e:
        call(list(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]

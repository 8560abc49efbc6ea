"""FT: the factor loss against hand computations, paraphraser/translator shapes, the two
stages' gradients, extras, and one epoch of each stage through train_student.main."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.ab  # noqa: F401  (registers ab, which adds the shared --init_epochs)
import distillers.ft  # noqa: F401
import train_student
from distillers import Stage, get_distiller
from distillers.ft import Paraphraser, Translator, ft_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]
INIT, MAIN = Stage("init", 1, lr_decay_epochs=(), selects_best=False), Stage("main", 1)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 200.0, "kd_T": 4.0, "epochs": 1, **kw})


def _unit(v):
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _hand_ft(s, t, paper):
    """Per sample: the factor as a vector (paper) or mean_c F^2 per position (RepDistiller),
    L2-normalised; then the mean absolute difference over batch and entries."""
    total, count = 0.0, 0
    for a, b in zip(s, t):
        if paper:
            va, vb = list(a.ravel()), list(b.ravel())
        else:
            va = [float(np.mean(a[:, x, y] ** 2)) for x in range(a.shape[1]) for y in range(a.shape[2])]
            vb = [float(np.mean(b[:, x, y] ** 2)) for x in range(b.shape[1]) for y in range(b.shape[2])]
        total += sum(abs(p - q) for p, q in zip(_unit(va), _unit(vb)))
        count += len(va)
    return total / count


@pytest.mark.parametrize("paper", [False, True])
def test_ft_loss_matches_hand_computation(paper):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 4, 4))
    t_pooled = t.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))  # the larger map is pooled
    got = ft_loss(torch.tensor(s), torch.tensor(t), paper_factor=paper).item()
    assert abs(got - _hand_ft(s, t_pooled, paper)) < 1e-10


def test_paraphraser_and_translator_shapes():
    p, tr = Paraphraser(64, 0.5), Translator(16, 64, 0.5)
    factor, rec = p(torch.randn(2, 64, 8, 8))
    assert factor.shape == (2, 32, 8, 8) and rec.shape == (2, 64, 8, 8)
    assert tr(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in p.modules())  # RepDistiller's defaults
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tr.modules())


def _pair(**kw):
    torch.manual_seed(0)
    s, t = create_model("resnet8", 10), create_model("resnet8x4", 10)
    return s, t, get_distiller("ft")(s, t, _args(**kw))


def test_init_stage_trains_the_paraphraser_alone():
    student, teacher, d = _pair()
    d.on_epoch_start(1, None, INIT)
    d.train()
    assert not student.training
    images = torch.randn(4, 3, 32, 32)
    _, losses = d.forward_train(images, torch.randint(0, 10, (4,)))
    with torch.no_grad():
        f_t = teacher(images, is_feat=True)[0][-2]
        expected = torch.nn.functional.mse_loss(d.paraphraser(f_t)[1], f_t)
    assert set(losses) == {"rec"} and torch.allclose(losses["rec"], expected)
    losses["rec"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.paraphraser.parameters())
    assert all(p.grad is None for p in [*student.parameters(), *d.translator.parameters(), *teacher.parameters()])
    assert {id(p) for p in d.stage_parameters(INIT)} == {id(p) for p in d.paraphraser.parameters()}


def test_main_stage_trains_student_and_translator():
    student, teacher, d = _pair()
    d.on_epoch_start(1, None, MAIN)
    d.train()
    assert student.training and not d.paraphraser.training
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls", "ft"}
    losses["ft"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.translator.parameters())
    assert all(p.grad is None for p in [*d.paraphraser.parameters(), *teacher.parameters()])
    chosen = {id(p) for p in d.stage_parameters(MAIN)}
    assert chosen == {id(p) for p in [*student.parameters(), *d.translator.parameters()]}


def test_init_lr_follows_repdistiller():
    _, _, d = _pair()
    assert d.stages(_args(model_s="resnet8x4", init_epochs=30))[0].lr == 0.01
    assert d.stages(_args(model_s="vgg8", init_epochs=30))[0].lr is None  # --learning_rate
    assert d.stages(_args(model_s="vgg8", init_epochs=30, ft_init_lr=0.1))[0].lr == 0.1


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for m in (d.paraphraser, d.translator) for p in m.parameters())
    state = d.extra_state_dict()
    assert {"paraphraser.encoder.0.weight", "translator.encoder.1.running_mean"} <= set(state)
    _, _, d2 = _pair()
    with torch.no_grad():
        for p in d2.parameters():
            p.add_(1.0)
    d2.load_extra_state_dict({k: v.clone() for k, v in state.items()})
    assert all(torch.equal(v, state[k]) for k, v in d2.extra_state_dict().items())


def teacher_checkpoint(name, path):
    """An untrained teacher whose BN statistics are those of one batch of unit-variance inputs,
    as a trained teacher's fit its data."""
    torch.manual_seed(0)
    model = create_model(name, 100)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))
    torch.save({"model": model.state_dict(), "model_name": name}, path)
    return path


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_per_stage(teacher, student, cifar100_small, tmp_path):
    ckpt = teacher_checkpoint(teacher, tmp_path / f"{teacher}.pth")
    train_student.main(["--distill", "ft", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--init_epochs", "1", "--epochs", "1",
                        "--batch_size", "64", "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["stages"] == ["init", "main"] and summary["epochs_done"] == 2
    assert summary["finished"] and np.isfinite(summary["last_acc"])

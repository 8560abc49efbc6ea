"""FT: the factor loss against hand computations, paraphraser/translator shapes, the two
stages' gradients, extras, and one epoch of each stage through train_student.main."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.ab  # noqa: F401  (registers ab, which adds the shared --init_epochs)
import distillers.ft  # noqa: F401
from distillers import Stage
from distillers.ft import Paraphraser, Translator, ft_loss
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)
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
    # float64 on unit-normalised factors (loss < 1): a few ulps, ~1e-16 on any CPU
    assert abs(got - _hand_ft(s, t_pooled, paper)) < 1e-10


def test_paraphraser_and_translator_shapes():
    p, tr = Paraphraser(64, 0.5), Translator(16, 64, 0.5)
    factor, rec = p(torch.randn(2, 64, 8, 8))
    assert factor.shape == (2, 32, 8, 8) and rec.shape == (2, 64, 8, 8)
    assert tr(torch.randn(2, 16, 8, 8)).shape == (2, 32, 8, 8)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in p.modules())  # RepDistiller's defaults
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in tr.modules())


def _pair(**kw):
    return make_distiller("ft", _args(**kw), "resnet8", "resnet8x4", num_classes=10)


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
    # the distiller's teacher forward, paraphraser and MSE repeated: the same kernels in the
    # same order, so equal on any CPU (allclose's float32 defaults are only slack)
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
    assert_gradients(student, teacher, d.translator, extras_nonzero=False)
    assert all(p.grad is None for p in d.paraphraser.parameters())
    chosen = {id(p) for p in d.stage_parameters(MAIN)}
    assert chosen == {id(p) for p in [*student.parameters(), *d.translator.parameters()]}


def test_init_lr_follows_repdistiller():
    def init_lr(student, **kw):
        d = make_distiller("ft", _args(init_epochs=30, **kw), student, "resnet8x4", num_classes=10)[2]
        return d.stages()[0].lr
    assert init_lr("resnet8") == 0.01
    assert init_lr("vgg8") is None  # --learning_rate
    assert init_lr("vgg8", ft_init_lr=0.1) == 0.1


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    assert_extras_trainable(d, d.paraphraser, d.translator)
    state = d.extra_state_dict()
    assert {"paraphraser.encoder.0.weight", "translator.encoder.1.running_mean"} <= set(state)
    _, _, d2 = _pair()
    assert_extras_round_trip(state, d2, shift=d2.parameters())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_per_stage(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("ft", teacher_ckpt(teacher), student, pair_data, tmp_path,
                           "--init_epochs", "1", stages=["init", "main"])
    assert summary["finished"]


def test_translator_without_bn_as_the_authors_and_torchdistill():
    _, _, d = _pair(ft_translator_no_bn=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in d.translator.modules())
    _, _, d = _pair()  # RepDistiller's, with BN
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in d.translator.modules()) == 3

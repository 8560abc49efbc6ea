"""L2 and PAD-L2: the losses against hand computations, the variance branch, stages, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from distillers import Stage
from distillers.l2 import pad_l2_loss
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)


def test_pad_l2_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    f_s, f_t, s = (rng.normal(size=(3, 4)) for _ in range(3))
    expected = sum((f_t[i, k] - f_s[i, k]) ** 2 / (1e-6 + math.exp(s[i, k])) + s[i, k]
                   for i in range(3) for k in range(4)) / 12
    got = pad_l2_loss(torch.tensor(f_s), torch.tensor(f_t), torch.tensor(s)).item()
    assert abs(got - expected) < 1e-12
    # with unit variance it is the squared error (up to eps)
    ones = pad_l2_loss(torch.tensor(f_s), torch.tensor(f_t), torch.zeros(3, 4, dtype=torch.float64))
    assert abs(ones.item() - ((f_t - f_s) ** 2).mean()) < 1e-5


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, "epochs": 3, **kw})


def _pair(method, student="resnet8x4", teacher="resnet32x4", **kw):
    return make_distiller(method, _args(**kw), student, teacher)


def test_l2_matches_hand_computation_and_connects_widths():
    student, teacher, d = _pair("l2")
    assert isinstance(d.connector, nn.Identity) and d.extra_state_dict() == {}
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "l2"}
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1].numpy()
    f_s = student(x, is_feat=True)[0][-1].detach().numpy()  # BN in train mode, as above
    expected = sum((a - b) ** 2 for a, b in zip(f_s.ravel(), f_t.ravel())) / f_s.size
    assert abs(losses["l2"].item() - expected) < 1e-4 * expected
    _, _, d = _pair("l2", student="ShuffleV2")
    assert isinstance(d.connector, nn.Linear)
    assert (d.connector.in_features, d.connector.out_features) == (1024, 256)


def test_pad_l2_declares_two_stages():
    _, _, d = _pair("pad_l2", epochs=5)
    assert d.stages() == [Stage("l2", 5, selects_best=False), Stage("pad", 5)]
    _, _, d = _pair("pad_l2", pad_l2_l2_epochs=2, epochs=5)
    assert [(s.name, s.epochs) for s in d.stages()] == [("l2", 2), ("pad", 5)]
    branch = {id(p) for p in d.var_head.parameters()}
    assert not branch & {id(p) for p in d.stage_parameters(Stage("l2", 2))}
    assert branch <= {id(p) for p in d.stage_parameters(Stage("pad", 5))}


def test_stages_compute_their_own_loss_and_gradients():
    student, teacher, d = _pair("pad_l2", student="ShuffleV2")
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    d.on_epoch_start(1, stage=Stage("l2", 1))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "l2"}
    losses["l2"].backward()
    assert all(p.grad is None for p in d.var_head.parameters())
    assert all(p.grad is not None for p in d.connector.parameters())
    d.zero_grad(set_to_none=True)
    d.on_epoch_start(1, stage=Stage("pad", 1))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "pad_l2"}
    losses["pad_l2"].backward()
    assert_gradients(student, teacher, d.var_head, d.connector)


def test_pad_l2_uses_the_variance_branch_of_the_student_feature():
    student, teacher, d = _pair("pad_l2")
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    d.stage = "pad"
    torch.manual_seed(1)
    _, losses = d.forward_train(x, y)
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1].double().numpy()
        f_s = student(x, is_feat=True)[0][-1]
        h = nn.functional.linear(f_s, d.var_head[0].weight, d.var_head[0].bias).double().numpy()
    s = (h - h.mean(0)) / np.sqrt(h.var(0) + d.var_head[1].eps)  # BN1d in training mode
    f_s = f_s.double().numpy()
    expected = np.mean((f_t - f_s) ** 2 / (1e-6 + np.exp(s)) + s)
    assert abs(losses["pad_l2"].item() - expected) < 1e-4 * abs(expected)


def test_extras_are_trained_and_saved():
    _, _, d = _pair("pad_l2", student="ShuffleV2")
    assert_extras_trainable(d, d.var_head, d.connector)
    state = d.extra_state_dict()
    assert {"connector.weight", "var_head.0.weight", "var_head.1.running_var"} <= set(state)
    _, _, d2 = _pair("pad_l2", student="ShuffleV2")
    assert_extras_round_trip(state, d2, shift=[*d2.parameters(), d2.var_head[1].running_mean])


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_l2_one_epoch(teacher, student, cifar100_tiny, tmp_path, teacher_ckpt):
    one_epoch("l2", teacher_ckpt(teacher), student, cifar100_tiny, tmp_path)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_pad_l2_runs_both_stages(teacher, student, cifar100_tiny, tmp_path, teacher_ckpt):
    run, summary = one_epoch("pad_l2", teacher_ckpt(teacher), student, cifar100_tiny, tmp_path,
                             "--pad_l2_l2_epochs", "1", stages=["l2", "pad"])
    assert summary["finished"] and summary["stage"] == "pad"
    assert summary["best_epoch"] in (0, 2)  # the L2 stage does not compete for best.pth
    assert torch.load(run / "last.pth", weights_only=False)["stage"] == "pad"

"""FitNet: the hint loss and regressor against hand computations, gradients, extras, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import Stage
from distillers.fitnet import ConvReg, hint_loss
from helper.core.errors import UserError
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 1.0, "beta": 100.0, "kd_T": 4.0, **kw})


def test_hint_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 2, 2))
    expected = sum((x - y) ** 2 for x, y in zip(a.ravel(), b.ravel())) / a.size
    got = hint_loss(torch.tensor(a), torch.tensor(b)).item()
    assert abs(got - expected) < 1e-12  # float64 mean of 24 squares (~2): ~1e-16, any CPU


def test_regressor_1x1_case_matches_hand_computation():
    torch.manual_seed(0)
    reg = ConvReg((3, 4, 4), (5, 4, 4)).double().train()
    f_s = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    out, _ = reg(f_s, torch.zeros(2, 5, 4, 4, dtype=torch.float64))
    w = reg.conv.weight.detach().numpy()[:, :, 0, 0]
    bias = reg.conv.bias.detach().numpy()
    x = f_s.numpy()
    y = np.zeros((2, 5, 4, 4))
    for n in range(2):
        for i in range(4):
            for j in range(4):
                y[n, :, i, j] = w @ x[n, :, i, j] + bias
    mean, var = y.mean(axis=(0, 2, 3), keepdims=True), y.var(axis=(0, 2, 3), keepdims=True)
    expected = np.maximum((y - mean) / np.sqrt(var + reg.bn.eps), 0)  # BN weight 1, bias 0
    # float64 conv and batch statistics over 32 values, outputs ~1: ~1e-15 on any CPU
    assert np.allclose(out.detach().numpy(), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("s_hw,t_hw,pooled", [(32, 16, False), (16, 32, False), (8, 4, False),
                                               (8, 8, False), (5, 8, True), (4, 8, False)])
def test_regressor_matches_teacher_size(s_hw, t_hw, pooled):
    reg = ConvReg((6, s_hw, s_hw), (10, t_hw, t_hw))
    out, f_t = reg(torch.randn(2, 6, s_hw, s_hw), torch.randn(2, 10, t_hw, t_hw))
    assert out.shape == f_t.shape
    assert reg.pool_teacher == pooled


def _pair(**kw):
    return make_distiller("fitnet", _args(**kw))


def test_hint_gradients_reach_student_and_regressor_not_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "hint"}
    losses["hint"].backward()
    assert_gradients(student, teacher, d.regressor)


def test_extras_are_trained_and_saved():
    student, _, d = _pair()
    assert_extras_trainable(d, d.regressor)
    state = d.extra_state_dict()
    assert {"regressor.conv.weight", "regressor.bn.running_mean"} <= set(state)
    assert not any(k.startswith("student.") for k in state)
    _, _, d2 = _pair()
    assert_extras_round_trip(state, d2, shift=d2.regressor.parameters())


def test_two_stage_variant_trains_only_up_to_the_hint_layer_first():
    student, teacher, d = _pair(fitnet_stage1_epochs=2, epochs=5)
    hint, main = d.stages()
    assert (hint.name, hint.epochs, hint.selects_best) == ("hint", 2, False)
    assert (main.name, main.epochs) == ("main", 5)
    early = [student.conv1, student.bn1, student.layer1, d.regressor]
    late = [student.layer2, student.layer3, student.fc]
    chosen = {id(p) for p in d.stage_parameters(hint)}
    assert all(id(p) in chosen for m in early for p in m.parameters())
    assert not any(id(p) in chosen for m in late for p in m.parameters())
    assert len(d.stage_parameters(main)) == len(d.trainable_parameters())

    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    d.on_epoch_start(1, stage=hint)
    _, losses = d.forward_train(images, targets)
    assert set(losses) == {"hint"}
    losses["hint"].backward()
    assert all(p.grad is not None for m in early for p in m.parameters())
    assert all(p.grad is None for m in late for p in m.parameters())
    d.on_epoch_start(1, stage=main)
    _, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "kd"}
    assert set(_pair(epochs=5)[2].stages()) == {Stage("main", 5)}


def test_hint_layer_must_be_a_feature_map():
    with pytest.raises(UserError, match="hint_layer 4"):
        _pair(hint_layer=4)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("fitnet", teacher_ckpt(teacher), student, pair_data, tmp_path)


def test_two_stage_variant_through_the_script(cifar100_small, tmp_path, teacher_ckpt):
    one_epoch("fitnet", teacher_ckpt("wrn_40_2"), "wrn_16_2", cifar100_small, tmp_path,
              "--fitnet_stage1_epochs", "1", stages=["hint", "main"])

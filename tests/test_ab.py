"""AB: the margin loss against hand computations, the init stage's gradients and modes,
extras, and one epoch of each stage through train_student.main."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.ab  # noqa: F401  (registers ab)
from distillers import Stage
from distillers.ab import ABLoss, ab_margin_loss
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch, one_line_user_error)

INIT, MAIN = Stage("init", 1, lr_decay_epochs=(), selects_best=False), Stage("main", 1)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, "epochs": 1, **kw})


def _hand_margin(s, t, m):
    total = 0.0
    for a, b in zip(s.ravel(), t.ravel()):
        if b <= 0 and a > -m:
            total += (a + m) ** 2
        elif b > 0 and a <= m:
            total += (a - m) ** 2
    return total


def test_margin_loss_and_stage_weights_match_hand_computation():
    rng = np.random.default_rng(0)
    g_s = [rng.normal(size=(2, 3, 2, 2)) * 2 for _ in range(3)]
    g_t = [rng.normal(size=(2, 3, 2, 2)) for _ in range(3)]
    # Both checks: float64 sums of 24 squares (~50; the weighted total ~0.2) round to ~1e-14 on
    # any CPU, far below 1e-9.
    for m in (1.0, 0.5):
        got = ab_margin_loss(torch.tensor(g_s[0]), torch.tensor(g_t[0]), m).item()
        assert abs(got - _hand_margin(g_s[0], g_t[0], m)) < 1e-9
    # RepDistiller: weights 1/4, 1/2, 1 for three stages, / batch, * 3 / 1000
    expected = sum(w * _hand_margin(s, t, 1.0) / 2 * 3 / 1000 for w, s, t in zip((0.25, 0.5, 1.0), g_s, g_t))
    got = ABLoss(3)([torch.tensor(s) for s in g_s], [torch.tensor(t) for t in g_t]).item()
    assert abs(got - expected) < 1e-9


def _pair(student="resnet8", teacher="resnet8x4", **kw):
    return make_distiller("ab", _args(**kw), student, teacher, num_classes=10)


def test_init_stage_trains_feature_modules_and_connectors_only():
    student, teacher, d = _pair()  # 16 vs 64 channels: 1x1 conv + BN connectors
    assert all(isinstance(c, torch.nn.Sequential) for c in d.connectors)
    d.on_epoch_start(1, None, INIT)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"ab"}
    losses["ab"].backward()
    feat = {id(p) for p in student.get_feat_modules().parameters()}
    assert_gradients(student.get_feat_modules(), teacher, d.connectors, every_student_param=True)
    chosen = {id(p) for p in d.stage_parameters(INIT)}
    assert chosen == feat | {id(p) for p in d.connectors.parameters()}
    assert id(student.fc.weight) not in chosen


def test_init_stage_modes_follow_repdistiller():
    student, _, d = _pair("wrn_16_2", "wrn_40_2")
    d.on_epoch_start(1, None, INIT)
    d.train()
    assert student.block1.training and not student.bn1.training  # WRN's last BN: not a feat module
    d.on_epoch_start(1, None, MAIN)
    d.train()
    assert student.bn1.training


def test_main_stage_is_cross_entropy_only():
    student, _, d = _pair()
    d.on_epoch_start(1, None, MAIN)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls"}
    assert {id(p) for p in d.stage_parameters(MAIN)} == {id(p) for p in student.parameters()}


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    assert_extras_trainable(d, d.connectors)
    state = d.extra_state_dict()
    assert {"connectors.0.0.weight", "connectors.2.1.running_var"} <= set(state)
    _, _, d2 = _pair()
    assert_extras_round_trip(state, d2, shift=d2.connectors.parameters())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_per_stage(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("ab", teacher_ckpt(teacher), student, pair_data, tmp_path,
                           "--init_epochs", "1", stages=["init", "main"])
    assert summary["finished"]


def test_stage_count_mismatch_is_a_user_error(cifar100_small, tmp_path, capsys, teacher_ckpt):
    err = one_line_user_error(capsys, "ab", "resnet8x4", cifar100_small, tmp_path,
                              "--init_epochs", "1", teacher=teacher_ckpt("vgg13"))
    assert "stages one to one" in err
    assert not list(tmp_path.glob("students/*/last.pth"))

"""DKD: the loss against a hand computation and KD's decomposition, warm-up, gradients,
extras (none, or the CTKD temperature), one real epoch on four pairs."""
import math
from types import SimpleNamespace

import pytest
import torch

import distillers.dkd  # noqa: F401  (registers --distill dkd)
from distillers import kd_loss
from distillers.dkd import dkd_loss
from helpers import (PAIRS, assert_extras_round_trip, assert_gradients, assert_no_extras,
                     make_distiller, one_epoch)


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _dkd_by_hand(s, t, y, alpha, beta, T):
    total = 0.0
    for rs, rt, g in zip(s, t, y):
        ps, pt = _softmax(rs, T), _softmax(rt, T)
        tckd = _kl([pt[g], 1 - pt[g]], [ps[g], 1 - ps[g]])
        qs = [p / (1 - ps[g]) for j, p in enumerate(ps) if j != g]
        qt = [p / (1 - pt[g]) for j, p in enumerate(pt) if j != g]
        total += alpha * tckd + beta * _kl(qt, qs)
    return total / len(s) * T * T


def test_dkd_loss_matches_hand_computation():
    s = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.0, 2.0, 1.0, 0.0]]
    t = [[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.5, -2.0], [0.0, 3.0, 1.0, 1.0]]
    y = [0, 2, 3]
    expected = _dkd_by_hand(s, t, y, 1.0, 8.0, 4.0)
    got = dkd_loss(torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64),
                   torch.tensor(y), 1.0, 8.0, 4.0)
    assert abs(got.item() - expected) < 1e-10  # float64, loss ~7: a few ulps (~1e-15), any CPU


def test_kd_is_tckd_plus_weighted_nckd():
    """The paper's Eq. 1: KD = TCKD + (1 - p_t^target) * NCKD, per sample."""
    torch.manual_seed(0)
    s, t = torch.randn(1, 10, dtype=torch.float64), torch.randn(1, 10, dtype=torch.float64)
    y, T = torch.tensor([3]), 2.0
    p_t = torch.softmax(t / T, dim=1)[0, 3].item()
    # float64 identity, loss ~0.55: a few ulps, far below allclose's defaults (rtol 1e-5)
    assert torch.allclose(dkd_loss(s, t, y, 1.0, 1.0 - p_t, T), kd_loss(s, t, T))


def test_dkd_loss_stays_finite_for_confident_logits():
    s = torch.tensor([[200.0, 0.0, -200.0]])
    t = torch.tensor([[-200.0, 0.0, 200.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), 1.0, 8.0, 1.0)
    assert torch.isfinite(loss) and loss > 0


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, **kw})


def _pair(**kw):
    return make_distiller("dkd", _args(**kw))


def test_warmup_and_terms():
    student, teacher, d = _pair()
    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    values = {}
    for epoch in (1, 10, 20, 30):
        d.on_epoch_start(epoch)
        _, losses = d.forward_train(images, targets)
        assert set(losses) == {"cls", "dkd"}
        values[epoch] = losses["dkd"].item()
    with torch.no_grad():
        full = dkd_loss(student(images), teacher(images), targets, 1.0, 8.0, 4.0).item()
    # The same forward (train-mode BN: batch statistics) and loss, so the same float32 value;
    # only the warm-up factor's float32 product rounds (~6e-8 relative), on any CPU
    assert values[20] == pytest.approx(full, rel=1e-5) and values[30] == pytest.approx(full, rel=1e-5)
    assert values[1] == pytest.approx(full / 20, rel=1e-5)
    assert values[10] == pytest.approx(full / 2, rel=1e-5)


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    d.on_epoch_start(5)
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    losses["dkd"].backward()
    assert_gradients(student, teacher, every_student_param=True)
    assert_no_extras(d, student)


def test_ctkd_temperature_is_an_extra_with_gradient_and_round_trip():
    student, teacher, d = _pair(ctkd=True)
    d.train()
    d.on_epoch_start(5)
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    losses["dkd"].backward()
    param = d.temperature.param
    assert param.grad is not None and param.grad.abs() > 0
    assert any(p is param for p in d.trainable_parameters())
    assert all(p.grad is None for p in teacher.parameters())
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert list(state) == ["temperature.param"]
    _, _, other = _pair(ctkd=True)
    with torch.no_grad():
        other.temperature.param.fill_(-3.0)
    assert_extras_round_trip(state, other)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("dkd", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] == 0
    assert summary["args"]["cls"] == 1 and summary["args"]["div"] == 0 and summary["args"]["beta"] == 1


def test_one_epoch_with_both_switches(cifar100_small, tmp_path, teacher_ckpt):
    _, summary = one_epoch("dkd", teacher_ckpt("resnet14"), "resnet8", cifar100_small, tmp_path,
                           "--ctkd", "--logit_stand", "--kd_T", "2")
    assert summary["parameters"]["extras"] == 1

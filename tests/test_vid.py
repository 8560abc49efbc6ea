"""VID: the loss against a hand computation, the variance is trained, extras, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers.vid import VIDRegressor
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)


def _expected(reg, f_s, f_t):
    """Per position: mu = W3 relu(W2 relu(W1 x)); per channel var = log(1 + e^a) + eps;
    average of 0.5 * ((t - mu)^2 / var + log var) over all elements."""
    w = [m.weight.detach().numpy()[:, :, 0, 0] for m in reg.regressor if hasattr(m, "weight")]
    var = [math.log(1 + math.exp(a)) + reg.eps for a in reg.log_scale.detach().tolist()]
    b, _, h, wd = f_s.shape
    total, count = 0.0, 0
    for n in range(b):
        for i in range(h):
            for j in range(wd):
                mu = w[2] @ np.maximum(w[1] @ np.maximum(w[0] @ f_s[n, :, i, j], 0), 0)
                for c, v in enumerate(var):
                    total += 0.5 * ((f_t[n, c, i, j] - mu[c]) ** 2 / v + math.log(v))
                    count += 1
    return total / count


def test_initial_variance_is_five():
    reg = VIDRegressor(3, 4, 5)
    # float32 softplus of the initial log-scale, plus eps: a few ulps of 5, under allclose's
    # rtol 1e-5 on any CPU
    assert torch.allclose(reg.variance(), torch.full((5,), 5.0))


def test_vid_loss_matches_hand_computation():
    torch.manual_seed(0)
    reg = VIDRegressor(3, 6, 4).double()
    with torch.no_grad():
        reg.log_scale.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 4, 2, 2))
    got = reg(torch.tensor(f_s), torch.tensor(f_t)).item()
    # float64 (here and below), loss ~1: a few ulps, ~1e-16 on any CPU
    assert abs(got - _expected(reg, f_s, f_t)) < 1e-10
    # a student map twice as large is average-pooled before the regressor
    big = rng.normal(size=(2, 3, 4, 4))
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    got = reg(torch.tensor(big), torch.tensor(f_t)).item()
    assert abs(got - _expected(reg, pooled, f_t)) < 1e-10


def test_gradients_match_autograd_of_the_plain_formula():
    # the per-channel squared error has a hand-written one-pass backward
    torch.manual_seed(0)
    reg = VIDRegressor(3, 6, 4).double()
    f_s = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    var = reg.variance().view(1, -1, 1, 1)
    plain = (0.5 * ((reg.regressor(f_s) - f_t).pow(2) / var + var.log())).mean()
    params = [f_s, reg.log_scale, *reg.regressor.parameters()]
    expected = torch.autograd.grad(plain, params)
    got = torch.autograd.grad(reg(f_s, f_t), params)
    # float64 gradients (< 0.03) by two formulas: a few ulps apart (7e-18 seen), far within
    # 1e-14 + 1e-10 relative on any CPU; gradcheck: float64 defaults (eps 1e-6, atol 1e-5,
    # rtol 1e-3) against central differences that err by ~1e-10
    assert all(torch.allclose(g, e, rtol=1e-10, atol=1e-14) for g, e in zip(got, expected))
    assert torch.autograd.gradcheck(lambda x, a: reg(x, f_t), (f_s, reg.log_scale))


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 1.0, "beta": 1.0, "kd_T": 4.0, **kw})


def _pair():
    return make_distiller("vid", _args())


def test_gradients_reach_student_and_every_regressor_not_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "vid"}
    losses["vid"].backward()
    assert len(d.regressors) == 3
    assert_gradients(student, teacher, d.regressors)


def test_variance_is_trained():
    """The variance must really be learned (mdistiller had a bug where it was not)."""
    _, _, d = _pair()
    d.train()
    opt = torch.optim.SGD(d.trainable_parameters(), lr=0.1, momentum=0.9)
    before = [r.log_scale.detach().clone() for r in d.regressors]
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    sum(losses.values()).backward()
    assert all(r.log_scale.grad.abs().min() > 0 for r in d.regressors)
    opt.step()
    assert all(not torch.equal(r.log_scale, b) for r, b in zip(d.regressors, before))


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    assert_extras_trainable(d, d.regressors)
    state = d.extra_state_dict()
    assert {f"regressors.{i}.log_scale" for i in range(3)} <= set(state)
    _, _, d2 = _pair()
    assert_extras_round_trip(state, d2, shift=d2.regressors.parameters())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("vid", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] > 0

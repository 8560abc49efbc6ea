"""NST: the squared MMD against a loop over channel pairs, pooling, gradients, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillers.nst import nst_loss
from helper.core.errors import UserError
from helpers import PAIRS, build, assert_gradients, assert_no_extras, make_distiller, one_epoch
from models import create_model


def _mmd2(f_s, f_t):
    """Per sample, channels as samples of unit spatial vectors, kernel (x . y)^2; batch mean."""
    total = 0.0
    for s, t in zip(f_s, f_t):
        s = [c.ravel() / max(np.linalg.norm(c), 1e-12) for c in s]  # F.normalize's eps
        t = [c.ravel() / max(np.linalg.norm(c), 1e-12) for c in t]
        k = lambda a, b: np.mean([float(x @ y) ** 2 for x in a for y in b])  # noqa: E731
        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total / len(f_s)


def test_nst_loss_matches_loop():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 5, 2, 2))  # channels may differ
    got = nst_loss(torch.tensor(f_s), torch.tensor(f_t)).item()
    # float64 on unit-normalised maps (squared cosines <= 1, loss < 1): the MMD's cancellation
    # leaves a few ulps of 1, ~1e-16, on any CPU (so in the tests below)
    assert abs(got - _mmd2(f_s, f_t)) < 1e-12


def _plain_nst(f_s, f_t):
    """The textbook computation (RepDistiller's): normalised maps, three channel Grams."""
    s, t = F.normalize(f_s.flatten(2), dim=2), F.normalize(f_t.flatten(2), dim=2)
    k = lambda a, b: torch.bmm(a, b.transpose(1, 2)).pow(2).mean()  # noqa: E731
    return k(t, t) + k(s, s) - 2 * k(s, t)


# The loss is computed from channel Grams when maps have many positions (early stages) and
# from position Grams when they have many channels (late stages); both must be exact.
@pytest.mark.parametrize("c_s,c_t,hw,form", [(3, 5, 6, "channel"), (4, 4, 3, "channel"),
                                             (8, 16, 2, "position"), (32, 16, 2, "position")])
def test_both_ways_of_computing_match_the_loop_and_autograd(c_s, c_t, hw, form):
    assert (hw * hw * (c_s + c_t) < c_s**2 + c_t**2 + c_s * c_t) == (form == "position")
    rng = np.random.default_rng(c_s + hw)
    f_s = np.maximum(rng.normal(size=(2, c_s, hw, hw)), 0)
    f_s[0, 1] = 0  # a dead ReLU channel: F.normalize's eps keeps its gradient finite
    f_t = np.maximum(rng.normal(size=(2, c_t, hw, hw)), 0)
    s, t = torch.tensor(f_s, requires_grad=True), torch.tensor(f_t)
    got = nst_loss(s, t)
    assert abs(got.item() - _mmd2(f_s, f_t)) < 1e-12
    (grad,) = torch.autograd.grad(got, s)
    (expected,) = torch.autograd.grad(_plain_nst(s, t), s)
    # float64 gradients < 0.11 (ulp 1.4e-17) by two formulas: a few ulps apart (4e-17 seen),
    # within 1e-15 + 1e-9 relative on any CPU; gradcheck: float64 defaults (eps 1e-6, atol
    # 1e-5, rtol 1e-3) against central differences that err by ~1e-10
    assert torch.isfinite(grad).all() and torch.allclose(grad, expected, rtol=1e-9, atol=1e-15)
    assert torch.autograd.gradcheck(lambda x: nst_loss(x, t), (torch.randn_like(s, requires_grad=True),))


def test_larger_map_is_average_pooled():
    rng = np.random.default_rng(1)
    big, small = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 4, 2, 2))
    pooled = big.reshape(2, 3, 2, 2, 2, 2).mean(axis=(3, 5))
    assert abs(nst_loss(torch.tensor(big), torch.tensor(small)).item() - _mmd2(pooled, small)) < 1e-12
    assert abs(nst_loss(torch.tensor(small), torch.tensor(big)).item() - _mmd2(small, pooled)) < 1e-12


def _pair():
    return make_distiller("nst", SimpleNamespace(cls=1.0, div=0.0, beta=50.0, kd_T=4.0))


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    x = torch.randn(4, 3, 32, 32)
    _, losses = d.forward_train(x, torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "nst"}
    with torch.no_grad():
        g_s, g_t = student(x, is_feat=True)[0][1:-1], teacher(x, is_feat=True)[0][1:-1]
    # the distiller's forwards and loss repeated, the same kernels in the same order: equal on
    # any CPU (0 seen); allclose's float32 defaults are only slack
    assert torch.allclose(losses["nst"], 50 * sum(nst_loss(s, t) for s, t in zip(g_s, g_t)))
    losses["nst"].backward()
    assert_gradients(student, teacher)
    assert_no_extras(d, student)


def test_models_without_maps_are_refused():
    args = SimpleNamespace(cls=1.0, div=0.0, beta=50.0, kd_T=4.0)
    with pytest.raises(UserError, match="convolutional"):
        build("nst", create_model("mlp_800", 10), create_model("mlp_1200", 10), args)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("nst", teacher_ckpt(teacher), student, pair_data, tmp_path)

"""NST: the squared MMD against a loop over channel pairs, pooling, gradients, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import get_distiller
from distillers.nst import nst_loss
from helper.errors import UserError
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch
from models import create_model


def _mmd2(f_s, f_t):
    """Per sample, channels as samples of unit spatial vectors, kernel (x . y)^2; batch mean."""
    total = 0.0
    for s, t in zip(f_s, f_t):
        s = [c.ravel() / np.linalg.norm(c) for c in s]
        t = [c.ravel() / np.linalg.norm(c) for c in t]
        k = lambda a, b: np.mean([float(x @ y) ** 2 for x in a for y in b])  # noqa: E731
        total += k(t, t) + k(s, s) - 2 * k(s, t)
    return total / len(f_s)


def test_nst_loss_matches_loop():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 5, 2, 2))  # channels may differ
    got = nst_loss(torch.tensor(f_s), torch.tensor(f_t)).item()
    assert abs(got - _mmd2(f_s, f_t)) < 1e-12


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
    assert torch.allclose(losses["nst"], 50 * sum(nst_loss(s, t) for s, t in zip(g_s, g_t)))
    losses["nst"].backward()
    assert_gradients(student, teacher)
    assert_no_extras(d, student)


def test_models_without_maps_are_refused():
    args = SimpleNamespace(cls=1.0, div=0.0, beta=50.0, kd_T=4.0)
    with pytest.raises(UserError, match="convolutional"):
        get_distiller("nst")(create_model("mlp_800", 10), create_model("mlp_1200", 10), args)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path, teacher_ckpt):
    one_epoch("nst", teacher_ckpt(teacher), student, cifar100_small, tmp_path)

"""Similarity-preserving KD: the loss against a hand computation, gradients, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import get_distiller
from distillers.sp import sp_loss
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch


def _similarity(f):
    """Row-normalised Gram matrix of the flattened activations, by explicit dot products."""
    q = [list(np.ravel(x)) for x in f]
    b = len(q)
    g = [[sum(u * v for u, v in zip(q[i], q[j])) for j in range(b)] for i in range(b)]
    return [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in g]


def test_sp_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(3, 2, 2, 2)), rng.normal(size=(3, 5, 3, 3))  # shapes may differ
    g_s, g_t = _similarity(f_s), _similarity(f_t)
    expected = sum((g_s[i][j] - g_t[i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    # float64 on row-normalised Grams (entries <= 1): a few ulps, ~1e-16 on any CPU
    assert abs(sp_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12


def test_sp_loss_is_zero_for_scaled_features():
    f = torch.randn(4, 8, 2, 2)
    # float32: the two normalised Grams differ by the rounding of 32-term dot products, at
    # most ~32 ulps (2e-6) of entries <= 1, which the loss squares: < 4e-12 on any CPU (4e-15
    # seen over 300 seeds)
    assert sp_loss(f, 3.0 * f).abs().item() < 1e-10


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 1.0, "beta": 3000.0, "kd_T": 4.0, **kw})


def _pair():
    return make_distiller("sp", _args())


def test_gradients_reach_student_not_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "sp"}
    losses["sp"].backward()
    assert_gradients(student, teacher)
    assert student.fc.weight.grad is None  # feats[-2] is before the classifier


def test_no_extras():
    student, _, d = _pair()
    assert get_distiller("similarity") is type(d)
    assert_no_extras(d, student)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("sp", teacher_ckpt(teacher), student, pair_data, tmp_path)

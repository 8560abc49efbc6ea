"""RKD: distance and angle losses against loops over pairs and triplets, gradients, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers.rkd import pairwise_distances, rkd_angle_loss, rkd_distance_loss
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch


def _smooth_l1(a, b):
    pairs = [(x - y) for x, y in zip(a, b)]
    return sum(0.5 * d * d if abs(d) < 1 else abs(d) - 0.5 for d in pairs) / len(pairs)


def _distances(f):
    n = len(f)
    d = [[math.dist(f[i], f[j]) if i != j else 0.0 for j in range(n)] for i in range(n)]
    mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    return [d[i][j] / mu for i in range(n) for j in range(n)]


def _cosines(f):
    n, out = len(f), []
    for i in range(n):
        for j in range(n):
            for k in range(n):
                u, v = f[j] - f[i], f[k] - f[i]
                nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                out.append(0.0 if nu == 0 or nv == 0 else float(u @ v / (nu * nv)))
    return out


def test_distance_and_angle_losses_match_loops():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(5, 3)), 3 * rng.normal(size=(5, 7))  # widths may differ
    s, t = torch.tensor(f_s), torch.tensor(f_t)
    # float64, distances and cosines normalised to ~1: a few ulps, ~1e-16 on any CPU
    assert abs(rkd_distance_loss(s, t).item() - _smooth_l1(_distances(f_s), _distances(f_t))) < 1e-10
    assert abs(rkd_angle_loss(s, t).item() - _smooth_l1(_cosines(f_s), _cosines(f_t))) < 1e-10


def test_losses_vanish_for_a_scaled_copy():
    f = torch.randn(6, 4, dtype=torch.float64)
    # float64: normalised distances and angles of f and 2.5 f agree to a few ulps (~1e-16),
    # which the smooth L1 squares (1e-31 seen)
    assert rkd_distance_loss(f, 2.5 * f).item() < 1e-12
    assert rkd_angle_loss(f, 2.5 * f).item() < 1e-12
    assert torch.equal(pairwise_distances(f).diagonal(), torch.zeros(6, dtype=torch.float64))


def _pair(**kw):
    args = SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, **kw})
    return make_distiller("rkd", args)


def test_weights_and_gradients_reach_student_not_teacher():
    student, teacher, d = _pair()
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "rkd_d", "rkd_a"}
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1]
        f_s = student(x, is_feat=True)[0][-1]
    # the distiller's forwards and losses repeated, the same kernels in the same order: equal
    # on any CPU (0 seen); allclose's float32 defaults are only slack
    assert torch.allclose(losses["rkd_d"], 25 * rkd_distance_loss(f_s, f_t))
    assert torch.allclose(losses["rkd_a"], 50 * rkd_angle_loss(f_s, f_t))
    (losses["rkd_d"] + losses["rkd_a"]).backward()
    assert_gradients(student, teacher)
    assert student.fc.weight.grad is None  # feats[-1] is before the classifier
    _, _, d = _pair(rkd_w_a=0.0)
    _, losses = d.train().forward_train(x, y)
    assert set(losses) == {"cls", "rkd_d"}


def test_no_extras():
    student, _, d = _pair()
    assert_no_extras(d, student)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("rkd", teacher_ckpt(teacher), student, pair_data, tmp_path)

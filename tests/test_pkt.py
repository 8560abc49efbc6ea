"""PKT: the loss against a loop over sample pairs, gradients, no extras, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers.pkt import pkt_loss
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch
EPS = 1e-7


def _probabilities(f):
    n = len(f)
    unit = [v / (math.sqrt(sum(x * x for x in v)) + EPS) for v in f]
    k = [[(float(unit[i] @ unit[j]) + 1) / 2 for j in range(n)] for i in range(n)]
    return [[k[i][j] / sum(k[i]) for j in range(n)] for i in range(n)]


def test_pkt_loss_matches_loop():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(4, 3)), rng.normal(size=(4, 6))
    p_s, p_t = _probabilities(f_s), _probabilities(f_t)
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + EPS) / (p_s[i][j] + EPS))
                   for i in range(4) for j in range(4)) / 16
    # float64 on cosine kernels and probabilities <= 1: a few ulps, ~1e-16 on any CPU
    assert abs(pkt_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12


def test_pkt_loss_is_zero_for_scaled_features_and_ignores_zero_rows():
    f = torch.randn(5, 8, dtype=torch.float64)
    # float64; the 1e-7 added to the norms makes f and 3 f's unit vectors differ by ~1e-8
    # relative, which the KL sees squared (~1e-16; 6e-15 seen over 300 seeds)
    assert abs(pkt_loss(3 * f, f).item()) < 1e-10
    f[0] = 0
    assert torch.isfinite(pkt_loss(f, torch.randn(5, 8, dtype=torch.float64)))


def _pair():
    return make_distiller("pkt", SimpleNamespace(cls=1.0, div=0.0, beta=30000.0, kd_T=4.0))


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "pkt"}
    losses["pkt"].backward()
    assert_gradients(student, teacher)
    assert_no_extras(d, student)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("pkt", teacher_ckpt(teacher), student, pair_data, tmp_path)

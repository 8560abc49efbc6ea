"""CC: RepDistiller's loss and the kernel variants against loops, both embeddings trained, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers.cc import cc_loss_matrix, cc_loss_repdistiller, correlation_matrix
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)


def test_repdistiller_loss_matches_loop():
    rng = np.random.default_rng(0)
    e_s, e_t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    d = abs(e_s - e_t)
    expected = sum(d[i, k] * d[i + 1, k] for i in range(3) for k in range(3)) / 3
    # float64, loss ~2: a few ulps (~1e-15) on any CPU
    assert abs(cc_loss_repdistiller(torch.tensor(e_s), torch.tensor(e_t)).item() - expected) < 1e-12


def _frobenius_over_n2(c_s, c_t):
    n = len(c_s)
    return math.sqrt(sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(n) for j in range(n))) / n ** 2


def test_kernel_variants_match_loops():
    rng = np.random.default_rng(1)
    e_s, e_t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    dot = lambda e, i, j: float(e[i] @ e[j])  # noqa: E731
    bil = [[[dot(e, i, j) for j in range(4)] for i in range(4)] for e in (e_s, e_t)]
    got = cc_loss_matrix(torch.tensor(e_s), torch.tensor(e_t), "bilinear").item()
    # float64 (this and the gaussian below), losses ~0.2-0.3: a few ulps, ~1e-16 on any CPU
    assert abs(got - _frobenius_over_n2(*bil)) < 1e-12
    g, p_order = 0.4, 2
    gauss = [[[math.exp(-2 * g) * sum((2 * g) ** p / math.factorial(p) * dot(e, i, j) ** p
                                       for p in range(p_order + 1)) for j in range(4)]
              for i in range(4)] for e in (e_s, e_t)]
    got = cc_loss_matrix(torch.tensor(e_s), torch.tensor(e_t), "gaussian", g, p_order).item()
    assert abs(got - _frobenius_over_n2(*gauss)) < 1e-12


def test_gaussian_expansion_approaches_the_rbf_kernel_on_unit_vectors():
    e = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(e, e).pow(2))
    zero = torch.zeros(5, 4, dtype=torch.float64)  # C(0) is exp(-2 gamma) everywhere
    # exp(-0.8) times the Taylor remainder of exp(0.8 cos) after order 12: < 0.8^13/13! = 8.8e-12
    # (4.2e-12 seen, on the diagonal), plus float64 rounding ~1e-16
    assert torch.allclose(correlation_matrix(e, "gaussian", 0.4, 12), rbf, rtol=0, atol=1e-10)
    # float64, one exp on each side: a few ulps, under allclose's defaults (rtol 1e-5)
    assert torch.allclose(correlation_matrix(zero, "gaussian", 0.4, 2),
                          torch.full((5, 5), math.exp(-0.8), dtype=torch.float64))


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 0.02, "kd_T": 4.0, **kw})


def _pair(student="resnet8x4", **kw):
    return make_distiller("cc", _args(**kw), student)


@pytest.mark.parametrize("kernel", ["repdistiller", "gaussian", "bilinear"])
def test_gradients_reach_student_and_both_embeddings_not_teacher(kernel):
    student, teacher, d = _pair(student="ShuffleV2", cc_kernel=kernel)
    assert (d.embed_s.in_features, d.embed_t.in_features, d.embed_s.out_features) == (1024, 256, 128)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "cc"}
    losses["cc"].backward()
    assert_gradients(student, teacher, d.embed_s, d.embed_t)


def test_extras_are_trained_and_saved():
    student, _, d = _pair(cc_feat_dim=16)
    assert_extras_trainable(d, d.embed_s, d.embed_t)
    state = d.extra_state_dict()
    assert set(state) == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    assert state["embed_s.weight"].shape == (16, 256)
    _, _, d2 = _pair(cc_feat_dim=16)
    assert_extras_round_trip(state, d2, shift=d2.parameters())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("cc", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] > 0

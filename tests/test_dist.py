"""DIST: the loss against numpy's correlation coefficients, gradients, no extras, one real
epoch on four pairs."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.dist  # noqa: F401  (registers --distill dist)
from distillers.dist import dist_loss
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch


def _softmax(z, tau):
    e = np.exp(z / tau - (z / tau).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _dist_by_hand(s, t, beta, gamma, tau):
    ys, yt = _softmax(s, tau), _softmax(t, tau)
    inter = 1 - np.mean([np.corrcoef(ys[i], yt[i])[0, 1] for i in range(len(s))])
    intra = 1 - np.mean([np.corrcoef(ys[:, j], yt[:, j])[0, 1] for j in range(s.shape[1])])
    return tau ** 2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("beta,gamma,tau", [(1.0, 1.0, 4.0), (2.0, 0.5, 1.0)])
def test_dist_loss_matches_numpy_correlations(beta, gamma, tau):
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    got = dist_loss(torch.tensor(s), torch.tensor(t), beta, gamma, tau).item()
    # the reference adds 1e-8 to the norm product; numpy's correlation has no epsilon: a
    # relative change ~1e-8 / norms^2, bounded here by 1e-6 (float64 rounding is ~1e-15)
    assert got == pytest.approx(_dist_by_hand(s, t, beta, gamma, tau), rel=1e-6)


def test_dist_loss_is_zero_for_equal_logits():
    z = torch.randn(8, 10, dtype=torch.float64)
    assert 0 <= dist_loss(z, z.clone(), 1.0, 1.0, 4.0).item() < 1e-3  # 1e-3: the epsilon


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 2.0, "kd_T": 4.0, **kw})


def test_terms_gradients_and_no_extras():
    student, teacher, d = make_distiller("dist", _args())
    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "dist"}
    with torch.no_grad():
        expected = 2.0 * dist_loss(logits, teacher(images), 1.0, 1.0, 4.0)
    assert torch.allclose(losses["dist"], expected)  # the same float32 ops recomputed
    losses["dist"].backward()
    assert_gradients(student, teacher, every_student_param=True)
    assert_no_extras(d, student)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("dist", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] == 0
    assert (summary["args"]["cls"], summary["args"]["div"], summary["args"]["beta"]) == (1, 0, 2)


def test_defaults_are_dist_cifar_yaml_and_imagenet_flags_parse():
    from helper.run.options import parse_student_args
    m = parse_student_args(["--distill", "dist"]).method
    assert (m.weights.cls, m.weights.div, m.weights.beta) == (1.0, 0.0, 2.0)
    assert (m.options.dist_beta, m.options.dist_gamma, m.options.dist_tau) == (1.0, 1.0, 4.0)
    m = parse_student_args(["--distill", "dist", "--dist_tau", "1"]).method  # ImageNet: -b 2, tau 1
    assert (m.weights.beta, m.options.dist_tau) == (2.0, 1.0)

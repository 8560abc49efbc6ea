"""NKD: the loss against a hand computation, gradients, no extras, one real epoch, the
option check."""
import math
from types import SimpleNamespace

import numpy as np
import torch

from distillers.nkd import nkd_loss
from helpers import (PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch,
                     one_line_user_error)


def _softmax(row, T=1.0):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _nkd_by_hand(s, t, y, T, gamma):
    target = non_target = 0.0
    for rs, rt, g in zip(s, t, y):
        target -= _softmax(rt)[g] * math.log(_softmax(rs)[g])
        qs = _softmax([v for j, v in enumerate(rs) if j != g], T)
        qt = _softmax([v for j, v in enumerate(rt) if j != g], T)
        non_target -= sum(a * math.log(b) for a, b in zip(qt, qs))
    return target / len(s) + gamma * T * T * non_target / len(s)


def test_nkd_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    s, t, y = rng.normal(size=(4, 6)) * 2, rng.normal(size=(4, 6)) * 2, [0, 5, 2, 2]
    for T, gamma in ((3.0, 3.5), (1.0, 1.5)):
        got = nkd_loss(torch.tensor(s), torch.tensor(t), torch.tensor(y), T, gamma).item()
        # float64, values ~10-100: a few ulps
        assert abs(got - _nkd_by_hand(s, t, y, T, gamma)) < 1e-10


def test_teacher_target_probability_is_a_constant_weight():
    """Only the student gets a gradient; the target term's gradient w.r.t. the student's
    target logit is ``-t_y (1 - s_y) / N``, with the teacher's probability as a constant."""
    s = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    nkd_loss(s, t, torch.tensor([0]), 1.0, 0.0).backward()
    t_y = math.exp(2) / (math.exp(2) + 2)
    assert abs(s.grad[0, 0].item() + t_y * (1 - 1 / 3)) < 1e-12
    assert t.grad is None or t.grad.abs().sum() == 0


def _args(**kw):
    return SimpleNamespace(**kw)


def test_defaults_gradients_and_no_extras():
    student, teacher, d = make_distiller("nkd", _args())
    assert (d.cls_weight, d.div_weight, d.beta, d.T, d.gamma) == (1.0, 0.0, 1.0, 3.0, 3.5)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "nkd"}
    with torch.no_grad():  # the same train-mode forward (batch statistics), the same loss
        expected = nkd_loss(student(x), teacher(x), y, 3.0, 3.5)
    assert torch.allclose(losses["nkd"], expected, rtol=1e-5)  # float32, same operations
    losses["nkd"].backward()
    assert_gradients(student, teacher, every_student_param=True)
    assert_no_extras(d, student)


def test_one_epoch(cifar100_tiny, tmp_path, teacher_ckpt):
    teacher, student = PAIRS[0]
    _, summary = one_epoch("nkd", teacher_ckpt(teacher), student, cifar100_tiny, tmp_path)
    assert summary["parameters"]["extras"] == 0
    args = summary["args"]
    assert (args["cls"], args["div"], args["beta"]) == (1, 0, 1)
    assert (args["nkd_T"], args["nkd_gamma"]) == (3.0, 3.5)


def test_bad_temperature_is_one_line(capsys, cifar100_tiny, tmp_path, teacher_ckpt):
    line = one_line_user_error(capsys, "nkd", "resnet8x4", cifar100_tiny, tmp_path,
                               "--nkd_T", "0", teacher=teacher_ckpt("resnet14x4"))
    assert "--nkd_T must be positive" in line

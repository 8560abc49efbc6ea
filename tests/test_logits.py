"""Logits (Ba & Caruana): the MSE against a hand computation, gradients, no extras, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import Weights, get_distiller
from distillers.logits import logits_loss
from helpers import PAIRS, assert_gradients, assert_no_extras, make_distiller, one_epoch


def test_logits_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    expected = sum((z_s[i, k] - z_t[i, k]) ** 2 for i in range(3) for k in range(5)) / 15
    # float64 mean of 15 squares (~2): a few ulps, ~1e-16 on any CPU
    assert abs(logits_loss(torch.tensor(z_s), torch.tensor(z_t)).item() - expected) < 1e-12


def _pair():
    return make_distiller("logits", SimpleNamespace(cls=1.0, div=0.0, beta=0.1, kd_T=4.0))


def test_defaults():
    assert get_distiller("logits").default_weights == Weights(cls=1.0, div=0.0, beta=0.1)


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "logits"}
    losses["logits"].backward()
    assert_gradients(student, teacher)
    assert student.fc.weight.grad.abs().sum() > 0
    assert_no_extras(d, student)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("logits", teacher_ckpt(teacher), student, pair_data, tmp_path)

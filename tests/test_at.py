"""Attention transfer: the loss against a hand computation, gradients, no extras, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillers import get_distiller
from distillers.at import at_loss
from helper.core.errors import UserError
from helpers import PAIRS, build, assert_gradients, assert_no_extras, make_distiller, one_epoch
from models import create_model


def _attention(f):
    """Per sample: mean over channels of f^2 at each position, then divided by its L2 norm."""
    b, c, h, w = f.shape
    out = np.zeros((b, h * w))
    for n in range(b):
        for i in range(h):
            for j in range(w):
                out[n, i * w + j] = sum(f[n, k, i, j] ** 2 for k in range(c)) / c
        out[n] /= np.sqrt(sum(v * v for v in out[n]))
    return out


def _avg_pool_2x2(f):
    b, c, h, w = f.shape
    return f.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def test_at_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 4, 4))
    expected = ((_attention(f_s) - _attention(f_t)) ** 2).mean()
    # float64 on unit-normalised maps (loss < 1): a few ulps, ~1e-16 on any CPU
    assert abs(at_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12


def test_attention_gradient_matches_autograd_of_the_plain_formula():
    # p = 2 uses a hand-written one-pass backward (distillers.common.channel_mean_square)
    torch.manual_seed(0)
    f_s = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    f_t = torch.randn(2, 5, 4, 4, dtype=torch.float64)
    plain = lambda f: F.normalize(f.pow(2).mean(1).flatten(1))  # noqa: E731
    (got,) = torch.autograd.grad(at_loss(f_s, f_t), f_s)
    (expected,) = torch.autograd.grad((plain(f_s) - plain(f_t)).pow(2).mean(), f_s)
    # float64: the two backward formulas differ by a few ulps of the gradient (|g| < 6e-3,
    # ulp 9e-19; 4e-19 seen): 1e-15 is ~1000 ulps, on any CPU
    assert torch.allclose(got, expected, rtol=0, atol=1e-15)
    # gradcheck's float64 defaults (eps 1e-6, atol 1e-5, rtol 1e-3): central differences err ~1e-10
    assert torch.autograd.gradcheck(lambda f: at_loss(f, f_t), (f_s,))
    assert torch.autograd.gradcheck(lambda f: at_loss(f, f_t, p=3.0), (f_s,))


def test_at_loss_pools_the_larger_map():
    rng = np.random.default_rng(1)
    f_s, f_t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 5, 2, 2))
    expected = ((_attention(_avg_pool_2x2(f_s)) - _attention(f_t)) ** 2).mean()
    # float64 on unit-normalised maps (loss < 1), both calls: ~1e-16 on any CPU
    assert abs(at_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12
    # and the teacher when it is the larger one
    expected = ((_attention(f_t) - _attention(_avg_pool_2x2(f_s))) ** 2).mean()
    assert abs(at_loss(torch.tensor(f_t), torch.tensor(f_s)).item() - expected) < 1e-12


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 1.0, "beta": 1000.0, "kd_T": 4.0, **kw})


def _pair():
    return make_distiller("at", _args())


def test_gradients_reach_student_not_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "at"}
    losses["at"].backward()
    assert_gradients(student, teacher)
    assert all(p.grad is not None for p in student.layer3.parameters())


def test_no_extras():
    student, _, d = _pair()
    assert get_distiller("attention") is type(d)
    assert_no_extras(d, student)


def test_at_stages_keep_the_chosen_pairs_only():
    """torchdistill's ImageNet AT pairs the last two stages (--at_stages 3,4 there)."""
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    d = build("at", student, teacher, _args(at_stages=(2, 3)))
    d.train()
    x = torch.randn(4, 3, 32, 32)
    _, losses = d.forward_train(x, torch.randint(0, 10, (4,)))
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0]
    f_s = student(x, is_feat=True)[0]  # BN in train mode, as in forward_train
    expected = 1000.0 * (at_loss(f_s[2], f_t[2]) + at_loss(f_s[3], f_t[3]))
    # the same float32 ops on the same features, recomputed: equal up to reduction order
    assert torch.allclose(losses["at"], expected)
    with pytest.raises(UserError, match="--at_stages 4: resnet8 and resnet14 pair 3 stages"):
        build("at", student, teacher, _args(at_stages=(4,)))
    with pytest.raises(UserError, match="distinct stages from 1"):
        build("at", student, teacher, _args(at_stages=(0, 1)))


def test_needs_feature_maps():
    student, teacher = create_model("mlp_800", 10), create_model("mlp_1200", 10)
    with pytest.raises(UserError, match="convolutional"):
        build("at", student, teacher, _args())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("at", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] == 0

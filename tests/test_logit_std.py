"""Logit standardization (--logit_stand) with KD and DKD: the z-score against numpy, the KD
term against a hand computation, invariance to the student's logit scale and shift, KD
unchanged without the switch, one real epoch on four pairs."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.dkd  # noqa: F401  (registers --distill dkd)
from distillers import kd_loss
from distillers.dkd import dkd_loss
from distillers.logit_std import standardize
from helpers import PAIRS, assert_gradients, kd_by_hand, make_distiller, one_epoch


def test_standardize_matches_numpy_zscore():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 7)) * 5 + 3
    expected = (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)
    got = standardize(torch.tensor(z)).numpy()
    # float64 means and sds of 7 values ~3 +- 5, z-scores ~2: a few ulps, ~1e-15 on any CPU
    assert np.allclose(got, expected, rtol=0, atol=1e-12)


def _zscore(rows):
    z = np.asarray(rows, dtype=np.float64)
    return ((z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)).tolist()


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.1, "div": 9.0, "beta": 0.0, "kd_T": 2.0, **kw})


def _kd(**kw):
    return make_distiller("kd", _args(**kw), "resnet8", "resnet14", num_classes=10)


def test_kd_term_with_logit_stand_matches_hand_computation():
    student, teacher, d = _kd(logit_stand=True)
    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "kd"}
    with torch.no_grad():
        logits_t = teacher(images)
    expected = 9.0 * kd_by_hand(_zscore(logits.detach().tolist()), _zscore(logits_t.tolist()), 2.0)
    # float32 z-scores (|z| < 3) and log-probabilities (~-2..-5, ulp 2.4e-7..4.8e-7) against a
    # KL of ~0.3: a few ulps are ~3e-6 relative at worst (2.5e-7 seen), under 1e-5 on any CPU
    assert losses["kd"].item() == pytest.approx(expected, rel=1e-5)
    losses["kd"].backward()
    assert_gradients(student, teacher, every_student_param=True)
    assert d.extra_state_dict() == {}


def test_kd_without_the_switch_is_the_base_term():
    _, teacher, d = _kd()
    assert not d.kd.logit_stand and d.div_weight == 9.0
    d.train()
    images = torch.randn(4, 3, 32, 32)
    logits, losses = d.forward_train(images, torch.randint(0, 10, (4,)))
    with torch.no_grad():
        # the same kernels in the same order as the distiller: equal on any CPU (0 seen)
        assert torch.allclose(losses["kd"], 9.0 * kd_loss(logits, teacher(images), 2.0))


def test_standardized_losses_ignore_the_students_scale_and_shift():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64) * 4
    y = torch.randint(0, 10, (5,))
    kd = lambda a, b: kd_loss(standardize(a), standardize(b), 2.0)
    dkd = lambda a, b: dkd_loss(standardize(a), standardize(b), y, 1.0, 8.0, 2.0)
    for loss in (kd, dkd):
        # float64: 3 s + 7 standardises back to s within ~1e-15 (a few ulps of 7 / 3); the
        # losses (~1) agree far inside allclose's defaults, on any CPU; s^3 moves them by O(1)
        assert torch.allclose(loss(s, t), loss(3.0 * s + 7.0, t))
        assert not torch.allclose(loss(s, t), loss(s ** 3, t))


def test_dkd_with_logit_stand_is_dkd_on_standardized_logits():
    args = SimpleNamespace(cls=1.0, div=0.0, beta=9.0, kd_T=2.0, logit_stand=True)
    student, teacher, d = make_distiller("dkd", args, "resnet8", "resnet14", num_classes=10)
    d.train()
    d.on_epoch_start(20)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(images, targets)
    with torch.no_grad():
        z_s, z_t = torch.tensor(_zscore(logits.tolist())), torch.tensor(_zscore(teacher(images).tolist()))
    expected = 9.0 * dkd_loss(z_s, z_t, targets, 1.0, 8.0, 2.0)
    # the same float32 DKD on z-scores that differ by float32 rounding (float32 standardize vs
    # float64 rounded to float32): a few ulps of a loss of ~90 (2e-7 relative seen), under 1e-5
    assert losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("kd", teacher_ckpt(teacher), student, pair_data, tmp_path,
                           "--logit_stand", "-c", "0.1", "-d", "9", "--kd_T", "2")
    assert summary["parameters"]["extras"] == 0 and summary["args"]["logit_stand"] is True

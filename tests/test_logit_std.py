"""Logit standardization (--logit_stand) with KD and DKD: the z-score against numpy, the KD
term against a hand computation, invariance to the student's logit scale and shift, KD
unchanged without the switch, one real epoch on four pairs."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.dkd  # noqa: F401  (registers --distill dkd)
import train_student
from distillers import get_distiller, kd_loss
from distillers.dkd import dkd_loss
from distillers.logit_std import standardize
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


def test_standardize_matches_numpy_zscore():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(4, 7)) * 5 + 3
    expected = (z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)
    got = standardize(torch.tensor(z)).numpy()
    assert np.allclose(got, expected, atol=1e-12)


def _kd_by_hand(s, t, T):
    total = 0.0
    for rs, rt in zip(s, t):
        es, et = [math.exp(v / T) for v in rs], [math.exp(v / T) for v in rt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s) * T * T


def _zscore(rows):
    z = np.asarray(rows, dtype=np.float64)
    return ((z - z.mean(1, keepdims=True)) / (z.std(1, ddof=1, keepdims=True) + 1e-7)).tolist()


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.1, "div": 9.0, "beta": 0.0, "kd_T": 2.0, **kw})


def _kd(**kw):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    return student, teacher, get_distiller("kd")(student, teacher, _args(**kw))


def test_kd_term_with_logit_stand_matches_hand_computation():
    student, teacher, d = _kd(logit_stand=True)
    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "kd"}
    with torch.no_grad():
        logits_t = teacher(images)
    expected = 9.0 * _kd_by_hand(_zscore(logits.detach().tolist()), _zscore(logits_t.tolist()), 2.0)
    assert losses["kd"].item() == pytest.approx(expected, rel=1e-5)
    losses["kd"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert d.extra_state_dict() == {}


def test_kd_without_the_switch_is_the_base_term():
    _, teacher, d = _kd()
    assert not d.logit_stand and d.div_weight == 9.0
    d.train()
    images = torch.randn(4, 3, 32, 32)
    logits, losses = d.forward_train(images, torch.randint(0, 10, (4,)))
    with torch.no_grad():
        assert torch.allclose(losses["kd"], 9.0 * kd_loss(logits, teacher(images), 2.0))


def test_standardized_losses_ignore_the_students_scale_and_shift():
    torch.manual_seed(0)
    s, t = torch.randn(5, 10, dtype=torch.float64), torch.randn(5, 10, dtype=torch.float64) * 4
    y = torch.randint(0, 10, (5,))
    kd = lambda a, b: kd_loss(standardize(a), standardize(b), 2.0)
    dkd = lambda a, b: dkd_loss(standardize(a), standardize(b), y, 1.0, 8.0, 2.0)
    for loss in (kd, dkd):
        assert torch.allclose(loss(s, t), loss(3.0 * s + 7.0, t))
        assert not torch.allclose(loss(s, t), loss(s ** 3, t))


def test_dkd_with_logit_stand_is_dkd_on_standardized_logits():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    args = SimpleNamespace(cls=1.0, div=0.0, beta=9.0, kd_T=2.0, logit_stand=True)
    d = get_distiller("dkd")(student, teacher, args)
    d.train()
    d.on_epoch_start(20)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(images, targets)
    with torch.no_grad():
        z_s, z_t = torch.tensor(_zscore(logits.tolist())), torch.tensor(_zscore(teacher(images).tolist()))
    expected = 9.0 * dkd_loss(z_s, z_t, targets, 1.0, 8.0, 2.0)
    assert losses["dkd"].item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    torch.save({"model": create_model(teacher, 100).state_dict(), "model_name": teacher}, ckpt)
    train_student.main(["--distill", "kd", "--logit_stand", "-c", "0.1", "-d", "9", "--kd_T", "2",
                        "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])
    assert summary["parameters"]["extras"] == 0 and summary["args"]["logit_stand"] is True

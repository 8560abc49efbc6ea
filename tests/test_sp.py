"""Similarity-preserving KD: the loss against a hand computation, gradients, one epoch."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
from distillers import get_distiller
from distillers.sp import sp_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


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
    assert abs(sp_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12


def test_sp_loss_is_zero_for_scaled_features():
    f = torch.randn(4, 8, 2, 2)
    assert sp_loss(f, 3.0 * f).abs().item() < 1e-10


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 1.0, "beta": 3000.0, "kd_T": 4.0, **kw})


def _pair():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    return student, teacher, get_distiller("sp")(student, teacher, _args())


def test_gradients_reach_student_not_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "sp"}
    losses["sp"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert student.fc.weight.grad is None  # feats[-2] is before the classifier
    assert all(p.grad is None for p in teacher.parameters())


def test_no_extras():
    student, _, d = _pair()
    assert get_distiller("similarity") is type(d)
    assert len(d.trainable_parameters()) == len(list(student.parameters()))
    assert d.extra_state_dict() == {}
    d.load_extra_state_dict({})


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    torch.save({"model": create_model(teacher, 100).state_dict(), "model_name": teacher}, ckpt)
    # the loop stops with an error on a non-finite loss
    train_student.main(["--distill", "sp", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])

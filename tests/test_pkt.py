"""PKT: the loss against a loop over sample pairs, gradients, no extras, one epoch."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
from distillers import get_distiller
from distillers.pkt import pkt_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]
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
    assert abs(pkt_loss(torch.tensor(f_s), torch.tensor(f_t)).item() - expected) < 1e-12


def test_pkt_loss_is_zero_for_scaled_features_and_ignores_zero_rows():
    f = torch.randn(5, 8, dtype=torch.float64)
    assert abs(pkt_loss(3 * f, f).item()) < 1e-10
    f[0] = 0
    assert torch.isfinite(pkt_loss(f, torch.randn(5, 8, dtype=torch.float64)))


def _pair():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    args = SimpleNamespace(cls=1.0, div=0.0, beta=30000.0, kd_T=4.0)
    return student, teacher, get_distiller("pkt")(student, teacher, args)


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "pkt"}
    losses["pkt"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert len(d.trainable_parameters()) == len(list(student.parameters()))
    assert d.extra_state_dict() == {}
    d.load_extra_state_dict({})


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    torch.save({"model": create_model(teacher, 100).state_dict(), "model_name": teacher}, ckpt)
    # the loop stops with an error on a non-finite loss
    train_student.main(["--distill", "pkt", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])

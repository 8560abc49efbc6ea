"""Logits (Ba & Caruana): the MSE against a hand computation, gradients, no extras, one epoch."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
from distillers import get_distiller
from distillers.logits import logits_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


def test_logits_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    z_s, z_t = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    expected = sum((z_s[i, k] - z_t[i, k]) ** 2 for i in range(3) for k in range(5)) / 15
    assert abs(logits_loss(torch.tensor(z_s), torch.tensor(z_t)).item() - expected) < 1e-12


def _pair():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    args = SimpleNamespace(cls=1.0, div=0.0, beta=0.1, kd_T=4.0)
    return student, teacher, get_distiller("logits")(student, teacher, args)


def test_defaults():
    assert get_distiller("logits").default_weights == {"cls": 1.0, "div": 0.0, "beta": 0.1}


def test_gradients_reach_student_not_teacher_and_no_extras():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "logits"}
    losses["logits"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0 and student.fc.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher.parameters())
    assert len(d.trainable_parameters()) == len(list(student.parameters()))
    assert d.extra_state_dict() == {}
    d.load_extra_state_dict({})


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    torch.save({"model": create_model(teacher, 100).state_dict(), "model_name": teacher}, ckpt)
    # the loop stops with an error on a non-finite loss
    train_student.main(["--distill", "logits", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])

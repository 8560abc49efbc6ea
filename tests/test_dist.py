"""DIST: the loss against numpy's correlation coefficients, gradients, no extras, one real
epoch on four pairs."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.dist  # noqa: F401  (registers --distill dist)
import train_student
from distillers import get_distiller
from distillers.dist import dist_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


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
    # the reference adds 1e-8 to the norm product; numpy's correlation has no epsilon
    assert got == pytest.approx(_dist_by_hand(s, t, beta, gamma, tau), rel=1e-6)


def test_dist_loss_is_zero_for_equal_logits():
    z = torch.randn(8, 10, dtype=torch.float64)
    assert 0 <= dist_loss(z, z.clone(), 1.0, 1.0, 4.0).item() < 1e-3  # 1e-3: the epsilon


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 2.0, "kd_T": 4.0, **kw})


def test_terms_gradients_and_no_extras():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet32x4", 100)
    d = get_distiller("dist")(student, teacher, _args())
    d.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "dist"}
    with torch.no_grad():
        expected = 2.0 * dist_loss(logits, teacher(images), 1.0, 1.0, 4.0)
    assert torch.allclose(losses["dist"], expected)
    losses["dist"].backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    assert len(d.trainable_parameters()) == len(list(student.parameters()))
    assert d.extra_state_dict() == {}
    d.load_extra_state_dict({})


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    torch.save({"model": create_model(teacher, 100).state_dict(), "model_name": teacher}, ckpt)
    train_student.main(["--distill", "dist", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])
    assert summary["parameters"]["extras"] == 0
    assert (summary["args"]["cls"], summary["args"]["div"], summary["args"]["beta"]) == (1, 0, 2)

"""CC: RepDistiller's loss and the kernel variants against loops, both embeddings trained, one epoch."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
from distillers import get_distiller
from distillers.cc import cc_loss_matrix, cc_loss_repdistiller, correlation_matrix
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


def save_teacher(name, path):
    """An untrained teacher checkpoint whose BatchNorm statistics are estimated on random images.
    A raw initialisation keeps running statistics (0, 1) that blow its pooled features up to
    hundreds in norm, far beyond a trained teacher's, and the default lr then diverges."""
    torch.manual_seed(0)
    model = create_model(name, 100)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # a plain average over the batches
    with torch.no_grad():
        for _ in range(2):
            model.train()(torch.randn(64, 3, 32, 32))
    torch.save({"model": model.state_dict(), "model_name": name}, path)


def test_repdistiller_loss_matches_loop():
    rng = np.random.default_rng(0)
    e_s, e_t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    d = abs(e_s - e_t)
    expected = sum(d[i, k] * d[i + 1, k] for i in range(3) for k in range(3)) / 3
    assert abs(cc_loss_repdistiller(torch.tensor(e_s), torch.tensor(e_t)).item() - expected) < 1e-12


def _frobenius_over_n2(c_s, c_t):
    n = len(c_s)
    return math.sqrt(sum((c_s[i][j] - c_t[i][j]) ** 2 for i in range(n) for j in range(n))) / n ** 2


def test_kernel_variants_match_loops():
    rng = np.random.default_rng(1)
    e_s, e_t = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    dot = lambda e, i, j: float(e[i] @ e[j])  # noqa: E731
    bil = [[[dot(e, i, j) for j in range(4)] for i in range(4)] for e in (e_s, e_t)]
    got = cc_loss_matrix(torch.tensor(e_s), torch.tensor(e_t), "bilinear").item()
    assert abs(got - _frobenius_over_n2(*bil)) < 1e-12
    g, p_order = 0.4, 2
    gauss = [[[math.exp(-2 * g) * sum((2 * g) ** p / math.factorial(p) * dot(e, i, j) ** p
                                       for p in range(p_order + 1)) for j in range(4)]
              for i in range(4)] for e in (e_s, e_t)]
    got = cc_loss_matrix(torch.tensor(e_s), torch.tensor(e_t), "gaussian", g, p_order).item()
    assert abs(got - _frobenius_over_n2(*gauss)) < 1e-12


def test_gaussian_expansion_approaches_the_rbf_kernel_on_unit_vectors():
    e = torch.nn.functional.normalize(torch.randn(5, 4, dtype=torch.float64), dim=1)
    rbf = torch.exp(-0.4 * torch.cdist(e, e).pow(2))
    zero = torch.zeros(5, 4, dtype=torch.float64)  # C(0) is exp(-2 gamma) everywhere
    assert torch.allclose(correlation_matrix(e, "gaussian", 0.4, 12), rbf, atol=1e-10)
    assert torch.allclose(correlation_matrix(zero, "gaussian", 0.4, 2),
                          torch.full((5, 5), math.exp(-0.8), dtype=torch.float64))


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 0.02, "kd_T": 4.0, **kw})


def _pair(student="resnet8x4", **kw):
    torch.manual_seed(0)
    s, t = create_model(student, 100), create_model("resnet32x4", 100)
    return s, t, get_distiller("cc")(s, t, _args(**kw))


@pytest.mark.parametrize("kernel", ["repdistiller", "gaussian", "bilinear"])
def test_gradients_reach_student_and_both_embeddings_not_teacher(kernel):
    student, teacher, d = _pair(student="ShuffleV2", cc_kernel=kernel)
    assert (d.embed_s.in_features, d.embed_t.in_features, d.embed_s.out_features) == (1024, 256, 128)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "cc"}
    losses["cc"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    for embed in (d.embed_s, d.embed_t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in embed.parameters())
    assert all(p.grad is None for p in teacher.parameters())


def test_extras_are_trained_and_saved():
    student, _, d = _pair(cc_feat_dim=16)
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for m in (d.embed_s, d.embed_t) for p in m.parameters())
    state = d.extra_state_dict()
    assert set(state) == {"embed_s.weight", "embed_s.bias", "embed_t.weight", "embed_t.bias"}
    assert state["embed_s.weight"].shape == (16, 256)
    _, _, d2 = _pair(cc_feat_dim=16)
    with torch.no_grad():
        for p in d2.parameters():
            p.add_(1.0)
    d2.load_extra_state_dict({k: v.clone() for k, v in state.items()})
    for k, v in d2.extra_state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    ckpt = tmp_path / f"{teacher}.pth"
    save_teacher(teacher, ckpt)
    # the loop stops with an error on a non-finite loss
    train_student.main(["--distill", "cc", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(cifar100_small),
                        "--save_folder", str(tmp_path), "--epochs", "1", "--batch_size", "64",
                        "--print_freq", "1000"])
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])
    assert summary["parameters"]["extras"] > 0

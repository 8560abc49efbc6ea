"""FSP: flow matrices and loss against hand computations, the two stages, the one-stage
variant, and one epoch of each stage through train_student.main."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.ab  # noqa: F401  (registers ab, which adds the shared --init_epochs)
import distillers.fsp  # noqa: F401
from distillers import Stage
from distillers.fsp import fsp_loss, fsp_matrices
from helper.core.errors import UserError
from helpers import (PAIRS, build, assert_gradients, assert_no_extras, make_distiller, one_epoch,
                     one_line_user_error)
from models import create_model

FSP_PAIRS = PAIRS[:3]  # ShuffleV2 -> resnet14x4: the channels differ, a user error (below)
INIT, MAIN = Stage("init", 1, lr_decay_epochs=(), selects_best=False), Stage("main", 1)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 50.0, "kd_T": 4.0, "epochs": 1, **kw})


def _hand_fsp(bottom, top):
    """G[n, j, i] = mean over positions of top[n, j] * bottom[n, i], bottom 2x2-average-pooled
    when it is twice as large."""
    if bottom.shape[2] == 2 * top.shape[2]:
        n, c, h, w = bottom.shape
        bottom = bottom.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))
    n, c_b, h, w = bottom.shape
    c_t = top.shape[1]
    g = np.zeros((n, c_t, c_b))
    for k in range(n):
        for j in range(c_t):
            for i in range(c_b):
                g[k, j, i] = sum(top[k, j, x, y] * bottom[k, i, x, y] for x in range(h) for y in range(w)) / (h * w)
    return g


def test_fsp_matrices_and_loss_match_hand_computation():
    rng = np.random.default_rng(0)
    s = [rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 2, 2, 2)), rng.normal(size=(2, 4, 2, 2))]
    t = [rng.normal(size=x.shape) for x in s]
    got = fsp_matrices([torch.tensor(x) for x in s])
    want = [_hand_fsp(s[0], s[1]), _hand_fsp(s[1], s[2])]
    assert [tuple(g.shape) for g in got] == [(2, 2, 3), (2, 4, 2)]
    # float64 means of <= 16 products (entries ~1, the loss ~1): a few ulps, ~1e-16 on any CPU
    assert all(np.allclose(g.numpy(), w, rtol=0, atol=1e-12) for g, w in zip(got, want))
    expected = sum(((_hand_fsp(s[i], s[i + 1]) - _hand_fsp(t[i], t[i + 1])) ** 2).mean() for i in range(2))
    assert abs(fsp_loss([torch.tensor(x) for x in s], [torch.tensor(x) for x in t]).item() - expected) < 1e-10


def _pair(**kw):
    return make_distiller("fsp", _args(**kw), "resnet8", "resnet14", num_classes=10)


def test_init_stage_trains_feature_modules_on_fsp_alone():
    student, teacher, d = _pair(init_epochs=30)
    assert [s.name for s in d.stages()] == ["init", "main"]
    d.on_epoch_start(1, None, INIT)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"fsp"}  # unweighted, as RepDistiller's pretrain.py
    losses["fsp"].backward()
    assert_gradients(student.get_feat_modules(), teacher, every_student_param=True)
    assert student.fc.weight.grad is None
    assert {id(p) for p in d.stage_parameters(INIT)} == {id(p) for p in student.get_feat_modules().parameters()}
    d.on_epoch_start(1, None, MAIN)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls"}  # RepDistiller's main stage: loss_kd = 0


def test_one_stage_variant_weights_fsp_by_beta():
    student, teacher, d = _pair(fsp_one_stage=True, beta=2.0)
    assert [s.name for s in d.stages()] == ["main"]
    d.train()
    images = torch.randn(4, 3, 32, 32)
    _, losses = d.forward_train(images, torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls", "fsp"}
    with torch.no_grad():
        f_s, _ = student(images, is_feat=True)
        f_t, _ = teacher(images, is_feat=True)
    # the distiller's forward and loss repeated (train-mode BN: batch statistics), the same
    # kernels in the same order: equal up to the weight's float32 product, on any CPU
    assert torch.allclose(losses["fsp"], 2.0 * fsp_loss(f_s[:-1], f_t[:-1]))
    losses["fsp"].backward()
    assert_gradients(student, teacher)


def test_no_extras():
    student, _, d = _pair()
    assert_no_extras(d, student)
    assert {id(p) for p in d.trainable_parameters()} == {id(p) for p in student.parameters()}


def test_channel_mismatch_names_the_channels():
    torch.manual_seed(0)
    with pytest.raises(UserError, match=r"resnet8x4 has \[32, 64, 128, 256\].*differ at 0, 1, 2, 3"):
        build("fsp", create_model("resnet8", 10), create_model("resnet8x4", 10), _args())


@pytest.mark.parametrize("teacher,student", FSP_PAIRS)
def test_one_epoch_per_stage(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("fsp", teacher_ckpt(teacher), student, pair_data, tmp_path,
                           "--init_epochs", "1", stages=["init", "main"])
    assert summary["finished"]


def test_one_stage_through_the_script(cifar100_small, tmp_path, teacher_ckpt):
    # -b 1: the untrained teacher's FSP matrices make -b 50 diverge at lr 0.05 in one stage
    _, summary = one_epoch("fsp", teacher_ckpt("wrn_40_2"), "wrn_16_2", cifar100_small, tmp_path,
                           "--init_epochs", "1", "--fsp_one_stage", "-b", "1", stages=["main"])
    assert summary["finished"]


def test_shufflenet_student_is_a_user_error(cifar100_small, tmp_path, capsys, teacher_ckpt):
    err = one_line_user_error(capsys, "fsp", "ShuffleV2", cifar100_small, tmp_path,
                              "--init_epochs", "1", teacher=teacher_ckpt("resnet14x4"))
    assert "ShuffleV2 has [24, 116, 232, 464]" in err
    assert not list(tmp_path.glob("students/*/last.pth"))

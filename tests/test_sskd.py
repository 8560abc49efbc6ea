"""SSKD: rotations, similarities, the error-level ranking and the four loss terms against
hand computations, each stage's gradients, extras, and one epoch of each stage."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.sskd  # noqa: F401  (registers sskd)
from conftest import write_cifar100
from distillers import Stage
from distillers.sskd import keep_mask, masked_kd, rotations, similarity
from helper.core.errors import UserError
from helpers import (PAIRS, build, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)
from models import create_model
TEACHER_SS, MAIN = Stage("teacher_ss", 1, lr=0.05, lr_decay_epochs=(30, 45), selects_best=False), Stage("main", 1)


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.1, "div": 0.9, "beta": 10.0, "kd_T": 4.0, "epochs": 1, **kw})


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


def _hand_similarity(rep):
    """rows: rotated copies (sample j // 3, rotation j % 3 + 1); columns: normal images."""
    batch = len(rep) // 4
    return np.array([[_cos(rep[4 * (j // 3) + 1 + j % 3], rep[4 * b]) for b in range(batch)]
                     for j in range(3 * batch)])


def _hand_keep(scores, target, ratio):
    """The official rule: the target's position in the descending order of each row; keep the
    rows at position 0 and the int(ratio * wrong) wrong rows of smallest position."""
    rank = [sorted(range(len(row)), key=lambda k: -row[k]).index(t) for row, t in zip(scores, target)]
    wrong = sum(r > 0 for r in rank)
    keep = len(rank) - wrong + int(wrong * ratio)
    return set(sorted(range(len(rank)), key=lambda i: (rank[i], i))[:keep])


def _hand_kd(s, t, T, rows):
    total = 0.0
    for i in rows:
        ps = np.exp(s[i] / T) / np.exp(s[i] / T).sum()
        pt = np.exp(t[i] / T) / np.exp(t[i] / T).sum()
        total += float((pt * (np.log(pt) - np.log(ps))).sum())
    return total / len(rows) * T * T


def test_rotations_match_numpy():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    out = rotations(x).numpy()
    for b in range(2):
        for r in range(4):
            assert np.array_equal(out[4 * b + r], np.rot90(x[b].numpy(), r, axes=(1, 2)))


def test_similarity_keep_mask_and_masked_kd_match_hand_computation():
    rng = np.random.default_rng(0)
    rep = rng.normal(size=(12, 5))  # 3 images x 4 rotations
    # float64 cosine similarities (<= 1) and KL, here and below: a few ulps, ~1e-16, any CPU
    assert np.allclose(similarity(torch.tensor(rep)).numpy(), _hand_similarity(rep), rtol=0,
                       atol=1e-12)
    scores, target = rng.normal(size=(9, 6)), rng.integers(0, 6, size=9)
    for ratio in (0.0, 0.5, 0.75, 1.0):
        mask = keep_mask(torch.tensor(scores), torch.tensor(target), ratio)
        assert set(np.flatnonzero(mask.numpy())) == _hand_keep(scores, target, ratio)
    s = rng.normal(size=(9, 6))
    mask = keep_mask(torch.tensor(scores), torch.tensor(target), 0.5)
    got = masked_kd(torch.tensor(s), torch.tensor(scores), 0.5, mask).item()
    assert abs(got - _hand_kd(s, scores, 0.5, sorted(_hand_keep(scores, target, 0.5)))) < 1e-10


def _pair(**kw):
    return make_distiller("sskd", _args(**kw), "resnet8", "resnet14", num_classes=10)


def test_main_stage_terms_match_hand_computation():
    student, teacher, d = _pair(sskd_ratio_tf=0.5)
    d.on_epoch_start(1, None, MAIN)
    d.train()
    images, targets = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    d.double()
    logits, losses = d.forward_train(images, targets)
    # the same forward passes on copies rotated by numpy, in the same row order
    x = torch.tensor(np.stack([np.rot90(im, r, axes=(1, 2)) for im in images.numpy() for r in range(4)]).copy())
    with torch.no_grad():
        f_s, z_s = student(x, is_feat=True)
        f_t, z_t = teacher(x, is_feat=True)
        a_s = _hand_similarity(d.student_head(f_s[-1]).numpy())
        a_t = _hand_similarity(d.teacher_head(f_t[-1]).numpy())
    z_s, z_t, y = z_s.numpy(), z_t.numpy(), targets.numpy()
    normal = [4 * b for b in range(4)]
    rotated = [4 * b + r for b in range(4) for r in (1, 2, 3)]
    ce = -np.mean([z_s[i, y[b]] - math.log(np.exp(z_s[i]).sum()) for b, i in enumerate(normal)])
    keep_tf = sorted(_hand_keep(z_t[rotated], np.repeat(y, 3), 0.5))
    keep_ss = sorted(_hand_keep(a_t, np.repeat(np.arange(4), 3), 0.75))
    expected = {"cls": 0.1 * ce, "kd": 0.9 * _hand_kd(z_s[normal], z_t[normal], 4.0, range(4)),
                "tf": 2.7 * _hand_kd(z_s[rotated], z_t[rotated], 4.0, keep_tf),
                "ss": 10.0 * _hand_kd(a_s, a_t, 0.5, keep_ss)}
    assert set(losses) == set(expected)
    # float64 forwards (the distiller's and these, the same kernels: equal logits, asserted
    # below) and float64 losses against numpy: a few ulps of each term, ~1e-15 relative, on any
    # CPU; 1e-8 relative is slack
    for k, v in expected.items():
        assert abs(losses[k].item() - v) < 1e-8 * max(1.0, abs(v)), k
    assert torch.equal(logits, torch.tensor(z_s[normal]))


def test_teacher_ss_stage_trains_the_teacher_head_alone():
    student, teacher, d = _pair()
    assert [s.name for s in d.stages()] == ["teacher_ss", "main"]
    d.on_epoch_start(1, None, TEACHER_SS)
    d.train()
    assert not student.training and not teacher.training
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"ss_t"}
    losses["ss_t"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.teacher_head.parameters())
    assert all(p.grad is None for p in [*student.parameters(), *d.student_head.parameters(), *teacher.parameters()])
    assert {id(p) for p in d.stage_parameters(TEACHER_SS)} == {id(p) for p in d.teacher_head.parameters()}


def test_main_stage_trains_student_and_its_head():
    student, teacher, d = _pair()
    d.on_epoch_start(1, None, MAIN)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    sum(losses.values()).backward()
    assert_gradients(student, teacher, d.student_head, every_student_param=True)
    assert all(p.grad is None for p in d.teacher_head.parameters())
    chosen = {id(p) for p in d.stage_parameters(MAIN)}
    assert chosen == {id(p) for p in [*student.parameters(), *d.student_head.parameters()]}


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    assert_extras_trainable(d, d.student_head, d.teacher_head)
    state = d.extra_state_dict()
    assert {"student_head.0.weight", "teacher_head.2.bias"} <= set(state)
    _, _, d2 = _pair()
    assert_extras_round_trip(state, d2, shift=d2.parameters())


def test_non_square_inputs_are_a_user_error():
    with pytest.raises(UserError, match="square"):
        build("sskd", create_model("resnet8", 10), create_model("resnet14", 10), _args(), input_size=(3, 32, 48))


@pytest.fixture(scope="module")
def cifar100_32(tmp_path_factory):
    """32 training images: SSKD feeds every image four times to both models, so the
    320-image fixture would take minutes on one CPU thread."""
    return write_cifar100(tmp_path_factory.mktemp("cifar100_32"), n_train=32, n_test=32)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_per_stage(teacher, student, cifar100_32, tmp_path, teacher_ckpt):
    _, summary = one_epoch("sskd", teacher_ckpt(teacher), student, cifar100_32, tmp_path,
                           "--sskd_t_epochs", "1", stages=["teacher_ss", "main"], batch_size=16)
    assert summary["finished"]

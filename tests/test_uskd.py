"""USKD: the three terms against a hand computation (hard and soft labels, both rank modes),
no teacher, gradients to the student and the weak classifier, the extra in checkpoints and
resume, one real epoch, the user errors."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import get_distiller
from distillers.uskd import uskd_losses, zipf_positions
from helpers import (assert_extras_round_trip, assert_extras_trainable, assert_resume_is_exact,
                     build, one_epoch, one_line_user_error, run_student)
from models import create_model


def _softmax(row):
    e = [math.exp(v) for v in row]
    return [v / sum(e) for v in e]


def _uskd_by_hand(s, w, labels, values, soft, mu, probs):
    """Plain loops over rows: ``labels``/``values`` per row (1 or 2 entries), ``soft`` the
    full label rows (the one-hot for hard labels)."""
    n, c = len(s), len(s[0])
    ps = [_softmax(r) for r in s]
    sq = [[ps[i][y] ** 2 for y in labels[i]] for i in range(n)]
    k = len(labels[0])
    col_mean = [sum(sq[i][j] for i in range(n)) / n for j in range(k)]
    target = non_target = weak = 0.0
    for i in range(n):
        for j, y in enumerate(labels[i]):
            weight = 0.0 if values[i][j] == 0 else sq[i][j] + values[i][j] - col_mean[j]
            target -= weight * math.log(ps[i][y])
        pw = _softmax(w[i])
        weak -= sum(mu * (0.9 * soft[i][j] + 0.1 / c) * math.log(pw[j]) for j in range(c))
        student = ps[i] if probs else [math.log(p) for p in ps[i]]
        w_y = sum(pw[y] for y in labels[i])
        s_y = sum(student[y] for y in labels[i])
        score = [pw[j] / (1 - w_y + 1e-6) + student[j] / (1 - s_y + 1e-6) for j in range(c)]
        order = sorted(range(c), key=lambda j: -score[j])  # no ties in these draws
        zipf = {j: 1.0 / (order.index(j) + 1) for j in range(c)}
        rest = [j for j in range(c) if j not in labels[i]]
        total = sum(zipf[j] for j in rest)
        q = _softmax([s[i][j] for j in rest])
        non_target -= sum(zipf[j] / total * math.log(qj) for j, qj in zip(rest, q))
    return target / n, non_target / n, weak / n


@pytest.mark.parametrize("probs", [False, True])
def test_terms_match_hand_computation_hard_labels(probs):
    rng = np.random.default_rng(0)
    s, w, y = rng.normal(size=(5, 7)) * 2, rng.normal(size=(5, 7)), [0, 6, 3, 3, 1]
    onehot = np.eye(7)[y]
    expected = _uskd_by_hand(s, w, [[v] for v in y], [[1.0]] * 5, onehot, 0.1, probs)
    got = uskd_losses(torch.tensor(s), torch.tensor(w), torch.tensor(y), mu=0.1,
                      rank_probs=probs)
    for g, e in zip(got, expected):
        assert abs(g.item() - e) < 1e-9  # float64, values ~1: a few ulps


def test_terms_match_hand_computation_soft_labels():
    """MixUp/CutMix labels: the two largest entries are the label columns; a zero second value
    (both samples of one class) weighs nothing but its column still leaves the non-targets."""
    rng = np.random.default_rng(1)
    s, w = rng.normal(size=(4, 6)) * 2, rng.normal(size=(4, 6))
    soft = np.zeros((4, 6))
    rows = [(1, 4, 0.7), (0, 2, 0.6), (5, 3, 0.55), (2, None, 1.0)]
    labels, values = [], []
    for i, (a, b, lam) in enumerate(rows):
        soft[i, a] = lam
        if b is not None:
            soft[i, b] = 1 - lam
    for i in range(4):
        order = sorted(range(6), key=lambda j: (-soft[i, j], j))[:2]
        labels.append(order)
        values.append([soft[i, j] for j in order])
    got = uskd_losses(torch.tensor(s), torch.tensor(w), torch.tensor(soft.argmax(1)), mu=0.5,
                      soft_targets=torch.tensor(soft))
    expected = _uskd_by_hand(s, w, labels, values, soft, 0.5, False)
    for g, e in zip(got, expected):
        assert abs(g.item() - e) < 1e-9


def test_zipf_positions_rank_descending_with_stable_ties():
    score = torch.tensor([[0.1, 0.9, 0.5, 0.5]])
    assert zipf_positions(score).tolist() == [[3, 0, 1, 2]]


def _args(**kw):
    return SimpleNamespace(**kw)


def _uskd(**kw):
    torch.manual_seed(0)
    student = create_model("resnet8x4", 100)
    return student, build("uskd", student, None, _args(**kw), num_classes=100)


def test_no_teacher_defaults_gradients_and_extra():
    cls = get_distiller("uskd")
    assert not cls.requires_teacher(cls.Options())
    student, d = _uskd()
    assert d.teacher is None
    assert (d.cls_weight, d.div_weight, d.beta) == (1.0, 0.0, 1.0)
    assert (d.alpha, d.non_target_weight, d.mu) == (0.1, 0.1, 0.1)
    # resnet8x4's feats: stem, three stages (64, 128, 256 channels), pooled: -3 is 128 wide
    assert d.weak_fc.in_features == 128 and d.weak_fc.out_features == 100
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "uskd_target", "uskd_non_target", "uskd_weak"}
    (losses["uskd_target"] + losses["uskd_non_target"] + losses["uskd_weak"]).backward()
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.weak_fc.parameters())
    assert_extras_trainable(d, d.weak_fc)
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert sorted(state) == ["weak_fc.bias", "weak_fc.weight"]
    _, other = _uskd()
    assert_extras_round_trip(state, other, shift=list(other.weak_fc.parameters()))


def test_terms_are_the_loss_of_the_forward():
    student, d = _uskd(beta=2.0, uskd_alpha=1.0, uskd_beta=0.5, uskd_mu=0.01)
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    with torch.no_grad():  # the same train-mode forward
        feats, logits = student(x, is_feat=True)
        t, n, w = uskd_losses(logits, d.weak_fc(feats[-3].mean((2, 3))), y, mu=0.01)
    assert losses["uskd_target"].item() == pytest.approx(2 * t.item(), rel=1e-5)
    assert losses["uskd_non_target"].item() == pytest.approx(2 * 0.5 * n.item(), rel=1e-5)
    assert losses["uskd_weak"].item() == pytest.approx(2 * w.item(), rel=1e-5)


def test_one_epoch_without_teacher(cifar100_tiny, tmp_path):
    _, summary = one_epoch("uskd", None, "resnet8x4", cifar100_tiny, tmp_path)
    assert summary["parameters"]["extras"] == 128 * 100 + 100
    assert summary["args"]["uskd_alpha"] == 0.1


def test_resume_is_exact(cifar100_tiny, tmp_path):
    def run(name, *flags):
        return run_student("uskd", "resnet8", cifar100_tiny, tmp_path / name, *flags)
    a, _ = assert_resume_is_exact(run)
    assert set(a["extras"]) == {"weak_fc.weight", "weak_fc.bias"}


def test_user_errors_are_one_line(capsys, cifar100_tiny, tmp_path):
    line = one_line_user_error(capsys, "uskd", "resnet8x4", cifar100_tiny, tmp_path / "a",
                               "-d", "1")
    assert "--distill uskd has no teacher" in line and "-d" in line
    line = one_line_user_error(capsys, "uskd", "resnet8x4", cifar100_tiny, tmp_path / "b",
                               "--uskd_layer", "9")
    assert "--uskd_layer 9 is outside" in line
    line = one_line_user_error(capsys, "uskd", "resnet8x4", cifar100_tiny, tmp_path / "c",
                               "--uskd_mu", "-1")
    assert "--uskd_mu must be 0 or more" in line

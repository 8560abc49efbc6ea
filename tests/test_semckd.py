"""SemCKD: the loss and the attention against loops written out here, gradients, state, runs."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.semckd  # noqa: F401  (registers --distill semckd)
from distillers.semckd import CrossLayerAttention, semckd_loss
from helper.core.errors import UserError
from helpers import (PAIRS, build, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)
from models import create_model


def _args(**kw):
    base = dict(cls=1.0, div=1.0, beta=400.0, kd_T=4.0, batch_size=64, semckd_soft=1.0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_semckd_loss_matches_loops():
    rng = np.random.default_rng(0)
    b, shapes_t = 3, [(2, 4, 4), (3, 2, 2), (1, 1, 1)]
    n_s = 2
    proj = [[rng.normal(size=(b, *s)) for s in shapes_t] for _ in range(n_s)]
    tgt = [[rng.normal(size=(b, *s)) for s in shapes_t] for _ in range(n_s)]
    att = rng.random(size=(b, n_s, len(shapes_t)))
    att /= att.sum(-1, keepdims=True)
    expected = 0.0
    for n in range(b):
        for i in range(n_s):
            for j in range(len(shapes_t)):
                d = (proj[i][j][n] - tgt[i][j][n]).ravel()
                expected += att[n, i, j] * sum(v * v for v in d) / d.size
    expected /= b * n_s
    t = lambda rows: [[torch.tensor(x) for x in row] for row in rows]
    got = semckd_loss(t(proj), t(tgt), torch.tensor(att)).item()
    assert abs(got - expected) < 1e-10  # float64, attention-weighted MSEs ~2: ~1e-15, any CPU


def _embed(mlp, row):
    """MLPEmbed on one similarity row of length b <= its input size: the absent columns
    of the first weight are simply not used."""
    w1, b1, w2, b2 = (t.detach().double().numpy() for t in (
        mlp.linear1.weight, mlp.linear1.bias, mlp.linear2.weight, mlp.linear2.bias))
    h = np.maximum(w1[:, :len(row)] @ row + b1, 0)
    e = w2 @ h + b2
    return e / np.sqrt((e * e).sum())


@pytest.mark.parametrize("b", [8, 5])
def test_attention_matches_per_sample_computation_for_full_and_smaller_batches(b):
    torch.manual_seed(0)
    soft = 2.0
    module = CrossLayerAttention([4, 6], [3, 5, 7], max_batch=8, soft=soft).double()
    rand = lambda *shape: torch.randn(b, *shape, dtype=torch.double)
    feats_s = [rand(4, 4, 4), rand(6, 2, 2)]
    feats_t = [rand(3, 8, 8), rand(5, 4, 4), rand(7, 2, 2)]
    projected, targets, attention = module(feats_s, feats_t)
    fs = [f.reshape(b, -1).numpy() for f in feats_s]
    ft = [f.reshape(b, -1).numpy() for f in feats_t]
    for n in range(b):
        q = [_embed(m, np.array([f[n] @ f[k] for k in range(b)])) for m, f in zip(module.query, fs)]
        k = [_embed(m, np.array([f[n] @ f[k] for k in range(b)])) for m, f in zip(module.key, ft)]
        for i in range(2):
            energy = np.array([q[i] @ kj / soft for kj in k])
            expected = np.exp(energy) / np.exp(energy).sum()
            # float64 softmax of energies <= 1 / soft (unit embeddings): a few ulps of
            # probabilities <= 1, on any CPU
            assert np.allclose(attention[n, i].detach().numpy(), expected, rtol=0, atol=1e-10)
    # The larger map is pooled to the smaller: student 4x4 vs teacher 8x8 pools the teacher.
    t = feats_t[0].numpy()
    pooled = t.reshape(b, 3, 4, 2, 4, 2).mean(axis=(3, 5))
    assert np.allclose(targets[0][0].numpy(), pooled)  # float64 means of 4: a few ulps
    assert projected[0][0].shape == (b, 3, 4, 4)
    assert projected[1][0].shape == targets[1][0].shape == (b, 3, 2, 2)  # student 2x2: teacher pooled
    assert projected[0][2].shape == targets[0][2].shape == (b, 7, 2, 2)  # student pooled to 2x2


def _distiller(batch_size=64):
    student, teacher, d = make_distiller("semckd", _args(batch_size=batch_size), "resnet8",
                                         "resnet14")
    return d, student, teacher


def test_a_full_then_a_smaller_batch_train_and_gradients_reach_student_and_extras_only():
    distiller, student, teacher = _distiller()
    distiller.train()
    extras = [p for n, p in distiller.named_parameters() if not n.startswith("student.")]
    assert extras
    for b in (64, 17):
        distiller.zero_grad(set_to_none=True)
        logits, losses = distiller.forward_train(torch.randn(b, 3, 32, 32), torch.randint(0, 100, (b,)))
        assert set(losses) == {"cls", "kd", "semckd"} and logits.shape == (b, 100)
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        sum(losses.values()).backward()
        assert_gradients(student, teacher, extras, every_student_param=True)
    with pytest.raises(UserError, match="at most 64"):
        distiller.forward_train(torch.randn(65, 3, 32, 32), torch.randint(0, 100, (65,)))


def test_extras_are_trained_and_saved_and_round_trip():
    distiller, student, _ = _distiller(batch_size=16)
    trainable = {id(p) for p in distiller.trainable_parameters()}
    extras = {n: p for n, p in distiller.named_parameters() if not n.startswith("student.")}
    assert_extras_trainable(distiller, extras.values())
    assert len(trainable) == len(extras) + len(list(student.parameters()))
    state = distiller.extra_state_dict()
    assert set(extras) <= set(state) and any("running_mean" in k for k in state)
    assert distiller.attention.query[0].linear1.in_features == 16
    saved = {k: v.clone() for k, v in state.items()}
    other, _, _ = _distiller(batch_size=16)
    assert_extras_round_trip(saved, other, shift=other.attention.parameters())


def test_models_without_stage_maps_are_refused():
    with pytest.raises(UserError, match="convolutional"):
        build("semckd", create_model("mlp_800", 10), create_model("resnet8", 10), _args())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_through_train_student(pair_data, tmp_path, teacher, student, teacher_ckpt):
    # the first pair (cifar100_tiny): a batch of 64, then a smaller one of 8, which must train too
    _, summary = one_epoch("semckd", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["finished"] and math.isfinite(summary["last_acc"])
    assert summary["args"]["beta"] == 400 and summary["args"]["div"] == 1
    assert summary["parameters"]["extras"] > 0

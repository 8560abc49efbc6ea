"""ReviewKD: HCL and ABF against computations written out here, warm-up, features, state, runs."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.reviewkd  # noqa: F401  (registers --distill reviewkd)
from distillers import get_distiller
from distillers.reviewkd import ABF, hcl_loss
from helper.core.errors import UserError
from helpers import (PAIRS, build, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)
from models import create_model


def _args(**kw):
    base = dict(cls=1.0, div=0.0, beta=5.0, kd_T=4.0, reviewkd_warmup=20.0,
                reviewkd_student_preact=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _pool(a, size):
    n, c, h, w = a.shape
    return a.reshape(n, c, size, h // size, size, w // size).mean(axis=(3, 5))


def test_hcl_matches_hand_computation():
    rng = np.random.default_rng(0)
    shapes = [(2, 3, 8, 8), (2, 2, 4, 4), (2, 4, 1, 1)]
    fs = [rng.normal(size=s) for s in shapes]
    ft = [rng.normal(size=s) for s in shapes]
    mse = lambda a, b: float(((a - b) ** 2).mean())
    expected = 0.0
    # 8x8: full, 4x4, 2x2, 1x1 with weights 1, 1/2, 1/4, 1/8; 4x4: full, 2x2, 1x1; 1x1: full.
    a, b = fs[0], ft[0]
    expected += (mse(a, b) + mse(_pool(a, 4), _pool(b, 4)) / 2 + mse(_pool(a, 2), _pool(b, 2)) / 4
                 + mse(_pool(a, 1), _pool(b, 1)) / 8) / (1 + 1 / 2 + 1 / 4 + 1 / 8)
    a, b = fs[1], ft[1]
    expected += (mse(a, b) + mse(_pool(a, 2), _pool(b, 2)) / 2 + mse(_pool(a, 1), _pool(b, 1)) / 4) / 1.75
    expected += mse(fs[2], ft[2])
    got = hcl_loss([torch.tensor(x) for x in fs], [torch.tensor(x) for x in ft]).item()
    assert abs(got - expected) < 1e-10  # float64 pools and means of values ~1: a few ulps


def _conv_bn(seq, x):
    """Conv then eval-mode BatchNorm written out from their parameters."""
    conv, bn = seq[0], seq[1]
    y = torch.nn.functional.conv2d(x, conv.weight, conv.bias, padding=conv.padding)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return (y - bn.running_mean[:, None, None]) * scale[:, None, None] + bn.bias[:, None, None]


def test_abf_fuses_with_the_upsampled_residual_and_resizes_to_the_teacher():
    torch.manual_seed(0)
    abf = ABF(3, 4, 5, fuse=True).double().eval()
    for bn in (abf.conv1[1], abf.conv2[1]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x, residual = torch.randn(2, 3, 4, 4).double(), torch.randn(2, 4, 2, 2).double()
    with torch.no_grad():
        out, fused = abf(x, residual, (8, 8))
        a = _conv_bn(abf.conv1, x)
        r = residual.repeat_interleave(2, 2).repeat_interleave(2, 3)  # nearest, 2x
        att = abf.att_conv[0]
        z = torch.sigmoid(torch.einsum("oc,nchw->nohw", att.weight[:, :, 0, 0], torch.cat([a, r], 1))
                          + att.bias[None, :, None, None])
        expected_fused = (a * z[:, 0:1] + r * z[:, 1:2]).repeat_interleave(2, 2).repeat_interleave(2, 3)
        # float64 throughout; torch.allclose's default rtol 1e-5 is far above its rounding
        assert fused.shape == (2, 4, 8, 8) and torch.allclose(fused, expected_fused)
        assert torch.allclose(out, _conv_bn(abf.conv2, expected_fused))


def _distiller(teacher_train=False, **kw):
    student, teacher, d = make_distiller("reviewkd", _args(**kw), "resnet8", "resnet14",
                                         teacher_train=teacher_train)
    return d, student, teacher


def test_warm_up_counts_epochs_from_zero_as_the_reference():
    distiller, _, _ = _distiller()
    factors = []
    for epoch in (1, 2, 11, 21, 100):  # the loop counts from 1, the reference from 0
        distiller.on_epoch_start(epoch)
        factors.append(distiller.warmup_factor())
    assert factors == [0.0, 0.05, 0.5, 1.0, 1.0]
    assert _distiller(reviewkd_warmup=0)[0].warmup_factor() == 1.0


def test_review_loss_uses_preact_teacher_and_relu_student_features():
    distiller, student, teacher = _distiller(beta=2.0)
    distiller.train()
    distiller.on_epoch_start(11)
    images = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    _, losses = distiller.forward_train(images, torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "reviewkd"}  # -d 0: no KD term
    torch.manual_seed(1)
    feats_s, _ = student(images, is_feat=True, preact=False)
    with torch.no_grad():
        feats_t, _ = teacher(images, is_feat=True, preact=True)
    assert (feats_t[1] < 0).any()  # really before the ReLU
    to_map = lambda f: list(f[1:-1]) + [f[-1][:, :, None, None]]
    ft = to_map(feats_t)
    outputs = distiller.review(to_map(feats_s), [f.shape[2:] for f in ft])
    assert [o.shape for o in outputs] == [f.shape for f in ft]
    # the same float32 modules on the same features, recomputed: equal up to reduction order
    assert torch.allclose(losses["reviewkd"], 2.0 * 0.5 * hcl_loss(outputs, ft))


def test_gradients_reach_student_and_every_abf_never_the_teacher():
    distiller, student, teacher = _distiller()
    distiller.train()
    distiller.on_epoch_start(30)
    _, losses = distiller.forward_train(torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,)))
    sum(losses.values()).backward()
    extras = [p for n, p in distiller.named_parameters() if not n.startswith("student.")]
    assert len(extras) == 4 * 6 + 3 * 2  # 4 ABFs: conv+BN twice each; attention conv in 3
    assert_gradients(student, teacher, extras, every_student_param=True)


def test_extras_are_trained_and_saved_and_round_trip():
    distiller, student, _ = _distiller()
    trainable = {id(p) for p in distiller.trainable_parameters()}
    extras = {n: p for n, p in distiller.named_parameters() if not n.startswith("student.")}
    assert_extras_trainable(distiller, extras.values())
    assert len(trainable) == len(extras) + len(list(student.parameters()))
    saved = {k: v.clone() for k, v in distiller.extra_state_dict().items()}
    assert set(extras) <= set(saved) and any("running_var" in k for k in saved)
    other, _, _ = _distiller()
    assert_extras_round_trip(saved, other, shift=other.abfs.parameters())


def test_shapes_follow_the_models_and_stage_counts_must_match():
    reviewkd = get_distiller("reviewkd")
    distiller = reviewkd(create_model("ShuffleV2", 100), create_model("resnet32x4", 100), _args())
    # As build_review_kd's table for shufflev2: in 116/232/464/1024, out 64/128/256/256, mid 512.
    assert [a.conv1[0].in_channels for a in distiller.abfs] == [116, 232, 464, 1024]
    assert [a.conv2[0].out_channels for a in distiller.abfs] == [64, 128, 256, 256]
    assert {a.conv1[0].out_channels for a in distiller.abfs} == {512}
    assert [a.att_conv is not None for a in distiller.abfs] == [True, True, True, False]
    with pytest.raises(UserError, match="stages"):
        reviewkd(create_model("MobileNetV2", 100), create_model("resnet32x4", 100), _args())


def test_models_without_stage_maps_are_refused():
    with pytest.raises(UserError, match="convolutional"):
        build("reviewkd", create_model("mlp_800", 10), create_model("resnet8", 10), _args())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_through_train_student(pair_data, tmp_path, teacher, student, teacher_ckpt):
    # Without warm-up, so that the review loss is on in this single epoch.
    _, summary = one_epoch("reviewkd", teacher_ckpt(teacher), student, pair_data, tmp_path,
                           "--reviewkd_warmup", "0")
    assert summary["finished"] and math.isfinite(summary["last_acc"])
    assert (summary["args"]["cls"], summary["args"]["div"], summary["args"]["beta"]) == (1, 0, 5)
    assert summary["parameters"]["extras"] > 0


def test_teacher_mode_follows_the_switch():
    """Default: the teacher stays in eval mode as in mdistiller and torchdistill;
    --teacher_train (old name --reviewkd_teacher_train): training mode while training, as the
    official CIFAR code."""
    distiller, _, teacher = _distiller()
    distiller.train()
    assert not teacher.training
    distiller, _, teacher = _distiller(teacher_train=True)  # RunInfo(teacher_train=True)
    distiller.train()
    assert teacher.training
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    distiller.on_epoch_start(30)
    _, losses = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert not torch.equal(bn.running_mean, before)  # batch statistics, as train.py's teacher
    assert all(not p.requires_grad for p in teacher.parameters())
    distiller.eval()
    assert not teacher.training


def test_student_preact_features_as_torchdistill():
    distiller, student, teacher = _distiller(beta=2.0, reviewkd_student_preact=True)
    distiller.train()
    distiller.on_epoch_start(21)
    images = torch.randn(4, 3, 32, 32)
    _, losses = distiller.forward_train(images, torch.randint(0, 100, (4,)))
    feats_s, _ = student(images, is_feat=True, preact=True)
    assert (feats_s[1] < 0).any()
    with torch.no_grad():
        feats_t, _ = teacher(images, is_feat=True, preact=True)
    to_map = lambda f: list(f[1:-1]) + [f[-1][:, :, None, None]]
    ft = to_map(feats_t)
    outputs = distiller.review(to_map(feats_s), [f.shape[2:] for f in ft])
    # the same float32 modules on the same features, recomputed: equal up to reduction order
    assert torch.allclose(losses["reviewkd"], 2.0 * hcl_loss(outputs, ft))


def test_switches_parse():
    from helper.run.options import parse_student_args
    config = parse_student_args(["--distill", "reviewkd", "--reviewkd_teacher_train",
                                 "--reviewkd-student-preact"])
    assert config.args.teacher_train and config.method.options.reviewkd_student_preact
    config = parse_student_args(["--distill", "reviewkd"])
    assert not config.args.teacher_train and not config.method.options.reviewkd_student_preact

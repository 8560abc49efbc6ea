"""OFD: margins, connector and the whole loss against an independent numpy computation;
gradients, extras, teacher mode, user errors, resume, a real epoch and every pair's step."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from helper.core.errors import UserError
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     assert_resume_is_exact, build, one_epoch, one_line_user_error, run_student)
from models import create_model


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1e-3, "kd_T": 4.0, **kw})


def _pair(teacher="wrn_16_2", student="resnet8", seed=0, teacher_train=False, **kw):
    """``(student, teacher, distiller)``; the teacher's BN affine parameters are random, so
    that the margins differ per channel (a fresh BN has weight 1, bias 0 everywhere)."""
    torch.manual_seed(seed)
    s, t = create_model(student, 100), create_model(teacher, 100)
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(-1.5, 1.5)
                m.bias.uniform_(-1.0, 2.0)
    return s, t, build("ofd", s, t, _args(**kw), teacher_train=teacher_train)


def test_margins_are_the_reference_formula_of_each_stage_bn():
    _, teacher, d = _pair()
    bns = teacher.get_bn_before_relu()
    assert len(d.margins()) == len(bns) == 3
    for margin, bn in zip(d.margins(), bns):
        expected = []
        for s, m in zip(bn.weight.tolist(), bn.bias.tolist()):  # clovaai's get_margin_from_BN
            s = abs(s)
            if norm.cdf(-m / s) > 0.001:
                expected.append(-s * math.exp(-(m / s) ** 2 / 2) / math.sqrt(2 * math.pi)
                                / norm.cdf(-m / s) + m)
            else:
                expected.append(-3 * s)
        # float32 margins of size ~1 against float64 scipy: ~1e-7
        assert np.allclose(margin.numpy(), expected, rtol=0, atol=1e-5)


def test_connector_is_a_bias_free_conv_and_bn_initialised_as_the_reference():
    _, _, d = _pair(seed=1)
    conv, bn = d.connectors[2]
    assert conv.bias is None and conv.weight.shape == (128, 64, 1, 1)
    # N(0, 2 / (1 * 1 * 128)): std 0.125 over 8,192 weights, within a few percent
    assert abs(conv.weight.std().item() - 0.125) < 0.01
    assert torch.equal(bn.weight, torch.ones(128)) and torch.equal(bn.bias, torch.zeros(128))
    assert _pair(ofd_connector_kernel=3)[2].connectors[0][0].padding == (1, 1)


def _numpy_loss(d, f_s, f_t, beta):
    total = 0.0
    n = len(f_s)
    for i, (s, t) in enumerate(zip(f_s, f_t)):
        w = d.connectors[i][0].weight.detach().double().numpy()[:, :, 0, 0]
        y = np.einsum("oc,bchw->bohw", w, s)
        y = (y - y.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(
            y.var(axis=(0, 2, 3), keepdims=True) + 1e-5)           # BN in training mode, 1 and 0
        if t.shape[2] != y.shape[2]:                                # teacher twice as large
            b, c, h, w_ = t.shape
            t = t.reshape(b, c, h // 2, 2, w_ // 2, 2).mean(axis=(3, 5))
        m = d.margins()[i].double().numpy().reshape(1, -1, 1, 1)
        target = np.maximum(t, m)
        keep = (y > target) | (target > 0)
        total += ((y - target) ** 2 * keep).sum() / 2 ** (n - 1 - i)
    return beta * total / f_s[0].shape[0]


@pytest.mark.parametrize("teacher,student", [("wrn_16_2", "resnet8"), ("resnet20", "ShuffleV1")])
def test_loss_matches_an_independent_numpy_computation(teacher, student):
    student_model, teacher_model, d = _pair(teacher, student, beta=2.0)
    d.train()
    rng = np.random.default_rng(0)
    s_shapes = student_model.feature_shapes(preact=True)[1:-1]
    t_shapes = teacher_model.feature_shapes(preact=True)[1:-1]
    f_s = [rng.normal(size=(3, *shape)) for shape in s_shapes]
    f_t = [rng.normal(size=(3, *shape)) * 1.5 for shape in t_shapes]
    as_feats = lambda fs: [None] + [torch.tensor(f, dtype=torch.float32) for f in fs] + [None]
    got = d.method_losses(feats_s=as_feats(f_s), logits_s=None, feats_t=as_feats(f_t),
                          logits_t=None, targets=None)["ofd"].item()
    # float32 sums of ~10^5 squares against float64: relative ~1e-6
    assert got == pytest.approx(_numpy_loss(d, f_s, f_t, 2.0), rel=1e-4)


def test_gradients_reach_student_and_connectors_never_teacher():
    student, teacher, d = _pair()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "ofd"}
    losses["ofd"].backward()
    assert_gradients(student, teacher, d.connectors)


def test_extras_are_the_connectors_and_margins_and_round_trip():
    student, _, d = _pair()
    assert_extras_trainable(d, d.connectors)
    extra = sum(p.numel() for p in d.trainable_parameters()) - sum(p.numel() for p in student.parameters())
    assert extra == sum(s * t + 2 * t for s, t in ((16, 32), (32, 64), (64, 128)))
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert {"margin0", "margin2", "connectors.1.0.weight", "connectors.2.1.running_var"} <= set(state)
    _, _, d2 = _pair(seed=5)
    assert not torch.equal(d2.margin0, state["margin0"])
    assert_extras_round_trip(state, d2, shift=d2.connectors.parameters())


def test_teacher_in_eval_mode_unless_asked_as_the_references():
    _, teacher, d = _pair()
    d.train()
    assert not teacher.training
    _, teacher, d = _pair(teacher_train=True)  # --teacher_train (old name --ofd_teacher_train)
    d.train()
    assert teacher.training
    d.eval()
    assert not teacher.training


def test_stages_are_aligned_from_the_last():
    _, _, d = _pair("vgg8", "resnet8")  # 4 teacher stages, 3 student stages: the last 3
    assert [c[0].out_channels for c in d.connectors] == [256, 512, 512]


def test_what_it_cannot_distil_is_a_user_error():
    with pytest.raises(UserError, match="BN before each stage"):
        _pair("ShuffleV2", "resnet8")
    with pytest.raises(UserError, match="odd number"):
        _pair(ofd_connector_kernel=2)


def test_bad_kernel_through_the_script_is_one_line(cifar100_small, tmp_path, capsys, teacher_ckpt):
    err = one_line_user_error(capsys, "ofd", "resnet8", cifar100_small, tmp_path,
                              "--ofd_connector_kernel", "4", teacher=teacher_ckpt("wrn_16_2"))
    assert "--ofd_connector_kernel" in err


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_every_pair_builds_and_takes_a_step(teacher, student):
    torch.manual_seed(0)
    s, t = create_model(student, 100), create_model(teacher, 100)
    d = build("ofd", s, t, _args())
    d.train()
    optimizer = torch.optim.SGD(d.trainable_parameters(), lr=0.05, momentum=0.9)
    before = [c[0].weight.clone() for c in d.connectors]
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    sum(losses.values()).backward()
    optimizer.step()
    assert torch.isfinite(losses["ofd"])
    assert all(not torch.equal(b, c[0].weight) for b, c in zip(before, d.connectors))


def test_one_epoch(cifar100_tiny, tmp_path, teacher_ckpt):
    run, summary = one_epoch("ofd", teacher_ckpt("resnet14x4"), "resnet8x4", cifar100_tiny, tmp_path)
    assert summary["parameters"]["extras"] == sum(c * c + 2 * c for c in (64, 128, 256))
    extras = torch.load(run / "last.pth", weights_only=True)["extras"]
    assert {"margin0", "connectors.0.0.weight"} <= set(extras)


def test_resume_is_exact(cifar100_small, tmp_path, teacher_ckpt):
    ckpt = teacher_ckpt("wrn_16_2")

    def run(folder, *extra):
        return run_student("ofd", "resnet8", cifar100_small, tmp_path / folder, "--deterministic",
                           *extra, teacher=ckpt)
    assert_resume_is_exact(run)

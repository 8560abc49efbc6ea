"""helper/teachers/forward.py: BN folding by hand, exactness on every teacher family (logits and
features), the frozen-teacher contract through a distiller, training mode, real runs, errors."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from helper.teachers.forward import (TOLERANCE, FastTeacher, conv_bn_pairs, fold_conv_bn,
                                    max_relative_error, prepare_teacher, wrap_teacher)
from helper.run.precision import has_cpu_compiler
from helpers import assert_gradients, build, run_student
from models import create_model


def calibrated(name, input_size=None, num_classes=100):
    """An untrained model whose BN statistics are estimated on random images (non-trivial
    running means and variances, as a trained teacher's), in eval mode."""
    torch.manual_seed(0)
    model = create_model(name, num_classes)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, *(input_size or model.input_size)))
    return model.eval()


def test_fold_matches_conv_then_bn_by_hand():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    bn = nn.BatchNorm2d(5).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3)
        bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(2, 3, 9, 9)
    # by hand in float64: the convolution, then (y - mean) / sqrt(var + eps) * g + b per channel
    y = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride=2, padding=1)
    expected = torch.empty_like(y)
    for c in range(5):
        expected[:, c] = ((y[:, c] - bn.running_mean[c].double())
                          / (bn.running_var[c].double() + bn.eps) ** 0.5
                          * bn.weight[c].double() + bn.bias[c].double())
    folded = fold_conv_bn(conv, bn)
    got = folded(x).double()
    # float32 weights and a 27-term sum: a few ulps of values ~5
    assert (got - expected).abs().max().item() < 1e-5
    assert folded.stride == conv.stride and folded.padding == conv.padding
    assert not folded.weight.requires_grad
    assert conv.weight is not folded.weight  # the original conv is untouched


FAMILIES = ["resnet8x4", "resnet32x4", "wrn_16_2", "vgg8", "ShuffleV1", "ShuffleV2",
            "MobileNetV2"]


@pytest.mark.parametrize("name", FAMILIES)
def test_folded_logits_and_features_equal_eager(name):
    model = calibrated(name)
    x = torch.randn(4, *model.input_size)
    fast = FastTeacher(model, channels_last=True, example=torch.randn(2, *model.input_size))
    assert fast.folded_pairs > 0 and fast.logits_fast and fast.feats_fast, fast.describe()
    with torch.no_grad():
        assert max_relative_error(fast(x), model(x)) <= TOLERANCE
        for preact in (False, True):
            got = fast(x, is_feat=True, preact=preact)
            want = model(x, is_feat=True, preact=preact)
            assert max_relative_error(got, want) <= TOLERANCE
            # ordinary tensors in the default layout: feature losses view them
            assert all(t.is_contiguous() and not t.is_inference() for t in got[0])
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.fast.modules()) or name == "wrn_16_2"
    # everything else is the original's
    assert fast.feature_shapes() == model.feature_shapes()
    assert fast.get_classifier() is model.get_classifier()
    if name != "ShuffleV2":  # which has none (as in RepDistiller)
        assert fast.get_bn_before_relu()[0] is model.get_bn_before_relu()[0]


def test_imagenet_resnet50_folds_exactly():
    model = calibrated("resnet50", input_size=(3, 64, 64), num_classes=10)
    fast = FastTeacher(model, channels_last=True, example=torch.randn(2, 3, 64, 64))
    assert fast.folded_pairs == 53 and fast.feats_fast, fast.describe()
    assert max(fast.errors.values()) <= TOLERANCE


def test_wrn_stem_is_not_folded_into_a_feature():
    """WRN's stem conv feeds the first block's BN and is also the first feature: folding it
    would change that feature. The one hooked pass sees the stem returned as a feature and
    leaves that pair out, so the all-pairs check passes with no per-pair fallback."""
    model = calibrated("wrn_16_2")
    x = torch.randn(2, 3, 32, 32)
    feats = [{"is_feat": True, "preact": False}, {"is_feat": True, "preact": True}]
    assert conv_bn_pairs(model, [{}], x)["block1.layer.0.bn1"] == "conv1"  # logits only: exact
    pairs = conv_bn_pairs(model, [{}, *feats], x)
    assert "block1.layer.0.bn1" not in pairs and pairs["block1.layer.0.bn2"] == "block1.layer.0.conv1"
    fast = FastTeacher(model, channels_last=False, example=x)
    assert fast.folded_pairs == len(pairs) and fast.feats_fast
    assert max(fast.errors.values()) <= TOLERANCE
    assert isinstance(fast.fast.block1.layer[0].bn1, nn.BatchNorm2d)


class RawUse(nn.Module):
    """A conv whose BN folds unless its raw output is also ``use``d: returned as a feature
    (``feature``), added as a shortcut (``shortcut``) or normalised by a second BN (``bn2``)."""

    def __init__(self, use):
        super().__init__()
        self.use = use
        self.conv, self.bn, self.bn2 = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            for bn in (self.bn, self.bn2):
                bn.running_mean.fill_(0.5)
                bn.running_var.fill_(4.0)
        self.eval()

    def forward(self, x, is_feat=False, preact=False):
        raw = self.conv(x)
        out = self.bn(raw)
        if self.use == "shortcut":
            out = out + raw
        if self.use == "bn2":
            out = out + self.bn2(raw)
        logits = self.fc(out.mean((2, 3)))
        feature = raw if self.use == "feature" else out
        return ([feature], logits) if is_feat else logits


@pytest.mark.parametrize("use", ["feature", "shortcut", "bn2"])
def test_a_conv_output_used_beside_its_bn_stays_unfolded(use):
    model, x = RawUse(use), torch.randn(2, 3, 8, 8)
    assert conv_bn_pairs(model, [{}, {"is_feat": True, "preact": False}], x) == {}
    fast = FastTeacher(model, channels_last=False, example=x)
    assert fast.folded_pairs == 0 and fast.feats_fast
    with torch.no_grad():
        assert torch.equal(fast(x, is_feat=True)[0][0], model(x, is_feat=True)[0][0])


def test_a_conv_output_read_only_by_its_bn_folds():
    model, x = RawUse("none"), torch.randn(2, 3, 8, 8)
    assert conv_bn_pairs(model, [{}, {"is_feat": True, "preact": False}], x) == {"bn": "conv"}
    fast = FastTeacher(model, channels_last=False, example=x)
    assert fast.folded_pairs == 1 and max(fast.errors.values()) <= TOLERANCE


def test_a_pair_the_pass_missed_is_caught_by_the_check(monkeypatch):
    """The start-up check is the last guard: a pair wrongly reported foldable (here forced)
    fails it, and only the pairs exact on their own are folded."""
    import helper.teachers.forward as tf
    monkeypatch.setattr(tf, "conv_bn_pairs", lambda *a: {"bn": "conv"})
    model, x = RawUse("shortcut"), torch.randn(2, 3, 8, 8)
    fast = FastTeacher(model, channels_last=False, example=x)
    assert fast.folded_pairs == 0 and fast.logits_fast and fast.feats_fast


def test_training_mode_runs_the_original_with_batch_statistics():
    model = calibrated("resnet8")
    fast = FastTeacher(model, channels_last=True, example=torch.randn(2, 3, 32, 32))
    fast.train()
    assert model.training and not fast.fast.training
    x = torch.randn(4, 3, 32, 32)
    got = fast(x)
    model.train()
    with torch.no_grad():
        want = model(x)
    assert torch.equal(got, want)
    fast.eval()
    assert not model.training


def test_distiller_gradients_reach_student_not_teacher():
    """FitNet reads the teacher's features (saved for backward by its MSE): they must be
    ordinary tensors; the teacher gets no gradient."""
    student, teacher = calibrated("resnet8"), calibrated("resnet14")
    fast = wrap_teacher(teacher, "auto", (3, 32, 32), "cpu")
    args = SimpleNamespace(cls=1.0, div=1.0, beta=100.0, kd_T=4.0)
    distiller = build("fitnet", student, fast, args, num_classes=100)
    distiller.train()
    assert not fast.training and not teacher.training
    _, losses = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    sum(losses.values()).backward()
    assert_gradients(student, teacher)
    assert all(p.grad is None for p in fast.parameters())
    assert not any(k.startswith(("teacher", "_teacher")) for k in distiller.state_dict())


def test_eager_mode_is_the_teacher_itself():
    model = calibrated("resnet8")
    assert wrap_teacher(model, "eager", (3, 32, 32), "cpu") is model


def test_prepare_teacher_fits_then_wraps_as_a_run_does():
    """prepare_teacher (train_student.py's teachers, scripts/benchmark.py's): the teacher takes
    the data's input size, or is refused in one line; then it runs as --teacher_forward says."""
    lines = []
    teacher = prepare_teacher(calibrated("resnet8"), (3, 32, 32), "cpu", "auto", log=lines.append)
    assert isinstance(teacher, FastTeacher) and teacher.input_size == (3, 32, 32)
    assert not teacher.training and len(lines) == 1 and lines[0].startswith("teacher forward: ")
    model = calibrated("resnet8")
    assert prepare_teacher(model, (3, 32, 32), "cpu", "eager") is model
    mlp = create_model("mlp_800", 10)
    with pytest.raises(UserError, match=r"^teacher mlp_800 cannot take this data set's 3x32x32"):
        prepare_teacher(mlp, (3, 32, 32), "cpu")


def test_one_epoch_folded_and_eager(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    path = teacher_ckpt("resnet14x4")
    run_student("fitnet", "resnet8x4", cifar100_tiny, tmp_path / "a", "--teacher_forward", "auto",
                teacher=path)  # the default (run_student's is eager)
    assert "BatchNorms folded into their convolutions, channels-last" in capsys.readouterr().out
    run_student("kd", "resnet8x4", cifar100_tiny, tmp_path / "b", "--teacher_forward", "eager",
                teacher=path)
    assert "BatchNorms folded" not in capsys.readouterr().out


def test_compile_twice_is_refused(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    with pytest.raises(SystemExit) as e:
        run_student("kd", "resnet8x4", cifar100_tiny, tmp_path, "--compile", "--teacher_compile",
                    teacher=teacher_ckpt("resnet14x4"))
    assert e.value.code == 2
    assert "--compile already compiles the teacher" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available() and not has_cpu_compiler(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_frozen_teacher_equals_eager_and_trains_eager():
    """--teacher_compile freezes the folded copy (weights as constants): its logits and
    features stay within TOLERANCE of the loaded model, and training mode runs the original."""
    model, x = calibrated("resnet8"), torch.randn(4, 3, 32, 32)
    fast = wrap_teacher(model, "auto", (3, 32, 32), "cpu", compile=True)
    feats = {"is_feat": True, "preact": False}
    for kwargs in ({}, feats):
        assert max_relative_error(fast(x, **kwargs), model(x, **kwargs)) <= TOLERANCE, kwargs
    fast.train()  # batch statistics: the original runs, not the frozen copy
    assert model.training
    with torch.no_grad():
        assert torch.equal(fast(x), model(x))

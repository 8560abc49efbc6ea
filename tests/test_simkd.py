"""SimKD: the loss against a hand computation, test logits through the reused classifier,
the self-contained deployed student, teachers whose classifier cannot be reused, real runs."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import distillers.simkd  # noqa: F401  (registers simkd until distillers/__init__ imports it)
from distillers.simkd import SimKDStudent, simkd_loss
from helper.run.checkpoint import load_teacher
from helper.core.errors import UserError
from helpers import (PAIRS, build, NoClassifierTeacher, assert_extras_round_trip, make_distiller,
                     one_epoch, read_summary, run_student)
from models import create_deployed, create_model


def test_simkd_loss_pools_the_larger_teacher_map_and_matches_hand_computation():
    rng = np.random.default_rng(0)
    proj, ft = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 3, 4, 4))
    total = 0.0
    for b in range(2):
        for c in range(3):
            for i in range(2):
                for j in range(2):
                    target = ft[b, c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].mean()
                    total += (proj[b, c, i, j] - target) ** 2
    got = simkd_loss(torch.tensor(proj), torch.tensor(ft)).item()
    # float64 means of 24 squares (~1-2), here and below: a few ulps, ~1e-16 on any CPU
    assert abs(got - total / 24) < 1e-10
    same = rng.normal(size=(2, 3, 2, 2))
    got = simkd_loss(torch.tensor(proj), torch.tensor(same)).item()
    assert abs(got - ((proj - same) ** 2).mean()) < 1e-10


def _args(**kw):
    base = dict(cls=0.0, div=0.0, beta=1.0, kd_T=4.0, factor=2)
    base.update(kw)
    return SimpleNamespace(**base)


def _simkd(student="resnet8x4", teacher="resnet32x4", **kw):
    s, t, d = make_distiller("simkd", _args(**kw), student, teacher)
    return d, s, t


def test_projector_shape_and_extra_parameters():
    distiller, student, _ = _simkd()
    convs = [m for m in distiller.projector if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs] == [
        (256, 128, (1, 1), 1), (128, 128, (3, 3), 1), (128, 256, (1, 1), 1)]
    assert all(c.bias is None for c in convs)
    extra = (sum(p.numel() for p in distiller.trainable_parameters())
             - sum(p.numel() for p in student.parameters()))
    assert extra == 256 * 128 + 128 * 128 * 9 + 128 * 256 + 2 * (128 + 128 + 256)


def test_train_and_test_logits_go_through_the_teacher_classifier():
    # ShuffleV2 student (4x4 map) and resnet32x4 teacher (8x8): the teacher's map is pooled.
    distiller, student, teacher = _simkd("ShuffleV2", "resnet32x4")
    distiller.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    logits, losses = distiller.forward_train(images, targets)
    assert set(losses) == {"simkd"}
    feats_s, _ = student(images, is_feat=True)
    with torch.no_grad():
        feats_t, _ = teacher(images, is_feat=True)
    proj = distiller.projector(feats_s[-2])
    expected = F.linear(proj.mean((2, 3)), teacher.fc.weight, teacher.fc.bias)
    # The distiller's projection and teacher classifier repeated on the same features; its
    # adaptive pools and these mean / avg_pool2d average the same 4 or 16 values: equal (0
    # seen, AVX-512 and AVX2 kernels). Were a reduction reordered, float32 averages of <= 16
    # values and a 256-term linear layer move the logits (< 1) by ~1e-6, the MSE (~1000, of
    # 16k squares summed pairwise) by ~log2(16k) ulps = 1e-6 relative: under the tolerances
    # with allclose's rtol 1e-5, on any CPU.
    assert torch.allclose(logits, expected, atol=1e-5)
    assert torch.allclose(losses["simkd"], F.mse_loss(proj, F.avg_pool2d(feats_t[-2], 2)), atol=1e-6)
    distiller.zero_grad()
    sum(losses.values()).backward()
    # Only what comes after the last stage (ShuffleV2's final conv2/bn2 and its own classifier)
    # gets no gradient with -c 0 -d 0.
    no_grad = {n.split(".")[0] for n, p in student.named_parameters() if p.grad is None}
    assert no_grad == {"conv2", "bn2", "linear"}
    assert all(p.grad is not None for p in distiller.projector.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    distiller.eval()
    with torch.no_grad():
        test = distiller.forward_test(images)
        feats_s, _ = student(images, is_feat=True)
        # as above: the same computation repeated, equal (0 seen); 1e-5 is slack
        assert torch.allclose(test, teacher.fc(distiller.projector(feats_s[-2]).mean((2, 3))), atol=1e-5)


def test_cls_and_kd_use_the_students_own_logits():
    distiller, student, teacher = _simkd("resnet8", "resnet14", cls=1.0, div=1.0)
    distiller.train()
    _, losses = distiller.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "kd", "simkd"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in student.parameters())


def test_extras_round_trip_and_deployed_model_gives_the_same_logits():
    distiller, student, teacher = _simkd()
    distiller.train()
    for _ in range(2):  # move the BN statistics away from their initial values
        distiller.forward_train(torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,)))
    state = {k: v.clone() for k, v in distiller.extra_state_dict().items()}
    assert set(state) == {f"projector.{k}" for k in distiller.projector.state_dict()}
    other, _, _ = _simkd()
    assert_extras_round_trip(state, other)

    deploy = distiller.deploy_state()
    assert deploy["builder"] == "simkd" and deploy["kwargs"]["student"] == "resnet8x4"
    model = create_deployed(deploy["builder"], **deploy["kwargs"])
    assert isinstance(model, SimKDStudent)
    model.load_state_dict(deploy["state_dict"], strict=True)
    model.eval()
    distiller.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), distiller.forward_test(x))
        feats, logits = model(x, is_feat=True)
    assert torch.equal(logits, model(x)) and model.get_classifier() is model.classifier
    assert [tuple(f.shape[1:]) for f in feats] == model.feature_shapes() == [
        (32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8), (256,)]
    assert torch.equal(feats[-1], feats[-2].mean((2, 3)))
    # The deployed model can itself be a SimKD teacher.
    build("simkd", create_model("resnet8", 100), model, _args())


def test_teacher_whose_classifier_cannot_be_reused_is_a_user_error():
    student = create_model("resnet8", 100)
    with pytest.raises(UserError, match="classifier"):
        build("simkd", student, NoClassifierTeacher(), _args())
    # ShuffleV2's last stage has 464 channels, its classifier takes the 1024-dim pooled feature.
    with pytest.raises(UserError, match="1024"):
        build("simkd", student, create_model("ShuffleV2", 100), _args())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_on_cifar100_files(pair_data, tmp_path, teacher, student, teacher_ckpt):
    run, _ = one_epoch("simkd", teacher_ckpt(teacher), student, pair_data, tmp_path / "save")
    assert "_simkd_r~0_a~0_b~1_" in run.name.replace(":", "~")


def test_trained_student_loads_as_a_teacher_with_the_same_logits(cifar100_small, tmp_path,
                                                                  teacher_ckpt):
    teacher_path = teacher_ckpt("wrn_16_2")
    run = run_student("simkd", "resnet8", cifar100_small, tmp_path / "simkd", teacher=teacher_path)
    # best.pth exists once the test accuracy beat 0; last.pth has the same entries.
    path = run / "best.pth" if (run / "best.pth").exists() else run / "last.pth"
    deployed, checkpoint = load_teacher(path, 100)
    assert isinstance(deployed, SimKDStudent) and deployed.model_name == "resnet8"

    teacher, _ = load_teacher(teacher_path, 100)
    distiller = build("simkd", create_model("resnet8", 100), teacher, _args())
    distiller.student.load_state_dict(checkpoint["model"])
    distiller.load_extra_state_dict(checkpoint["extras"])
    distiller.eval()
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(deployed(x), distiller.forward_test(x))

    kd_run = run_student("kd", "resnet8", cifar100_small, tmp_path / "kd", teacher=path)
    summary = read_summary(kd_run)
    assert summary["teacher"] == "resnet8" and summary["epochs_done"] == 1

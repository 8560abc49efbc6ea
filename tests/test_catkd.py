"""CAT-KD: the CAMs and loss against hand computations, the map each model family pools,
the bias-free student classifier, gradients, no extras, user errors, one epoch."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distillers.catkd import cat_loss, class_activation_maps
from helper.core.errors import UserError
from helpers import (PAIRS, assert_gradients, build, make_distiller, one_epoch,
                     one_line_user_error)
from models import create_model


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 15.0, "kd_T": 4.0, **kw})


def _cams_by_hand(feature_map, weight, size):
    """CAM at every position (W f(x, y), no bias), then the mean of each size x size block."""
    b, c, h, w = feature_map.shape
    k = weight.shape[0]
    cam = np.zeros((b, k, h, w))
    for n in range(b):
        for y in range(h):
            for x in range(w):
                cam[n, :, y, x] = weight @ feature_map[n, :, y, x]
    bh, bw = h // size, w // size
    return cam.reshape(b, k, size, bh, size, bw).mean(axis=(3, 5))


@pytest.mark.parametrize("normalize", [False, True])
def test_cams_and_loss_match_hand_computation(normalize):
    rng = np.random.default_rng(0)
    map_s, map_t = rng.normal(size=(2, 3, 4, 4)), rng.normal(size=(2, 6, 8, 8))
    w_s, w_t = rng.normal(size=(5, 3)), rng.normal(size=(5, 6))
    cam_s, cam_t = _cams_by_hand(map_s, w_s, 2), _cams_by_hand(map_t, w_t, 2)
    got_s = class_activation_maps(torch.tensor(map_s), torch.tensor(w_s), 2)
    assert np.allclose(got_s.numpy(), cam_s, rtol=0, atol=1e-12)  # float64: a few ulps
    if normalize:
        cam_s = cam_s / np.sqrt((cam_s ** 2).sum(axis=(2, 3), keepdims=True))
        cam_t = cam_t / np.sqrt((cam_t ** 2).sum(axis=(2, 3), keepdims=True))
    expected = ((cam_s - cam_t) ** 2).mean()
    got = cat_loss(got_s, class_activation_maps(torch.tensor(map_t), torch.tensor(w_t), 2), normalize)
    assert abs(got.item() - expected) < 1e-10  # float64 mean of 40 squares


def _pooled_map_by_hand(model, feats, preacts):
    """The map each family's classifier pools, from its documented forward."""
    if type(model).__name__ == "WideResNet":
        return F.relu(preacts[-2])                     # relu(bn1(block3))
    if type(model).__name__ == "ShuffleNetV2":
        return F.relu(model.bn2(model.conv2(feats[-2])))
    if type(model).__name__ == "MobileNetV2":
        return model.conv2(feats[-2])
    return feats[-2]                                    # ResNet, VGG, ShuffleNetV1


@pytest.mark.parametrize("student", ["resnet8", "wrn_16_2", "vgg8", "ShuffleV1", "ShuffleV2",
                                     "mobile_half"])
def test_loss_uses_the_map_each_family_pools(student):
    s, t, d = make_distiller("catkd", _args(beta=2.0, catkd_resolution=1), student, "resnet20")
    d.eval()  # BN on running statistics: the two forward passes below agree
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        feats_t, logits_t = t(x, is_feat=True)
        feats_s, logits_s = s(x, is_feat=True)
        loss = d.method_losses(feats_s=None, logits_s=logits_s, feats_t=None, logits_t=logits_t,
                               targets=None)["catkd"]
        preacts = s(x, is_feat=True, preact=True)[0]
        map_s = _pooled_map_by_hand(s, feats_s, preacts)
    # resolution 1: each CAM is its class's logit without the bias, for both models
    cam_s = map_s.mean((2, 3)) @ s.get_classifier().weight.t()
    cam_t = logits_t - t.get_classifier().bias
    assert torch.allclose(cam_s, logits_s, atol=1e-5)  # the student's bias is held at 0
    assert loss.item() == pytest.approx(2.0 * F.mse_loss(cam_s, cam_t).item(), rel=1e-5)


def test_student_bias_is_zero_and_frozen_unless_asked():
    student, _, d = make_distiller("catkd", _args(), "resnet8", "resnet20")
    bias = student.get_classifier().bias
    assert not bias.requires_grad and bias.abs().sum() == 0
    assert all(p is not bias for p in d.trainable_parameters())
    assert len(d.trainable_parameters()) == len(list(student.parameters())) - 1
    student, _, d = make_distiller("catkd", _args(catkd_fc_bias=True), "resnet8", "resnet20")
    assert student.get_classifier().bias.requires_grad
    assert len(d.trainable_parameters()) == len(list(student.parameters()))


def test_gradients_reach_the_student_never_the_teacher_and_no_extras():
    student, teacher, d = make_distiller("catkd", _args(), "resnet8", "resnet20")
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "catkd"}
    losses["catkd"].backward()
    assert_gradients(student, teacher)
    assert student.get_classifier().weight.grad.abs().sum() > 0
    assert student.get_classifier().bias.grad is None
    assert d.extra_state_dict() == {}


def test_models_it_cannot_read_are_user_errors():
    with pytest.raises(UserError, match="global pooling"):
        build("catkd", create_model("mlp_800", 10), create_model("resnet8", 10), _args())
    with pytest.raises(UserError, match="class by class"):
        build("catkd", create_model("resnet8", 10), create_model("resnet20", 100), _args())
    with pytest.raises(UserError, match="catkd_resolution must be 1 or more"):
        make_distiller("catkd", _args(catkd_resolution=0), "resnet8", "resnet20")


def test_bad_resolution_through_the_script_is_one_line(cifar100_small, tmp_path, capsys,
                                                       teacher_ckpt):
    err = one_line_user_error(capsys, "catkd", "resnet8", cifar100_small, tmp_path,
                              "--catkd_resolution", "0", teacher=teacher_ckpt("wrn_16_2"))
    assert "--catkd_resolution" in err


@pytest.mark.parametrize("teacher,student", [PAIRS[0], PAIRS[3]])
def test_one_epoch(pair_data, tmp_path, teacher, student, teacher_ckpt):
    run, _ = one_epoch("catkd", teacher_ckpt(teacher), student, pair_data, tmp_path,
                       "--catkd_normalize", "--catkd_resolution", "4")
    weights = torch.load(run / "last.pth", weights_only=True)["model"]
    bias = "linear.bias" if student == "ShuffleV2" else "fc.bias"
    assert torch.equal(weights[bias], torch.zeros(100))


def test_the_folded_teacher_gives_the_eager_teachers_cams():
    """``--teacher_forward`` runs a folded copy of the teacher: its map is seen too."""
    from helper.teachers.forward import wrap_teacher
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    losses = []
    for mode in ("eager", "fold_cl"):
        torch.manual_seed(1)
        s, t = create_model("resnet8", 100), create_model("resnet20", 100)
        t = wrap_teacher(t.eval(), mode, (3, 32, 32), "cpu")
        d = build("catkd", s, t, _args())
        d.eval()
        with torch.no_grad():
            logits_t, logits_s = t(x), s(x)
        losses.append(d.method_losses(feats_s=None, logits_s=logits_s, feats_t=None,
                                      logits_t=logits_t, targets=None)["catkd"].item())
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)  # folding: ~1e-6 relative
    assert not type(d).accepts_ensemble(d.options)

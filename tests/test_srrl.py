"""SRRL: the two MSE terms against a hand computation, the frozen reused classifier, extras,
teachers whose classifier cannot be reused, and one real epoch per pair."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

import distillers.srrl  # noqa: F401  (registers srrl until distillers/__init__ imports it)
from distillers.srrl import srrl_losses
from helper.core.errors import UserError
from helpers import PAIRS, build, NoClassifierTeacher, assert_gradients, make_distiller, one_epoch
from models import create_model


def test_srrl_losses_match_hand_computation():
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    w, b = rng.normal(size=(5, 4)), rng.normal(size=5)
    lt = rng.normal(size=(3, 5))
    fm = sum((fs[i, j] - ft[i, j]) ** 2 for i in range(3) for j in range(4)) / 12
    sr = sum((sum(w[k, j] * fs[i, j] for j in range(4)) + b[k] - lt[i, k]) ** 2
             for i in range(3) for k in range(5)) / 15
    cls = nn.Linear(4, 5).double()
    with torch.no_grad():
        cls.weight.copy_(torch.tensor(w))
        cls.bias.copy_(torch.tensor(b))
    t = torch.tensor
    got_fm, got_sr = srrl_losses(t(fs), t(ft), cls(t(fs)), t(lt))
    # float64 MSEs of 12 and 15 terms (~2-10): a few ulps, ~1e-15 on any CPU
    assert abs(got_fm.item() - fm) < 1e-10 and abs(got_sr.item() - sr) < 1e-10


def _args(**kw):
    base = dict(cls=1.0, div=1.0, beta=1.0, kd_T=4.0)
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.mark.parametrize("feat", ["pooled", "map"])
def test_terms_gradients_and_frozen_classifier(feat):
    student, teacher, distiller = make_distiller("srrl", _args(beta=2.0, srrl_feat=feat),
                                                 "resnet8", "wrn_16_2")
    distiller.train()
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = distiller.forward_train(images, targets)
    assert set(losses) == {"cls", "kd", "srrl_feat", "srrl_logit"}
    # Recompute the two terms independently from the models' outputs.
    with torch.no_grad():
        feats_t, logits_t = teacher(images, is_feat=True)
        feats_s, _ = student(images, is_feat=True)
        x = feats_s[-2] if feat == "map" else feats_s[-1][:, :, None, None]
        f = distiller.connector(x).mean((2, 3))
        w, b = teacher.fc.weight, teacher.fc.bias
        # the distiller's connector and classifier repeated on the same features, its MSE as
        # pow + mean: equal (0 seen, AVX-512 and AVX2 kernels); were the reductions ordered
        # otherwise, float32 means of <= 512 squares (losses ~0.2-1.2), summed pairwise, move
        # by ~log2(512) ulps = 5e-7 relative, under 1e-6 / 1e-5 + allclose's rtol 1e-5
        assert torch.allclose(losses["srrl_feat"], 2.0 * ((f - feats_t[-1]) ** 2).mean(), atol=1e-6)
        assert torch.allclose(losses["srrl_logit"], 2.0 * ((f @ w.t() + b - logits_t) ** 2).mean(), atol=1e-5)
    distiller.zero_grad()
    sum(losses.values()).backward()
    assert_gradients(student, teacher, distiller.connector, every_student_param=True,
                     extras_nonzero=False)


def test_extras_are_the_connector_only_and_round_trip():
    student, _, distiller = make_distiller("srrl", _args())
    extra = (sum(p.numel() for p in distiller.trainable_parameters())
             - sum(p.numel() for p in student.parameters()))
    assert extra == sum(p.numel() for p in distiller.connector.parameters()) == 256 * 256 + 2 * 256
    state = distiller.extra_state_dict()
    assert set(state) == {f"connector.{k}" for k in distiller.connector.state_dict()}
    assert not any("fc" in k or "teacher" in k for k in state)  # the teacher's classifier is not saved
    saved = {k: v.clone() + 1 if v.is_floating_point() else v.clone() for k, v in state.items()}
    distiller.load_extra_state_dict(saved)
    assert all(torch.equal(v, saved[k]) for k, v in distiller.extra_state_dict().items())


def test_teacher_without_reusable_classifier_is_a_user_error():
    student = create_model("resnet8", 100)
    with pytest.raises(UserError, match="classifier"):
        build("srrl", student, NoClassifierTeacher(), _args())
    teacher = create_model("resnet14", 100)
    teacher.get_classifier = lambda: nn.Sequential(teacher.fc)
    with pytest.raises(UserError, match="nn.Linear"):
        build("srrl", student, teacher, _args())


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_on_cifar100_files(pair_data, tmp_path, teacher, student, teacher_ckpt):
    run, _ = one_epoch("srrl", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert "_srrl_" in run.name
    last = torch.load(run / "last.pth", weights_only=True)
    assert all(k.startswith("connector.") for k in last["extras"])

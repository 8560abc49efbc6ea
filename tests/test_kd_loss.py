"""KD's loss against a value computed by hand, and the base distiller's contract."""
from types import SimpleNamespace

import torch

from distillers import kd_loss
from helper.run.loop import step_lr
from helpers import build, assert_gradients, kd_by_hand, make_distiller
from models import create_model


def test_kd_loss_matches_hand_computation():
    s = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    t = [[2.0, 1.0, 0.0], [1.0, 1.0, 1.5]]
    T = 4.0
    expected = kd_by_hand(s, t, T)
    # float64, so that only the formula is tested: a few ulps of the log-probabilities (~1)
    # times T^2 = 16, ~1e-14 on any CPU (float32's rounding alone came to 7e-7 here)
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = kd_loss(f64(s), f64(t), T).item()
    assert abs(got - expected) < 1e-12


def test_kd_loss_is_zero_for_equal_logits_and_positive_otherwise():
    x = torch.randn(5, 10)
    # identical inputs take identical kernels, so the log-probabilities match and each KL term
    # is exactly 0 on any CPU (the bound is slack)
    assert kd_loss(x, x.clone(), 4.0).abs().item() < 1e-6
    assert kd_loss(x, torch.randn(5, 10), 4.0).item() > 0


def _args(**kw):
    base = dict(cls=1.0, div=1.0, beta=0.0, kd_T=4.0)
    base.update(kw)
    return SimpleNamespace(**base)


def test_kd_distiller_terms_gradients_and_frozen_teacher():
    student, teacher, distiller = make_distiller("kd", _args(cls=0.5, div=2.0), "resnet8",
                                                 "resnet14", num_classes=10)
    distiller.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = distiller.forward_train(images, targets)
    assert set(losses) == {"cls", "kd"}
    with torch.no_grad():
        logits_t = teacher(images)
    expected_cls = 0.5 * torch.nn.functional.cross_entropy(logits, targets)
    # the distiller's losses recomputed with the same kernels in the same order: equal on any
    # CPU (0 seen); allclose's float32 defaults are only slack
    assert torch.allclose(losses["cls"], expected_cls)
    assert torch.allclose(losses["kd"], 2.0 * kd_loss(logits, logits_t, 4.0))
    sum(losses.values()).backward()
    assert_gradients(student, teacher, every_student_param=True)
    # The teacher is not part of the trainable or saved state.
    assert len(distiller.trainable_parameters()) == len(list(student.parameters()))
    assert not any(k.startswith("teacher") for k in distiller.state_dict())


def test_vanilla_uses_cross_entropy_only():
    student = create_model("resnet8", 10)
    distiller = build("vanilla", student, None, _args())
    distiller.train()
    _, losses = distiller.forward_train(torch.randn(2, 3, 32, 32), torch.tensor([1, 2]))
    assert set(losses) == {"cls"}


def test_step_lr_follows_simkd_schedule():
    base, steps = 0.05, [150, 180, 210]
    assert step_lr(1, base, steps, 0.1) == base
    assert step_lr(150, base, steps, 0.1) == base
    # Python float products of 0.05 and 0.1s: a few ulps (~1e-18)
    assert abs(step_lr(151, base, steps, 0.1) - 0.005) < 1e-12
    assert abs(step_lr(240, base, steps, 0.1) - 0.00005) < 1e-12

"""CTKD (--ctkd) with KD: the lambda schedule and the reversed gradient against the
reference's formulas, the KD term at the learned temperature, the temperature as an extra
(trained, saved, restored exactly by --resume), one real epoch on four pairs."""
import math
from types import SimpleNamespace

import pytest
import torch

from distillers import kd_loss
from distillers.ctkd import CurriculumTemperature, cosine_lambda
from helpers import (PAIRS, build, assert_extras_round_trip, assert_gradients, assert_resume_is_exact,
                     kd_by_hand, make_distiller, one_epoch, run_student)
from models import create_model


def _their_decay_value(i, decay_max=0.0, decay_min=-1.0, loops=10):
    """CTKD's CosineDecay.get_value: the factor their GRL multiplies the gradient by."""
    i = min(max(i, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (decay_max - decay_min) + decay_min


@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 9, 10, 11, 240])
def test_lambda_is_minus_their_decay_value(epoch):
    # both sides float64 (Python's cos), values in [0, 1]: a few ulps, ~1e-16 on any CPU
    assert cosine_lambda(epoch, 10, 0.0, 1.0) == pytest.approx(-_their_decay_value(epoch), abs=1e-12)


def test_temperature_starts_at_their_value_and_its_gradient_is_reversed():
    module = CurriculumTemperature()
    sig = 1 / (1 + math.exp(-1.0))
    T = module(epoch=5)
    # float32 sigmoid, * 20, + 1: a few ulps (6e-8 relative each; 2e-8 seen); 1e-6 is ~16 ulps
    assert T.item() == pytest.approx(1 + 20 * sig, rel=1e-6)
    T.backward()
    lam = (1 - math.cos(math.pi * 5 / 10)) / 2
    # float32 sigmoid backward y (1 - y) (y = 0.73: no cancellation) times lambda and 20: a few
    # ulps (2e-8 seen), under 1e-5 on any CPU
    assert module.param.grad.item() == pytest.approx(-lam * 20 * sig * (1 - sig), rel=1e-5)
    module.param.grad = None
    module(epoch=0).backward()  # lambda 0 at epoch 0: no push at all
    assert module.param.grad.item() == 0


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.1, "div": 0.9, "beta": 0.0, "kd_T": 4.0, "ctkd": True, **kw})


def _kd(**kw):
    return make_distiller("kd", _args(**kw), "resnet8", "resnet14", num_classes=10)


def test_kd_term_uses_the_learned_temperature_and_trains_it_adversarially():
    student, teacher, d = _kd()
    d.train()
    d.on_epoch_start(3)
    images, targets = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    logits, losses = d.forward_train(images, targets)
    assert set(losses) == {"cls", "kd"}
    T = 1 + 20 / (1 + math.exp(-1.0))
    with torch.no_grad():
        logits_t = teacher(images)
    expected = 0.9 * kd_by_hand(logits.detach().tolist(), logits_t.tolist(), T)
    # float32 KL between two near-uniform distributions (T ~ 15.6): each log-probability (~-2.3)
    # rounds by ~2.4e-7 while the KL is only ~1.2e-3 (before T^2), so a few ulps per term are up
    # to ~4e-4 relative; 1e-3 allowed (6e-5 seen with AVX-512 and with AVX2 kernels)
    assert losses["kd"].item() == pytest.approx(expected, rel=1e-3)
    losses["kd"].backward()
    param = d.temperature.param
    assert_gradients(student, teacher, every_student_param=True)
    # one SGD step on the temperature alone raises the KD loss (the reversed gradient)
    with torch.no_grad():
        param -= 100.0 * param.grad
        T_new = d.temperature(3)
        assert kd_loss(logits, logits_t, T_new) > kd_loss(logits, logits_t, T)


def test_temperature_is_an_extra_and_round_trips():
    student, _, d = _kd()
    params = d.trainable_parameters()
    assert len(params) == len(list(student.parameters())) + 1
    assert any(p is d.temperature.param for p in params)
    with torch.no_grad():
        d.temperature.param.fill_(0.37)
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert list(state) == ["temperature.param"]
    _, _, other = _kd()
    assert not torch.equal(other.temperature.param, state["temperature.param"])
    assert_extras_round_trip(state, other)


def test_resume_restores_the_temperature_exactly(cifar100_small, tmp_path, teacher_ckpt):
    def run(folder, *extra):
        return run_student("kd", "resnet8", cifar100_small, tmp_path / folder, "--ctkd",
                           "--deterministic", "--ctkd_loops", "2", *extra,
                           teacher=teacher_ckpt("resnet14"))
    a, b = assert_resume_is_exact(run)
    assert a["extras"]["temperature.param"] != 1.0  # it was trained
    assert torch.equal(a["extras"]["temperature.param"], b["extras"]["temperature.param"])


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    run, summary = one_epoch("kd", teacher_ckpt(teacher), student, pair_data, tmp_path,
                             "--ctkd")
    assert summary["parameters"]["extras"] == 1
    last = torch.load(run / "last.pth", weights_only=True)
    assert torch.isfinite(last["extras"]["temperature.param"])


def test_ctkd_without_a_kd_term_is_refused():
    from helper.core.errors import UserError
    args = SimpleNamespace(cls=1.0, div=0.0, beta=1000.0, kd_T=4.0, ctkd=True)
    with pytest.raises(UserError, match="--ctkd learns the KD temperature"):
        build("at", create_model("resnet8", 10), create_model("resnet14", 10), args)


def test_ctkd_with_vanilla_is_refused_even_with_a_div_weight():
    from helper.core.errors import UserError
    args = SimpleNamespace(cls=1.0, div=1.0, beta=0.0, kd_T=4.0, ctkd=True)
    with pytest.raises(UserError, match="--distill vanilla has no KD term"):
        build("vanilla", create_model("resnet8", 10), None, args)

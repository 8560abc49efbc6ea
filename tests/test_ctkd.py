"""CTKD (--ctkd) with KD: the lambda schedule and the reversed gradient against the
reference's formulas, the KD term at the learned temperature, the temperature as an extra
(trained, saved, restored exactly by --resume), one real epoch on four pairs."""
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import train_student
from distillers import get_distiller, kd_loss
from distillers.ctkd import CurriculumTemperature, cosine_lambda
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]


def _their_decay_value(i, decay_max=0.0, decay_min=-1.0, loops=10):
    """CTKD's CosineDecay.get_value: the factor their GRL multiplies the gradient by."""
    i = min(max(i, 0), loops)
    return (math.cos(i * math.pi / loops) + 1.0) * 0.5 * (decay_max - decay_min) + decay_min


@pytest.mark.parametrize("epoch", [0, 1, 2, 5, 9, 10, 11, 240])
def test_lambda_is_minus_their_decay_value(epoch):
    assert cosine_lambda(epoch, 10, 0.0, 1.0) == pytest.approx(-_their_decay_value(epoch), abs=1e-12)


def test_temperature_starts_at_their_value_and_its_gradient_is_reversed():
    module = CurriculumTemperature()
    sig = 1 / (1 + math.exp(-1.0))
    T = module(epoch=5)
    assert T.item() == pytest.approx(1 + 20 * sig, rel=1e-6)
    T.backward()
    lam = (1 - math.cos(math.pi * 5 / 10)) / 2
    assert module.param.grad.item() == pytest.approx(-lam * 20 * sig * (1 - sig), rel=1e-5)
    module.param.grad = None
    module(epoch=0).backward()  # lambda 0 at epoch 0: no push at all
    assert module.param.grad.item() == 0


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.1, "div": 0.9, "beta": 0.0, "kd_T": 4.0, "ctkd": True, **kw})


def _kd(**kw):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    return student, teacher, get_distiller("kd")(student, teacher, _args(**kw))


def _kl_by_hand(s, t, T):
    total = 0.0
    for rs, rt in zip(s, t):
        es, et = [math.exp(v / T) for v in rs], [math.exp(v / T) for v in rt]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        total += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    return total / len(s) * T * T


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
    expected = 0.9 * _kl_by_hand(logits.detach().tolist(), logits_t.tolist(), T)
    # float32 KL between two near-uniform distributions (T ~ 15.6): ~1e-4 relative rounding
    assert losses["kd"].item() == pytest.approx(expected, rel=1e-3)
    losses["kd"].backward()
    param = d.temperature.param
    assert all(p.grad is not None for p in student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
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
    other.load_extra_state_dict(state)
    assert torch.equal(other.temperature.param, state["temperature.param"])


def _teacher(tmp_path, name):
    path = tmp_path / f"{name}.pth"
    torch.save({"model": create_model(name, 100).state_dict(), "model_name": name}, path)
    return path


def _run(data, save, teacher, student, *extra):
    train_student.main(["--distill", "kd", "--ctkd", "--model_s", student, "--path_t", str(teacher),
                        "--dataset", "cifar100", "--data_folder", str(data), "--save_folder", str(save),
                        "--epochs", "1", "--batch_size", "64", "--print_freq", "1000", *extra])
    run = next((save / "students").iterdir())
    return json.loads((run / "summary.json").read_text()), torch.load(run / "last.pth", weights_only=True)


def test_resume_restores_the_temperature_exactly(cifar100_small, tmp_path):
    teacher = _teacher(tmp_path, "resnet14")
    flags = ["--deterministic", "--ctkd_loops", "2"]
    _, a = _run(cifar100_small, tmp_path / "a", teacher, "resnet8", *flags, "--epochs", "2")
    _run(cifar100_small, tmp_path / "b", teacher, "resnet8", *flags, "--epochs", "1")
    _, b = _run(cifar100_small, tmp_path / "b", teacher, "resnet8", *flags, "--epochs", "2", "--resume")
    assert a["epoch"] == b["epoch"] == 2
    assert a["extras"]["temperature.param"] != 1.0  # it was trained
    assert torch.equal(a["extras"]["temperature.param"], b["extras"]["temperature.param"])
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch(teacher, student, cifar100_small, tmp_path):
    summary, last = _run(cifar100_small, tmp_path, _teacher(tmp_path, teacher), student)
    assert summary["epochs_done"] == 1 and np.isfinite(summary["last_acc"])
    assert summary["parameters"]["extras"] == 1
    assert torch.isfinite(last["extras"]["temperature.param"])


def test_ctkd_without_a_kd_term_is_refused():
    from helper.errors import UserError
    args = SimpleNamespace(cls=1.0, div=0.0, beta=1000.0, kd_T=4.0, ctkd=True)
    with pytest.raises(UserError, match="--ctkd learns the KD temperature"):
        get_distiller("at")(create_model("resnet8", 10), create_model("resnet14", 10), args)

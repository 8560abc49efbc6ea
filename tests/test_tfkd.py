"""Teacher-free KD: both losses against hand computations, the teacher decided by the mode,
gradients, no extras, one epoch of each mode."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distillers import get_distiller
from distillers.tfkd import tfkd_self_loss, tfkd_virtual_loss, virtual_teacher
from helper.core.errors import UserError
from helpers import PAIRS, build, assert_gradients, assert_no_extras, one_epoch
from models import create_model


def _softmax(v, T=1.0):
    e = [math.exp(x / T) for x in v]
    return [x / sum(e) for x in e]


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_self_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    z_s, z_t, T = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), 4.0
    per_sample = [_kl(_softmax(t, T), _softmax(s, T)) * T * T for s, t in zip(z_s, z_t)]
    s, t = torch.tensor(z_s), torch.tensor(z_t)
    # the code's nn.KLDivLoss() averages over batch x classes; float64 on values ~1: a few ulps
    assert abs(tfkd_self_loss(s, t, T).item() - sum(per_sample) / 15) < 1e-12
    assert abs(tfkd_self_loss(s, t, T, "batchmean").item() - sum(per_sample) / 3) < 1e-12


def test_virtual_teacher_and_loss_match_hand_computation():
    rng = np.random.default_rng(1)
    z_s, labels, a, T = rng.normal(size=(3, 4)), [2, 0, 3], 0.9, 2.0
    targets = []
    for y in labels:
        p = [a if k == y else (1 - a) / 3 for k in range(4)]
        targets.append(_softmax(p, T))  # the code softens the probabilities themselves
    got = virtual_teacher(torch.tensor(labels), 4, a, T, torch.float64).numpy()
    assert np.allclose(got, targets, atol=1e-14)  # float64 probabilities <= 1: a few ulps
    per_sample = [_kl(q, _softmax(s)) for q, s in zip(targets, z_s)]  # student at T = 1, no T^2
    loss = tfkd_virtual_loss(torch.tensor(z_s), torch.tensor(labels), a, T)
    assert abs(loss.item() - sum(per_sample) / 12) < 1e-12


def test_virtual_teacher_is_nearly_uniform_at_the_default_temperature():
    p = virtual_teacher(torch.tensor([7]), 100, 0.99, 40.0)[0]
    # the published figures are given to 4 digits (1.025% and 1%)
    assert abs(p[7].item() - 0.01025) < 1e-4 and abs(p[0].item() - 0.01) < 1e-4


def _args(**kw):
    return SimpleNamespace(**{"cls": 0.05, "div": 0.0, "beta": 0.95, "kd_T": 4.0, **kw})


def test_mode_decides_whether_a_teacher_is_needed():
    cls = get_distiller("tfkd")
    assert cls.requires_teacher(cls.Options()) and cls.requires_teacher(cls.Options(tfkd_mode="self"))
    virtual = cls.Options(tfkd_mode="virtual")
    assert not cls.requires_teacher(virtual)
    d = cls(create_model("resnet8x4", 100), None, virtual)
    assert d.teacher is None and d.T == 40.0
    with pytest.raises(UserError, match="needs a teacher"):
        cls(create_model("resnet8x4", 100), None, cls.Options())
    with pytest.raises(UserError, match="tfkd_correct_prob"):
        build("tfkd", create_model("resnet8x4", 100), None,
              _args(tfkd_mode="virtual", tfkd_correct_prob=1.0))


def test_self_mode_weights_gradients_and_no_extras():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet8x4", 100)
    d = build("tfkd", student, teacher, _args(tfkd_multiplier=2.0))
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "tfkd"}
    with torch.no_grad():
        expected = 0.95 * 2.0 * tfkd_self_loss(student(x), teacher(x), 20.0)
    assert torch.allclose(losses["tfkd"], expected)  # the same float32 ops recomputed
    losses["tfkd"].backward()
    assert_gradients(student, teacher)
    assert_no_extras(d, student)


def test_virtual_mode_gradients():
    torch.manual_seed(0)
    student = create_model("resnet8x4", 100)
    d = build("tfkd", student, create_model("resnet8x4", 100), _args(tfkd_mode="virtual"))
    assert d.teacher is None  # a teacher handed in is not used
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "tfkd"}
    losses["tfkd"].backward()
    assert student.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_self_mode_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    _, summary = one_epoch("tfkd", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["teacher"] == teacher


def test_virtual_mode_one_epoch_without_a_teacher(cifar100_small, tmp_path):
    _, summary = one_epoch("tfkd", None, "resnet8x4", cifar100_small, tmp_path,
                           "--tfkd_mode", "virtual")
    assert summary["teacher"] == "none" and summary["parameters"]["teacher"] == 0


def test_documented_reference_recipe_parses_to_the_reference_values():
    """The CIFAR-100 recipe command in TfKD's docstring: lr 0.1 for batch 128, 200 epochs, x0.2
    after 60/120/160, weight decay 5e-4, alpha 0.95, T 20 (mobilenet_self_teacher/params.json)."""
    import shlex
    from distillers.tfkd import TfKD
    from helper.run.options import parse_student_args
    doc = TfKD.__doc__
    start = doc.index("python train_student.py")
    command = doc[start:doc.index("\n\n", start)]
    argv = shlex.split(command)[2:]
    config = parse_student_args(argv)
    a, m = config.args, config.method
    assert (config.learning_rate, a.batch_size, a.epochs, a.lr_decay_epochs, a.lr_decay_rate,
            a.weight_decay) == (0.1, 128, 200, [60, 120, 160], 0.2, 5e-4)
    assert (m.weights.cls, m.weights.div, m.weights.beta) == (0.05, 0.0, 0.95)
    assert m.options.temperature == 20.0 and config.model == "MobileNetV2_1_0"

"""AB: the margin loss against hand computations, the init stage's gradients and modes,
extras, and one epoch of each stage through train_student.main."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import distillers.ab  # noqa: F401  (registers ab)
import train_student
from distillers import Stage, get_distiller
from distillers.ab import ABLoss, ab_margin_loss
from models import create_model

PAIRS = [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("vgg13", "vgg8"),
         ("resnet32x4", "ShuffleV2")]
INIT, MAIN = Stage("init", 1, lr_decay_epochs=(), selects_best=False), Stage("main", 1)


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, "epochs": 1, **kw})


def _hand_margin(s, t, m):
    total = 0.0
    for a, b in zip(s.ravel(), t.ravel()):
        if b <= 0 and a > -m:
            total += (a + m) ** 2
        elif b > 0 and a <= m:
            total += (a - m) ** 2
    return total


def test_margin_loss_and_stage_weights_match_hand_computation():
    rng = np.random.default_rng(0)
    g_s = [rng.normal(size=(2, 3, 2, 2)) * 2 for _ in range(3)]
    g_t = [rng.normal(size=(2, 3, 2, 2)) for _ in range(3)]
    for m in (1.0, 0.5):
        got = ab_margin_loss(torch.tensor(g_s[0]), torch.tensor(g_t[0]), m).item()
        assert abs(got - _hand_margin(g_s[0], g_t[0], m)) < 1e-9
    # RepDistiller: weights 1/4, 1/2, 1 for three stages, / batch, * 3 / 1000
    expected = sum(w * _hand_margin(s, t, 1.0) / 2 * 3 / 1000 for w, s, t in zip((0.25, 0.5, 1.0), g_s, g_t))
    got = ABLoss(3)([torch.tensor(s) for s in g_s], [torch.tensor(t) for t in g_t]).item()
    assert abs(got - expected) < 1e-9


def _pair(student="resnet8", teacher="resnet8x4", **kw):
    torch.manual_seed(0)
    s, t = create_model(student, 10), create_model(teacher, 10)
    return s, t, get_distiller("ab")(s, t, _args(**kw))


def test_init_stage_trains_feature_modules_and_connectors_only():
    student, teacher, d = _pair()  # 16 vs 64 channels: 1x1 conv + BN connectors
    assert all(isinstance(c, torch.nn.Sequential) for c in d.connectors)
    d.on_epoch_start(1, None, INIT)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"ab"}
    losses["ab"].backward()
    feat = {id(p) for p in student.get_feat_modules().parameters()}
    assert all(p.grad is not None for p in student.get_feat_modules().parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.connectors.parameters())
    assert all(p.grad is None for p in teacher.parameters())
    chosen = {id(p) for p in d.stage_parameters(INIT)}
    assert chosen == feat | {id(p) for p in d.connectors.parameters()}
    assert id(student.fc.weight) not in chosen


def test_init_stage_modes_follow_repdistiller():
    student, _, d = _pair("wrn_16_2", "wrn_40_2")
    d.on_epoch_start(1, None, INIT)
    d.train()
    assert student.block1.training and not student.bn1.training  # WRN's last BN: not a feat module
    d.on_epoch_start(1, None, MAIN)
    d.train()
    assert student.bn1.training


def test_main_stage_is_cross_entropy_only():
    student, _, d = _pair()
    d.on_epoch_start(1, None, MAIN)
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls"}
    assert {id(p) for p in d.stage_parameters(MAIN)} == {id(p) for p in student.parameters()}


def test_extras_are_trained_and_saved():
    _, _, d = _pair()
    trainable = {id(p) for p in d.trainable_parameters()}
    assert all(id(p) in trainable for p in d.connectors.parameters())
    state = d.extra_state_dict()
    assert {"connectors.0.0.weight", "connectors.2.1.running_var"} <= set(state)
    _, _, d2 = _pair()
    with torch.no_grad():
        for p in d2.connectors.parameters():
            p.add_(1.0)
    d2.load_extra_state_dict({k: v.clone() for k, v in state.items()})
    assert all(torch.equal(v, state[k]) for k, v in d2.extra_state_dict().items())


def teacher_checkpoint(name, path):
    """An untrained teacher whose BN statistics are those of one batch of unit-variance inputs,
    as a trained teacher's fit its data (with the initial 0/1 statistics an untrained deep
    teacher's features grow large enough to make feature losses diverge)."""
    torch.manual_seed(0)
    model = create_model(name, 100)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32))
    torch.save({"model": model.state_dict(), "model_name": name}, path)
    return path


def _main(teacher, student, data, tmp_path, extra=()):
    ckpt = teacher_checkpoint(teacher, tmp_path / f"{teacher}.pth")
    train_student.main(["--distill", "ab", "--model_s", student, "--path_t", str(ckpt),
                        "--dataset", "cifar100", "--data_folder", str(data),
                        "--save_folder", str(tmp_path), "--init_epochs", "1", "--epochs", "1",
                        "--batch_size", "64", "--print_freq", "1000", *extra])


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_one_epoch_per_stage(teacher, student, cifar100_small, tmp_path):
    _main(teacher, student, cifar100_small, tmp_path)
    summary = json.loads(next(tmp_path.glob("students/*/summary.json")).read_text())
    assert summary["stages"] == ["init", "main"] and summary["epochs_done"] == 2
    assert summary["finished"] and np.isfinite(summary["last_acc"])


def test_stage_count_mismatch_is_a_user_error(cifar100_small, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _main("vgg13", "resnet8x4", cifar100_small, tmp_path)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "stages one to one" in err[0]
    assert not list(tmp_path.glob("students/*/last.pth"))

"""L2 and PAD-L2: the losses against hand computations, the variance branch, stages, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn

from distillers import Stage
from distillers.l2 import pad_l2_loss
from helpers import (PAIRS, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     make_distiller, one_epoch)


def test_pad_l2_loss_matches_hand_computation():
    rng = np.random.default_rng(0)
    f_s, f_t, s = (rng.normal(size=(3, 4)) for _ in range(3))
    expected = sum((f_t[i, k] - f_s[i, k]) ** 2 / (1e-6 + math.exp(s[i, k])) + s[i, k]
                   for i in range(3) for k in range(4)) / 12
    got = pad_l2_loss(torch.tensor(f_s), torch.tensor(f_t), torch.tensor(s)).item()
    assert abs(got - expected) < 1e-12  # float64 on terms of size ~1: a few ulps
    # with unit variance it is the squared error (up to eps)
    ones = pad_l2_loss(torch.tensor(f_s), torch.tensor(f_t), torch.zeros(3, 4, dtype=torch.float64))
    # exactly the squared error over (1 + eps): the difference is eps * mean ~ 1e-6 < 1e-5
    assert abs(ones.item() - ((f_t - f_s) ** 2).mean()) < 1e-5


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, "epochs": 3, **kw})


def _pair(method, student="resnet8x4", teacher="resnet32x4", **kw):
    return make_distiller(method, _args(**kw), student, teacher)


def test_l2_matches_hand_computation_and_connects_widths():
    student, teacher, d = _pair("l2")
    assert isinstance(d.connector, nn.Identity) and d.extra_state_dict() == {}
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "l2"}
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1].numpy()
    f_s = student(x, is_feat=True)[0][-1].detach().numpy()  # BN in train mode, as above
    expected = sum((a - b) ** 2 for a, b in zip(f_s.ravel(), f_t.ravel())) / f_s.size
    # float32 MSE over 4 x 256 values against a float64 sum of the same float32 features:
    # the reduction's rounding is ~sqrt(1024) ulps of the mean, far below 1e-4 relative
    assert abs(losses["l2"].item() - expected) < 1e-4 * expected
    _, _, d = _pair("l2", student="ShuffleV2")
    assert isinstance(d.connector, nn.Linear)
    assert (d.connector.in_features, d.connector.out_features) == (1024, 256)


def test_pad_l2_declares_two_stages():
    _, _, d = _pair("pad_l2", epochs=5)
    assert d.stages() == [Stage("l2", 5, selects_best=False), Stage("pad", 5)]
    _, _, d = _pair("pad_l2", pad_l2_l2_epochs=2, epochs=5)
    assert [(s.name, s.epochs) for s in d.stages()] == [("l2", 2), ("pad", 5)]
    branch = {id(p) for p in d.var_head.parameters()}
    assert not branch & {id(p) for p in d.stage_parameters(Stage("l2", 2))}
    assert branch <= {id(p) for p in d.stage_parameters(Stage("pad", 5))}


def test_stages_compute_their_own_loss_and_gradients():
    student, teacher, d = _pair("pad_l2", student="ShuffleV2")
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    d.on_epoch_start(1, stage=Stage("l2", 1))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "l2"}
    losses["l2"].backward()
    assert all(p.grad is None for p in d.var_head.parameters())
    assert all(p.grad is not None for p in d.connector.parameters())
    d.zero_grad(set_to_none=True)
    d.on_epoch_start(1, stage=Stage("pad", 1))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "pad_l2"}
    losses["pad_l2"].backward()
    assert_gradients(student, teacher, d.var_head, d.connector)


def test_pad_l2_uses_the_variance_branch_of_the_student_feature():
    student, teacher, d = _pair("pad_l2")
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    d.stage = "pad"
    torch.manual_seed(1)
    _, losses = d.forward_train(x, y)
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1].double().numpy()
        f_s = student(x, is_feat=True)[0][-1]
        h = nn.functional.linear(f_s, d.var_head[0].weight, d.var_head[0].bias).double().numpy()
    s = (h - h.mean(0)) / np.sqrt(h.var(0) + d.var_head[1].eps)  # BN1d in training mode
    f_s = f_s.double().numpy()
    expected = np.mean((f_t - f_s) ** 2 / (1e-6 + np.exp(s)) + s)
    # the loss runs in float32 (linear, BN, exp) over 1024 terms; float64 here: the float32
    # roundings sum to ~sqrt(1024) * 6e-8 relative, well below 1e-4
    assert abs(losses["pad_l2"].item() - expected) < 1e-4 * abs(expected)


def test_extras_are_trained_and_saved():
    _, _, d = _pair("pad_l2", student="ShuffleV2")
    assert_extras_trainable(d, d.var_head, d.connector)
    state = d.extra_state_dict()
    assert {"connector.weight", "var_head.0.weight", "var_head.1.running_var"} <= set(state)
    _, _, d2 = _pair("pad_l2", student="ShuffleV2")
    assert_extras_round_trip(state, d2, shift=[*d2.parameters(), d2.var_head[1].running_mean])


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_l2_one_epoch(teacher, student, pair_data, tmp_path, teacher_ckpt):
    one_epoch("l2", teacher_ckpt(teacher), student, pair_data, tmp_path)


@pytest.mark.parametrize("teacher,student", PAIRS)
def test_pad_l2_runs_both_stages(teacher, student, pair_data, tmp_path, teacher_ckpt):
    run, summary = one_epoch("pad_l2", teacher_ckpt(teacher), student, pair_data, tmp_path,
                             "--pad_l2_l2_epochs", "1", stages=["l2", "pad"])
    assert summary["finished"] and summary["stage"] == "pad"
    assert summary["best_epoch"] in (0, 2)  # the L2 stage does not compete for best.pth
    assert torch.load(run / "last.pth", weights_only=False)["stage"] == "pad"


# ---- the published two-run recipe and its one-run form ----------------------------------
def test_pad_l2_stage_options_give_the_published_recipe():
    # --pad_l2_l2_epochs 0: no L2 stage (the second run of the published recipe)
    _, _, d = _pair("pad_l2", pad_l2_l2_epochs=0, epochs=30)
    assert d.stages() == [Stage("pad", 30)]
    # the same recipe in one run: the L2 stage's own weight, lr and decay epochs
    _, teacher, d = _pair("pad_l2", pad_l2_l2_epochs=90, pad_l2_l2_beta=15.0, pad_l2_l2_lr=0.2,
                          pad_l2_l2_lr_decay_epochs=(30, 60), epochs=30)
    assert d.stages() == [Stage("l2", 90, lr=0.2, lr_decay_epochs=(30, 60), selects_best=False),
                          Stage("pad", 30)]
    d.train()
    d.on_epoch_start(1, stage=d.stages()[0])
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1]
    f_s = d.student(x, is_feat=True)[0][-1]
    # the same float32 ops on the same features: equal up to the order of one mean (rtol 1e-5)
    assert torch.allclose(losses["l2"], 15.0 * ((f_s - f_t) ** 2).mean(), rtol=1e-5)
    d.on_epoch_start(1, stage=d.stages()[1])
    assert set(d.forward_train(x, y)[1]) == {"cls", "pad_l2"}  # -b 1, the PAD stage's weight


def test_pad_l2_stage_flags_parse_and_check():
    from helper.run.options import parse_student_args
    config = parse_student_args(["--distill", "pad_l2", "--pad_l2_l2_epochs", "0",
                                 "--pad_l2_l2_lr_decay_epochs", "30,60", "--pad_l2_l2_lr", "0.2",
                                 "--pad_l2_l2_beta", "15"])
    o = config.method.options
    assert (o.pad_l2_l2_epochs, o.pad_l2_l2_lr_decay_epochs, o.pad_l2_l2_lr, o.pad_l2_l2_beta) == \
        (0, (30, 60), 0.2, 15.0)
    for bad in (["--pad_l2_l2_epochs", "-1"], ["--pad_l2_l2_lr_decay_epochs", "60,30"],
                ["--pad_l2_l2_lr", "0"]):
        with pytest.raises(SystemExit):
            parse_student_args(["--distill", "pad_l2", *bad])


# ---- a training batch of one sample (issue 21) --------------------------------------------
def _pad_stage(d):
    d.train()
    d.on_epoch_start(1, stage=Stage("pad", 3))


def test_pad_l2_batch_of_one_uses_the_running_statistics():
    student, teacher, d = _pair("pad_l2")
    _pad_stage(d)
    linear, bn = d.var_head
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x, y = torch.randn(1, 3, 32, 32), torch.randint(0, 100, (1,))
    _, losses = d.forward_train(x, y)
    assert torch.isfinite(losses["pad_l2"])
    for k, v in bn.state_dict().items():  # the single sample leaves the statistics alone
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        f_t = teacher(x, is_feat=True)[0][-1]
        f_s = student(x, is_feat=True)[0][-1]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        s = (linear(f_s) - bn.running_mean) * scale + bn.bias
    # BN in eval form written out by hand vs torch's: float32, a few ulps per element (rtol 1e-5)
    assert torch.allclose(losses["pad_l2"], pad_l2_loss(f_s, f_t, s), rtol=1e-5)
    sum(losses.values()).backward()
    assert linear.weight.grad is not None and bn.weight.grad is not None


def test_pad_l2_larger_batches_use_batch_statistics_as_before():
    _, _, d = _pair("pad_l2")
    _pad_stage(d)
    f_s = torch.randn(2, d.s_dim)
    reference = nn.Sequential(nn.Linear(d.s_dim, d.t_dim), nn.BatchNorm1d(d.t_dim))
    reference.load_state_dict(d.var_head.state_dict())
    from distillers.l2 import log_variance
    assert torch.equal(log_variance(d.var_head, f_s), reference(f_s))
    assert torch.equal(d.var_head[1].running_mean, reference[1].running_mean)
    assert int(d.var_head[1].num_batches_tracked) == 1


def test_pad_l2_one_epoch_with_a_last_batch_of_one(cifar100_tiny, tmp_path, teacher_ckpt):
    # 100 images in batches of 99: the PAD stage's last batch holds one sample
    run, summary = one_epoch("pad_l2", teacher_ckpt("resnet14x4"), "resnet8x4", cifar100_tiny,
                             tmp_path, "--pad_l2_l2_epochs", "1", stages=["l2", "pad"],
                             batch_size=99)
    assert summary["finished"]


def test_pad_l2_two_runs_one_epoch_from_the_l2_run(cifar100_tiny, tmp_path, teacher_ckpt):
    """The published recipe: an l2 run, then pad_l2 without an L2 stage from its best.pth;
    the l2 run's last.pth also loads as a teacher (the table scripts use last.pth)."""
    from helper.run.checkpoint import create_pretrained, load_teacher
    teacher = teacher_ckpt("resnet14x4")
    l2_run, _ = one_epoch("l2", teacher, "resnet8x4", cifar100_tiny, tmp_path / "l2", "-b", "15")
    best = l2_run / "best.pth"
    start = create_pretrained("resnet8x4", 100, str(best)).state_dict()
    saved = torch.load(best, weights_only=False)["model"]
    assert all(torch.equal(start[k], saved[k]) for k in saved)
    pad_run, summary = one_epoch("pad_l2", teacher, "resnet8x4", cifar100_tiny, tmp_path / "pad",
                                 "--pad_l2_l2_epochs", "0", "--pretrained", str(best),
                                 "--learning_rate", "0.002", stages=["pad"])
    assert summary["finished"]
    model, _ = load_teacher(l2_run / "last.pth", 100)
    assert model.model_name == "resnet8x4" and not model.training

"""MGD: margins, partial L2, matching cost and assignment, reducers, the whole loss against
independent computations; gradients, extras, re-matching schedule, resume, one epoch."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import integrate

import distillers.mgd  # noqa: F401  (registers --distill mgd)
from dataset import RandomCropFlip, TensorLoader, normalize
from distillers.mgd import matching_cost, reduce_teacher, solve_matching
from distillers.ofd import bn_margin, partial_l2  # OFD's, which MGD uses
from helper.core.errors import UserError
from helper.run.options import parse_student_args
from helper.run.run_folder import SEP, student_run_name
from helpers import (PAIRS, build, assert_extras_round_trip, assert_extras_trainable, assert_gradients,
                     assert_resume_is_exact, make_distiller, one_epoch, one_line_user_error,
                     run_student)
from models import create_model


def _args(**kw):
    return SimpleNamespace(**{"cls": 1.0, "div": 0.0, "beta": 1.0, "kd_T": 4.0, **kw})


def _distiller(teacher="wrn_40_2", student="resnet20", **kw):
    return make_distiller("mgd", _args(**kw), student, teacher)


# ---- the pure pieces -------------------------------------------------------------------
def test_margin_is_the_mean_of_the_negative_part_by_numeric_integration():
    weight = [1.0, 0.5, -2.0, 0.3, 0.5]
    bias = [0.0, 1.0, -0.5, 0.9, 2.0]  # the last has P(x < 0) = Phi(-4) < 0.001
    bn = nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor(weight))
        bn.bias.copy_(torch.tensor(bias))
    got = bn_margin(bn).tolist()
    for w, m, g in zip(weight, bias, got):
        s = abs(w)
        pdf = lambda x: math.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        mass = integrate.quad(pdf, -np.inf, 0)[0]
        expected = integrate.quad(lambda x: x * pdf(x), -np.inf, 0)[0] / mass if mass > 1e-3 else -3 * s
        # quad integrates to ~1e-10; bn_margin is float32 on values of size ~2: ~1e-7
        assert abs(g - expected) < 1e-5, (w, m)
    assert got[-1] == pytest.approx(-1.5)


def test_partial_l2_by_hand():
    source = torch.tensor([[1.0, -2.0], [0.5, -0.2]]).view(1, 2, 2, 1)
    target = torch.tensor([[2.0, -3.0], [-1.0, -0.1]]).view(1, 2, 2, 1)
    margin = torch.tensor([-1.0, -0.5]).view(1, 2, 1, 1)
    # channel 0: targets max(2,-1)=2 -> (1-2)^2; max(-3,-1)=-1, source -2 < -1 -> 0
    # channel 1: max(-1,-.5)=-.5, source .5 > -.5 -> 1; max(-.1,-.5)=-.1, source -.2 < -.1 -> 0
    assert partial_l2(source, target, margin).item() == pytest.approx(1.0 + 1.0)


def test_matching_cost_matches_loops():
    rng = np.random.default_rng(0)
    f_s, f_t = rng.normal(size=(2, 3, 2, 2)), rng.normal(size=(2, 4, 2, 2))
    expected = np.zeros((3, 4))
    for b in range(2):
        for i in range(3):
            for j in range(4):
                u, v = f_s[b, i].ravel(), f_t[b, j].ravel()
                expected[i, j] += 2 - 2 * u.dot(v) / np.linalg.norm(u) / np.linalg.norm(v)
    got = matching_cost(torch.tensor(f_s), torch.tensor(f_t)).numpy()
    assert np.allclose(got, expected, atol=1e-12)  # float64, costs of size ~4: a few ulps


def test_assignment_recovers_a_permutation():
    torch.manual_seed(0)
    f_t = torch.randn(6, 8, 4, 4)
    perm = torch.randperm(8)
    f_s = f_t[:, perm] * 3 + 0.01 * torch.randn(6, 8, 4, 4)  # student channel i = teacher perm[i]
    index = solve_matching(matching_cost(f_s, f_t).numpy() / 6)
    assert torch.equal(index, perm)


def test_assignment_gives_each_student_channel_its_group():
    torch.manual_seed(1)
    f_s = torch.randn(5, 4, 3, 3)
    owner = torch.tensor([2, 0, 3, 1, 1, 0, 2, 3])  # teacher channel j copies student owner[j]
    f_t = f_s[:, owner] * torch.arange(1.0, 9.0).view(1, 8, 1, 1)
    index = solve_matching(matching_cost(f_s, f_t).numpy() / 5)
    assert index.numel() == 8 and sorted(index.tolist()) == list(range(8))
    for i in range(4):
        assert {index[i].item(), index[4 + i].item()} == set(torch.nonzero(owner == i).flatten().tolist())


def test_assignment_shaves_the_last_teacher_channels_and_sparse_picks_one():
    cost = np.random.default_rng(0).random((4, 10))
    index = solve_matching(cost)
    assert index.numel() == 8 and sorted(index.tolist()) == list(range(8))  # 8, 9 shaved
    torch.manual_seed(2)
    f_t = torch.randn(4, 5, 3, 3)
    f_s = f_t[:, [4, 0, 2]]
    assert solve_matching(matching_cost(f_s, f_t).numpy() / 4, sparse=True).tolist() == [4, 0, 2]


# teacher channels t0..t3 at two positions; student channel 0 <- {t3, t1}, 1 <- {t0, t2}
T = torch.tensor([[1.0, -5.0], [2.0, 0.5], [-3.0, 4.0], [0.0, -1.0]]).view(1, 4, 1, 2)
M = torch.tensor([-1.0, -2.0, -3.0, -4.0])
INDEX = torch.tensor([3, 0, 1, 2])


@pytest.mark.parametrize("reducer,absolute,t_expected,m_expected", [
    ("amp", False, [[2.0, 0.5], [1.0, 4.0]], [-3.0, -2.0]),
    ("amp", True, [[2.0, -1.0], [-3.0, -5.0]], [-3.0, -2.0]),
    ("sp", False, [[2.0, 0.5], [1.0, 4.0]], [-2.0, -1.0]),
])
def test_reducers_by_hand(reducer, absolute, t_expected, m_expected):
    t, m = reduce_teacher(T, M, INDEX, 2, reducer, absolute)
    assert t.view(2, 2).tolist() == t_expected and m.tolist() == m_expected


def test_sparse_reducer_takes_the_matched_channels():
    t, m = reduce_teacher(T, M, torch.tensor([3, 0]), 2, "sm")
    assert t.view(2, 2).tolist() == [[0.0, -1.0], [1.0, -5.0]] and m.tolist() == [-4.0, -1.0]


def test_random_drop_picks_a_group_member_per_position():
    groups = {0: (3, 1), 1: (0, 2)}
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):
        t, m = reduce_teacher(T, M, INDEX, 2, "rd")
        for c, members in groups.items():
            assert m[c].item() in [M[j].item() for j in members]
            for p in range(2):
                value = t[0, c, 0, p].item()
                assert value in [T[0, j, 0, p].item() for j in members]
                seen.add((c, p, value))
    assert len(seen) == 8  # both members drawn at every position


# ---- the method ------------------------------------------------------------------------
@pytest.mark.parametrize("signed", [False, True])
def test_loss_matches_an_independent_numpy_computation(signed):
    # default: the response of largest magnitude (sign kept); --mgd_amp_signed: the largest
    _, _, d = _distiller(beta=2.0, mgd_loss_factor=100.0,  # wrn_40_2 -> resnet20: groups of 2
                         mgd_amp_signed=signed)
    d.train()
    rng = np.random.default_rng(0)
    shapes_s, shapes_t = [(16, 32), (32, 16), (64, 8)], [(32, 32), (64, 16), (128, 8)]
    f_s = [rng.normal(size=(3, c, h, h)) for c, h in shapes_s]
    f_t = [rng.normal(size=(3, c, h, h)) * 2 for c, h in shapes_t]
    for i, (c, _) in enumerate(shapes_t):
        d.match(i).copy_(torch.from_numpy(rng.permutation(c)))
    as_feats = lambda fs: [None] + [torch.tensor(f, dtype=torch.float32) for f in fs] + [None]
    got = d.method_losses(feats_s=as_feats(f_s), logits_s=None, feats_t=as_feats(f_t),
                          logits_t=None, targets=None)["mgd"].item()
    expected = 0.0
    for i, (s, t) in enumerate(zip(f_s, f_t)):
        sc = s.shape[1]
        s = (s - s.mean(axis=(0, 2, 3), keepdims=True)) / np.sqrt(s.var(axis=(0, 2, 3), keepdims=True) + 1e-5)
        index, margin = d.match(i).numpy(), d.margin(i).numpy()
        members = [[index[i_], index[sc + i_]] for i_ in range(sc)]
        pick = (lambda x, y: np.maximum(x, y)) if signed else (
            lambda x, y: np.where(np.abs(y) > np.abs(x), y, x))
        target = np.stack([pick(t[:, a], t[:, b]) for a, b in members], axis=1)
        m = np.array([(margin[a] + margin[b]) / 2 for a, b in members]).reshape(1, -1, 1, 1)
        target = np.maximum(target, m)
        keep = (s > target) | (target > 0)
        expected += ((s - target) ** 2 * keep).sum() / 2 ** (2 - i)
    expected = 2.0 * expected / 3 / 100.0
    assert got == pytest.approx(expected, rel=1e-5)


def test_gradients_reach_student_and_bn_never_teacher():
    student, teacher, d = _distiller()
    d.train()
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,)))
    assert set(losses) == {"cls", "mgd"}
    losses["mgd"].backward()
    assert_gradients(student, teacher, d.bn_s)


def test_extras_are_trained_and_saved_with_the_matching():
    student, _, d = _distiller()
    assert_extras_trainable(d, d.bn_s)
    extra = sum(p.numel() for p in d.trainable_parameters()) - sum(p.numel() for p in student.parameters())
    assert extra == 2 * (16 + 32 + 64)
    for i in range(3):
        d.match(i).copy_(torch.randperm(d.match(i).numel()))
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert {"match0", "match2", "margin1", "bn_s.0.weight", "bn_s.2.running_var"} <= set(state)
    _, _, d2 = _distiller()
    assert not torch.equal(d2.match(0), state["match0"])
    assert_extras_round_trip(state, d2)


class _Loader:
    """Two batches; ``unaugmented`` counts the matching passes."""

    def __init__(self):
        torch.manual_seed(3)
        self.batches = [{"images": torch.randn(4, 3, 32, 32)} for _ in range(2)]
        self.passes = 0

    def unaugmented(self):
        self.passes += 1
        return iter(self.batches)


def test_rematching_schedule_eval_mode_and_modes_restored():
    student, teacher, d = _distiller(mgd_update_freq=2)
    modes = []
    student.register_forward_pre_hook(lambda m, inp: modes.append((m.training, teacher.training)))
    loader = _Loader()
    d.train()
    before = [d.match(i).clone() for i in range(3)]
    passes = []
    for epoch in range(1, 6):
        d.on_epoch_start(epoch, loader)
        passes.append(loader.passes)
    assert passes == [1, 1, 2, 2, 3]  # before epochs 1, 3, 5
    assert modes and all(m == (False, False) for m in modes)
    assert student.training and all(bn.training for bn in d.bn_s) and not teacher.training
    assert any(not torch.equal(b, d.match(i)) for i, b in enumerate(before))
    for i in range(3):
        assert sorted(d.match(i).tolist()) == list(range(d.match(i).numel()))


def test_unaugmented_pass_is_this_ranks_shard_normalised_in_order():
    images = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    kw = dict(batch_size=2, device="cpu", mean=mean, std=std, shuffle=True, world_size=2)
    for rank, expected in ((0, [0, 2, 4]), (1, [1, 3, 0])):
        loader = TensorLoader(images, torch.arange(5), rank=rank, transform=RandomCropFlip(2, True), **kw)
        batches = list(loader.unaugmented())
        assert [len(b["index"]) for b in batches] == [2, 1]
        index = torch.cat([b["index"] for b in batches])
        assert index.tolist() == expected
        m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        assert torch.equal(torch.cat([b["images"] for b in batches]), normalize(images[index], m, s))


def test_pairs_it_cannot_distil_are_user_errors():
    with pytest.raises(UserError, match="BN before"):
        _distiller("ShuffleV2", "resnet8")
    with pytest.raises(UserError, match="no wider than the teacher"):
        _distiller("resnet20", "resnet8x4")
    with pytest.raises(UserError, match="stages one to one"):
        _distiller("resnet32x4", "vgg8")


def test_with_kd_sets_the_reference_kd():
    d = build("mgd", create_model("resnet8", 100), create_model("resnet20", 100), _args(mgd_with_kd=1))
    assert (d.div_weight, d.kd_temperature()) == (1.0, 1.5)
    # the run configuration (run name, summary.json) shows the weights in use; the flags as given
    config = parse_student_args(["--distill", "mgd", "--mgd_with_kd", "1", "-d", "0"])
    assert (config.method.weights.div, config.method.kd.kd_T) == (1.0, 1.5)
    assert (config.args.div, config.args.kd_T) == (0.0, 4.0)
    assert student_run_name(config, "resnet20").endswith("_mgd_r:1_a:1_b:1_0".replace(":", SEP))


# ---- through the script ----------------------------------------------------------------
def _run(data, folder, ckpt, student, *extra):
    return run_student("mgd", student, data, folder, *extra, teacher=ckpt)


@pytest.mark.parametrize("teacher,student", PAIRS[:3])  # ShuffleV2: a user error (below)
def test_one_epoch(pair_data, tmp_path, teacher, student, teacher_ckpt):
    run, summary = one_epoch("mgd", teacher_ckpt(teacher), student, pair_data, tmp_path)
    assert summary["parameters"]["extras"] > 0
    extras = torch.load(run / "last.pth", weights_only=True)["extras"]
    for key in (k for k in extras if k.startswith("match")):
        assert sorted(extras[key].tolist()) == list(range(extras[key].numel()))


def test_shufflenet_student_is_a_one_line_user_error(cifar100_small, tmp_path, capsys,
                                                     teacher_ckpt):
    err = one_line_user_error(capsys, "mgd", "ShuffleV2", cifar100_small, tmp_path,
                              teacher=teacher_ckpt("resnet32x4"))
    assert "ShuffleV2" in err
    assert not (tmp_path / "students").exists()


def test_resume_restores_the_matching_exactly(cifar100_small, tmp_path, capsys, teacher_ckpt):
    ckpt = teacher_ckpt("wrn_16_2")  # -> resnet8: two teacher channels per student channel

    def run(folder, *extra):
        return _run(cifar100_small, tmp_path / folder, ckpt, "resnet8", "--deterministic",
                    "--mgd_update_freq", "2", *extra)
    a, _ = assert_resume_is_exact(run, before_resume=capsys.readouterr)
    assert "channels matched" not in capsys.readouterr().out  # epoch 2 keeps epoch 1's matching
    assert any(not torch.equal(a["extras"][f"match{i}"], torch.arange(a["extras"][f"match{i}"].numel()))
               for i in range(3))

"""DML: the mutual term against a hand computation (mean, sum, ensemble), each network's loss,
gradients reaching each network only through its own terms, the peers as extras (checkpoints,
an exact --resume), their own checkpoints and accuracies, and the errors."""
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import train_student
from distillers.dml import mutual_loss
from helper.run.checkpoint import load_teacher
from helpers import (assert_extras_round_trip, assert_extras_trainable, assert_resume_is_exact,
                     build, one_epoch, one_line_user_error, read_summary, run_student)
from models import create_model


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kl(p, q):
    return sum(a * (math.log(a) - math.log(b)) for a, b in zip(p, q))


def _mutual_by_hand(own, others, T, mode):
    """Per row: KL(p_l || p_own) averaged or summed over the others l, or KL to the others'
    mean probability; averaged over the rows, times T^2."""
    total = 0.0
    for i, row in enumerate(own):
        p = _softmax(row, T)
        qs = [_softmax(o[i], T) for o in others]
        if mode == "ensemble":
            total += _kl([sum(q[j] for q in qs) / len(qs) for j in range(len(p))], p)
        else:
            kls = [_kl(q, p) for q in qs]
            total += sum(kls) / (len(kls) if mode == "mean" else 1)
    return total / len(own) * T * T


@pytest.mark.parametrize("mode", ["mean", "sum", "ensemble"])
@pytest.mark.parametrize("T", [1.0, 3.0])
def test_mutual_loss_matches_hand_computation(mode, T):
    a = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2]]
    b = [[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.5, -2.0]]
    c = [[0.3, -0.7, 2.2, 0.0], [-1.0, 0.5, 0.5, 1.0]]
    f64 = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = mutual_loss(f64(a), [f64(b), f64(c)], T, mode).item()
    # float64, loss ~1: a few ulps (~1e-15), any CPU
    assert abs(got - _mutual_by_hand(a, [b, c], T, mode)) < 1e-10
    # one peer: the three modes agree (the paper's two-network DML)
    one = mutual_loss(f64(a), [f64(b)], T, mode).item()
    assert abs(one - _mutual_by_hand(a, [b], T, "mean")) < 1e-10


def _args(**kw):
    return SimpleNamespace(**{"cls": None, "div": None, "beta": None, **kw})


def _dml(**kw):
    torch.manual_seed(0)
    student = create_model("resnet8", 10)
    return student, build("dml", student, None, _args(**kw), num_classes=10)


def test_defaults_peers_and_extras():
    student, d = _dml()
    assert (d.cls_weight, d.div_weight, d.beta) == (1.0, 0.0, 1.0)
    assert d.teacher is None and not d.requires_teacher(d.options)
    assert d.peer_names == ["resnet8"] and list(d.extra_models()) == ["peer1"]
    assert_extras_trainable(d, d.peers)
    assert all(k.startswith("peers.0.") for k in d.extra_state_dict())
    _, d2 = _dml(dml_peers="resnet8,wrn_16_1")
    assert [m.model_name for m in d2.peers] == ["resnet8", "wrn_16_1"]
    assert {k: v[0] for k, v in d2.extra_models().items()} == {"peer1": "resnet8",
                                                                 "peer2": "wrn_16_1"}


def test_losses_are_each_networks_ce_and_mutual_term():
    student, d = _dml(dml_peers="resnet8,wrn_16_1", beta=2.0, cls=0.5, dml_T=2.0)
    d.train()
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "dml", "peers_cls", "peers_dml"}
    with torch.no_grad():  # train-mode BN: the same batch statistics, so the same logits
        z = [student(x), *(p(x) for p in d.peers)]
    by_hand = [_mutual_by_hand(z[k].tolist(), [o.tolist() for o in z[:k] + z[k + 1:]], 2.0,
                               "mean") for k in range(3)]
    # float32 forward recomputed identically; the hand computation in float64: ~1e-6 relative
    assert losses["dml"].item() == pytest.approx(2.0 * by_hand[0], rel=1e-4)
    assert losses["peers_dml"].item() == pytest.approx(2.0 * (by_hand[1] + by_hand[2]), rel=1e-4)
    ce = sum(F.cross_entropy(zk, y).item() for zk in z[1:])
    assert losses["peers_cls"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    assert losses["cls"].item() == pytest.approx(0.5 * F.cross_entropy(z[0], y).item(), rel=1e-5)


def test_label_smoothing_reaches_every_networks_ce_term():
    """--label_smoothing 0.1 (with the weights): the student's and the peers' CE terms are
    F.cross_entropy(..., label_smoothing=0.1) of their logits, as before DML called cls_loss;
    MixUp/CutMix soft targets smoothed the same way."""
    student, d = _dml(dml_peers="resnet8,wrn_16_1", cls=0.5, label_smoothing=0.1)
    assert d.label_smoothing == 0.1
    d.train()
    torch.manual_seed(1)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))
    _, losses = d.forward_train(x, y)
    with torch.no_grad():  # train-mode BN: the same batch statistics, so the same logits
        z = [student(x), *(p(x) for p in d.peers)]
    ce = sum(F.cross_entropy(zk, y, label_smoothing=0.1).item() for zk in z[1:])
    assert losses["peers_cls"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    assert losses["peers_cls"].item() != pytest.approx(
        0.5 * sum(F.cross_entropy(zk, y).item() for zk in z[1:]), rel=1e-4)
    own = F.cross_entropy(z[0], y, label_smoothing=0.1).item()
    assert losses["cls"].item() == pytest.approx(0.5 * own, rel=1e-5)
    # soft (mixed) targets: every network's CE takes them, smoothed
    soft = 0.7 * F.one_hot(y, 10).float() + 0.3 * F.one_hot(y.roll(1), 10).float()
    _, losses = d.forward_train(x, y, soft_targets=soft)
    ce = sum(F.cross_entropy(zk, soft, label_smoothing=0.1).item() for zk in z[1:])
    assert losses["peers_cls"].item() == pytest.approx(0.5 * ce, rel=1e-5)
    own = F.cross_entropy(z[0], soft, label_smoothing=0.1).item()
    assert losses["cls"].item() == pytest.approx(0.5 * own, rel=1e-5)


def _grads(module):
    return [p.grad for p in module.parameters()]


def test_each_network_learns_only_from_its_own_terms():
    """The others' predictions are constants in a network's mutual term (as the official
    per-network gradients): the student's term reaches only the student, the peers' only the
    peers; together with the CE terms every network gets gradients."""
    student, d = _dml(dml_peers="resnet8,resnet8")
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    _, losses = d.forward_train(x, y)
    losses["dml"].backward(retain_graph=True)
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(g is None for peer in d.peers for g in _grads(peer))
    student.zero_grad(set_to_none=True)
    losses["peers_dml"].backward(retain_graph=True)
    assert all(g is None for g in _grads(student))
    assert all(peer.conv1.weight.grad.abs().sum() > 0 for peer in d.peers)
    d.zero_grad(set_to_none=True)
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in d.trainable_parameters())


def test_extras_round_trip():
    _, d = _dml()
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    _, other = _dml()
    assert_extras_round_trip(state, other, shift=list(other.peers.parameters()))


def test_option_and_weight_errors(cifar100_tiny, tmp_path, capsys):
    line = one_line_user_error(capsys, "dml", "resnet8", cifar100_tiny, tmp_path, "-d", "1")
    assert "trains without a teacher" in line and "drop -d" in line
    line = one_line_user_error(capsys, "dml", "resnet8", cifar100_tiny, tmp_path,
                               "--dml_peers", "resnet8,,wrn_16_1")
    assert "empty name" in line
    line = one_line_user_error(capsys, "dml", "resnet8", cifar100_tiny, tmp_path,
                               "--dml_peers", "resnet9")
    assert "--dml_peers" in line and "resnet9" in line
    line = one_line_user_error(capsys, "dml", "resnet8", cifar100_tiny, tmp_path, "--dml_T", "0")
    assert "--dml_T must be positive" in line
    assert not (tmp_path / "students").exists()


def test_one_epoch_writes_each_peer_that_loads_alone(cifar100_tiny, tmp_path, capsys):
    run, summary = one_epoch("dml", None, "resnet8x4", cifar100_tiny, tmp_path / "s",
                             "--dml_peers", "resnet8x4,wrn_16_2")
    assert summary["teacher"] == "none" and summary["args"]["beta"] == 1
    peers = summary["extra_models"]
    assert {k: v["model_name"] for k, v in peers.items()} == {"peer1": "resnet8x4",
                                                               "peer2": "wrn_16_2"}
    last = torch.load(run / "last.pth", weights_only=True)
    for i, name in enumerate(("peer1", "peer2")):
        assert {f"{name}_best.pth", f"{name}_last.pth"} <= {p.name for p in run.iterdir()}
        model, ckpt = load_teacher(run / f"{name}_last.pth", 100)
        assert model.model_name == peers[name]["model_name"]
        for k, v in model.state_dict().items():  # the peer as the run's extras hold it
            assert torch.equal(v, last["extras"][f"peers.{i}.{k}"]), k
        assert "optimizer" not in ckpt  # not a file to --resume from
    capsys.readouterr()
    train_student.main(["--evaluate", str(run / "peer2_best.pth"), "--dataset", "cifar100",
                        "--data_folder", str(cifar100_tiny)])
    out = capsys.readouterr().out
    assert f"top-1 {peers['peer2']['best_acc']:.2f}" in out
    result = json.loads((run / "peer2_best.pth.eval.json").read_text())
    assert result["model_name"] == "wrn_16_2"
    assert result["acc"] == pytest.approx(peers["peer2"]["best_acc"], abs=1e-9)


def test_resume_restores_peers_exactly(cifar100_tiny, tmp_path):
    def run(name, *flags):
        return run_student("dml", "resnet8", cifar100_tiny, tmp_path / name, "--deterministic",
                           "--dml_peers", "resnet8,wrn_16_1", *flags)
    a, b = assert_resume_is_exact(run)
    assert any(k.startswith("peers.1.") for k in a["extras"])
    assert a["extra_best"] == b["extra_best"]
    runs = [next((tmp_path / n / "students").iterdir()) for n in "ab"]
    assert read_summary(runs[0])["extra_models"] == read_summary(runs[1])["extra_models"]
    for name in ("peer1_last.pth", "peer2_best.pth"):
        x, y = (torch.load(r / name, weights_only=True) for r in runs)
        assert x["epoch"] == y["epoch"] and all(torch.equal(x["model"][k], y["model"][k])
                                                for k in x["model"])

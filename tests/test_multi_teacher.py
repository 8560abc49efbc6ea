"""Several teachers: the ensemble (mean logit, members' outputs), --path_t/--model_t with one or
several values, CA-MKD's weights and losses against hand computations, its gradients and extras,
real runs (kd and camkd with two architectures), an exact --resume, and the errors."""
import math
from types import SimpleNamespace

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from distillers.camkd import confidence_weights, weighted_feature_loss, weighted_kd
from helper.core.errors import UserError
from helper.run.options import parse_student_args
from helpers import (assert_extras_round_trip, assert_extras_trainable, assert_resume_is_exact,
                     build, kd_by_hand, one_epoch, one_line_user_error, run_student)
from models import create_model
from models.teachers import TeacherEnsemble, teacher_specs

F64 = torch.float64


def _teachers(*names, classes=10):
    torch.manual_seed(0)
    return [create_model(n, classes).eval() for n in names]


# ---- the ensemble and the flags -------------------------------------------------------------
def test_ensemble_gives_the_mean_logit_and_each_members_outputs():
    members = _teachers("resnet8", "wrn_16_1", "resnet8")
    ens = TeacherEnsemble(members)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        each = [m(x) for m in members]
        assert torch.allclose(ens(x), (each[0] + each[1] + each[2]) / 3, atol=1e-6)
        outs, mean = ens(x, is_feat=True)
    assert torch.allclose(mean, ens(x))
    for (feats, logits), m, z in zip(outs, members, each):
        assert torch.equal(logits, z) and len(feats) == len(m(x, is_feat=True)[0])
    assert ens.model_name == "resnet8+wrn_16_1+resnet8" and len(ens) == 3
    with pytest.raises(UserError, match="takes one --path_t"):
        ens.feature_shapes()


def test_path_t_and_model_t_one_or_several(tmp_path):
    one = parse_student_args(["--path_t", "a.pth"]).args
    assert one.path_t == "a.pth" and one.model_t is None
    several = parse_student_args(["--path_t", "a.pth", "b.pth,c.pth", "--model_t", "resnet8",
                                  "wrn_16_1", "vgg8"]).args
    assert several.path_t == ["a.pth", "b.pth", "c.pth"]
    assert teacher_specs(several.path_t, several.model_t) == [
        ("a.pth", "resnet8"), ("b.pth", "wrn_16_1"), ("c.pth", "vgg8")]
    assert teacher_specs("a.pth") == [("a.pth", None)]
    with pytest.raises(UserError, match="--model_t names 1 architectures for 2"):
        teacher_specs(["a", "b"], "resnet8")
    config = tmp_path / "config.yaml"
    config.write_text("path_t: [a.pth, b.pth]\nmodel_t: resnet8\n")
    from_file = parse_student_args(["--config", str(config)]).args
    assert from_file.path_t == ["a.pth", "b.pth"] and from_file.model_t == "resnet8"


# ---- CA-MKD's criteria ----------------------------------------------------------------------
S = [[1.0, 2.0, 0.5, -1.0], [0.0, -1.0, 3.0, 0.2], [2.0, 2.0, 1.0, 0.0]]
T1 = [[2.0, 1.0, 0.0, 0.5], [1.0, 1.0, 1.5, -2.0], [0.0, 3.0, 1.0, 1.0]]
T2 = [[0.5, 0.5, 2.0, 0.0], [-1.0, 2.0, 0.0, 1.0], [1.0, 0.0, 0.0, 3.0]]
T3 = [[3.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0], [0.2, 0.1, 0.0, 0.3]]
Y = [0, 2, 3]


def _ce(row, y):
    return math.log(sum(math.exp(v) for v in row)) - row[y]


def _weights_by_hand(teachers, y):
    """w[k][i] = (1 - exp(CE_ki) / sum_j exp(CE_ji)) / (K - 1)."""
    K, w = len(teachers), []
    ces = [[_ce(t[i], y[i]) for i in range(len(y))] for t in teachers]
    for k in range(K):
        w.append([(1 - math.exp(ces[k][i]) / sum(math.exp(c[i]) for c in ces)) / (K - 1)
                  for i in range(len(y))])
    return w


def test_confidence_weights_match_hand_computation():
    got = confidence_weights([torch.tensor(t, dtype=F64) for t in (T1, T2, T3)], torch.tensor(Y))
    expected = _weights_by_hand([T1, T2, T3], Y)
    assert got.shape == (3, 3)
    assert torch.allclose(got, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-12)
    assert torch.allclose(got.sum(0), torch.ones(3, dtype=F64))
    # per sample, the teacher with the lowest cross-entropy on the label weighs most
    ces = torch.tensor([[_ce(t[i], Y[i]) for i in range(3)] for t in (T1, T2, T3)])
    assert torch.equal(got.argmax(0), ces.argmin(0))


def test_weighted_kd_matches_hand_computation():
    T = 4.0
    w = _weights_by_hand([T1, T2], Y)
    expected = 0.0
    for k, t in enumerate((T1, T2)):
        for i in range(3):  # one row's KD term: kd_by_hand of that row alone
            expected += w[k][i] * kd_by_hand([S[i]], [t[i]], T)
    expected /= 3 * 2
    tt = [torch.tensor(t, dtype=F64) for t in (T1, T2)]
    got = weighted_kd(torch.tensor(S, dtype=F64), tt, torch.tensor(w, dtype=F64), T)
    assert abs(got.item() - expected) < 1e-12  # float64, loss ~0.3: a few ulps


def test_weighted_feature_loss_matches_hand_computation():
    torch.manual_seed(0)
    proj = [torch.randn(3, 2, 2, 2, dtype=F64) for _ in range(2)]
    maps = [torch.randn(3, 2, 2, 2, dtype=F64) for _ in range(2)]
    w = [[0.2, 0.5, 0.9], [0.8, 0.5, 0.1]]
    expected = 0.0
    for k in range(2):
        for i in range(3):
            a, b = proj[k][i].flatten().tolist(), maps[k][i].flatten().tolist()
            expected += w[k][i] * sum((u - v) ** 2 for u, v in zip(a, b)) / len(a)
    expected /= 3 * 2
    got = weighted_feature_loss(proj, maps, torch.tensor(w, dtype=F64))
    assert abs(got.item() - expected) < 1e-12


# ---- the CA-MKD distiller -------------------------------------------------------------------
def _args(**kw):
    return SimpleNamespace(**{"cls": None, "div": None, "beta": None, "kd_T": 4.0, **kw})


def _camkd(**kw):
    teachers = _teachers("resnet8x4", "wrn_16_2")
    student = create_model("resnet8", 10)
    ens = TeacherEnsemble(teachers)
    return student, ens, build("camkd", student, ens, _args(**kw), num_classes=10)


def test_camkd_terms_gradients_and_first_epoch():
    student, ens, d = _camkd()
    assert (d.cls_weight, d.div_weight, d.beta, d.alpha) == (1.0, 0.0, 50.0, 1.0)
    assert_extras_trainable(d, d.regressors)
    assert all(p.requires_grad is False for p in ens.parameters())
    d.train()
    torch.manual_seed(1)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    d.on_epoch_start(2)
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "camkd_kd", "camkd"}
    with torch.no_grad():  # the same batch statistics: the same outputs
        feats_s, logits_s = student(x, is_feat=True)
        outs = [m(x, is_feat=True) for m in ens.members]
        logits_t = [z for _, z in outs]
        w = confidence_weights(logits_t, y)
        kd = weighted_kd(logits_s, logits_t, w, 4.0)
        proj = [r(feats_s[-2]) for r in d.regressors]
        heads = [m.get_classifier()(p.mean((2, 3))) for m, p in zip(ens.members, proj)]
        feat = weighted_feature_loss(proj, [f[-2] for f, _ in outs], confidence_weights(heads, y))
    assert losses["camkd_kd"].item() == pytest.approx(kd.item(), rel=1e-5)
    assert losses["camkd"].item() == pytest.approx(50.0 * feat.item(), rel=1e-5)
    d.zero_grad(set_to_none=True)
    (losses["camkd_kd"] + losses["camkd"]).backward()
    assert student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in d.regressors.parameters())
    assert all(p.grad is None for p in ens.parameters())
    # the first epoch: the feature term weighs 0 (the reference leaves it out), KD as before
    d.on_epoch_start(1)
    d.zero_grad(set_to_none=True)
    _, first = d.forward_train(x, y)
    assert first["camkd"].item() == 0.0 and first["camkd_kd"].item() > 0
    first["camkd"].backward()
    assert all(p.grad.abs().sum() == 0 for p in d.regressors.parameters())


def test_camkd_extras_round_trip():
    _, _, d = _camkd()
    state = {k: v.clone() for k, v in d.extra_state_dict().items()}
    assert state and all(k.startswith("regressors.") for k in state)
    _, _, other = _camkd()
    assert_extras_round_trip(state, other, shift=list(other.regressors.parameters()))


# ---- real runs ------------------------------------------------------------------------------
def test_kd_and_camkd_one_epoch_with_two_architectures(cifar100_tiny, tmp_path, teacher_ckpt):
    paths = [str(teacher_ckpt("resnet14x4")), str(teacher_ckpt("wrn_40_2"))]
    run, summary = one_epoch("kd", None, "resnet8x4", cifar100_tiny, tmp_path / "kd",
                             "--path_t", *paths)
    assert summary["teacher"] == "resnet14x4+wrn_40_2" and summary["path_t"] == paths
    assert "_T:resnet14x4+wrn_40_2_cifar100_kd_" in run.name.replace("~", ":")
    # CA-MKD with DKD on the teachers' mean logit (the combination syntax)
    run, summary = one_epoch("camkd+dkd", None, "resnet8x4", cifar100_tiny, tmp_path / "camkd",
                             "--path_t", ",".join(paths), "--camkd_skip_epochs", "0",
                             "-b", "camkd=50,dkd=1")
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"train/loss_cls", "train/loss_camkd_kd", "train/loss_camkd",
            "train/loss_dkd"} <= set(events.Tags()["scalars"])
    # one regressor per teacher: 1x1 conv 256 -> 256 and 256 -> 128 with bias, then BN
    assert summary["parameters"]["extras"] == (256 * 256 + 3 * 256) + (256 * 128 + 3 * 128)


def test_camkd_resume_is_exact_and_checks_the_teachers(cifar100_tiny, tmp_path, teacher_ckpt,
                                                       capsys):
    paths = [str(teacher_ckpt("resnet8x4")), str(teacher_ckpt("wrn_16_2"))]

    def run(name, *flags, order=paths):
        return run_student("camkd", "resnet8", cifar100_tiny, tmp_path / name, "--deterministic",
                           "--path_t", *order, *flags)
    a, _ = assert_resume_is_exact(run)  # epoch 2 has the feature term
    assert any(k.startswith("regressors.1.") for k in a["extras"])
    last = next((tmp_path / "b" / "students").iterdir()) / "last.pth"
    capsys.readouterr()
    other = tmp_path / "other.pth"  # the same architecture, other weights
    weights = torch.load(paths[1], weights_only=True)
    weights["model"] = {k: v * 2 for k, v in weights["model"].items()}
    torch.save(weights, other)
    for order, why in ((paths[::-1], "teacher"), ([paths[0], str(other)], str(other))):
        with pytest.raises(SystemExit) as e:
            run("b", "--epochs", "3", "--resume", str(last), order=order)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "cannot resume" in err and why in err
    # the same files, spelt otherwise or copied elsewhere (compared by SHA-256): it continues
    folder, name = paths[1].rsplit("/", 1)
    run("b", "--epochs", "3", "--resume", str(last), order=[paths[0], f"{folder}/./{name}"])
    copy = tmp_path / "copy.pth"
    copy.write_bytes(open(paths[1], "rb").read())
    run("b", "--epochs", "4", "--resume", str(last), order=[paths[0], str(copy)])
    assert torch.load(last, weights_only=True)["epoch"] == 4


def test_errors(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    a, b = str(teacher_ckpt("resnet8x4")), str(teacher_ckpt("wrn_16_2"))
    line = one_line_user_error(capsys, "camkd", "resnet8", cifar100_tiny, tmp_path, teacher=a)
    assert "2 or more teachers" in line and "--path_t A B" in line
    line = one_line_user_error(capsys, "fitnet", "resnet8", cifar100_tiny, tmp_path,
                               "--path_t", a, b)
    assert "--distill fitnet reads one teacher's features" in line
    assert "distil several with camkd, dist, dkd, kd," in line  # generated from their reads
    line = one_line_user_error(capsys, "kd", "resnet8", cifar100_tiny, tmp_path,
                               "--path_t", a, b, "--model_t", "resnet8x4")
    assert "--model_t names 1 architectures for 2" in line
    line = one_line_user_error(capsys, "kd", "resnet8", cifar100_tiny, tmp_path,
                               "--evaluate", a, "--model_t", "resnet8x4", "wrn_16_2")
    assert "--evaluate scores one checkpoint; give one --model_t" in line
    assert not (tmp_path / "students").exists()

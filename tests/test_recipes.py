"""Recipes (issue 17, parts 1 and 4): optimizers and schedules from torch.optim, label
smoothing, config.yaml in every run folder and ``--config FILE``."""
import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import helper.run.trainer
import train_teacher
from distillers import MethodConfig, RunInfo, Stage, distiller_names
from distillers.combine import configure
from helper.run import config_file
from helper.run.loop import step_lr
from helper.run.options import parse_student_args, parse_teacher_args
from helper.run.run_folder import student_run_name
from helper.run.schedule import current_lr, make_optimizer, make_scheduler
from helper.run.trainer import stage_optimizer, stage_scheduler
from models import create_model


def _lrs(scheduler, optimizer, epochs):
    """The lr of each epoch 1..epochs, the scheduler stepped once after each."""
    out = []
    for _ in range(epochs):
        out.append(current_lr(optimizer))
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(lr, name="sgd", **kw):
    return make_optimizer([torch.nn.Parameter(torch.zeros(3))], name=name, lr=lr,
                          momentum=0.9, weight_decay=5e-4, **kw)


def _stage_lrs(argv, stage):
    config = parse_teacher_args(["--model", "mlp_800", "--dataset", "mnist", *argv])
    model = create_model("mlp_800", 10)
    distiller = MethodConfig.create("vanilla").build(model, None, RunInfo(epochs=stage.epochs))
    optimizer = stage_optimizer(config, distiller, stage)
    return _lrs(stage_scheduler(config, optimizer, stage), optimizer, stage.epochs)


# --- the default schedule is the old step_lr, epoch by epoch -----------------------------------

@pytest.mark.parametrize("lr, decay, rate, epochs", [
    (0.05, [150, 180, 210], 0.1, 240),      # RepDistiller/SimKD's default
    (0.01, [150, 180, 210], 0.1, 240),      # MobileNet/ShuffleNet's lr
    (0.1, [60, 120, 160], 0.2, 200),        # Tf-KD's
    (0.1, [30, 60, 90], 0.1, 100),
    (0.2, [1], 0.5, 3)])
def test_multistep_gives_step_lr_exactly(lr, decay, rate, epochs):
    opt = _optimizer(lr)
    got = _lrs(make_scheduler(opt, epochs=epochs, decay_epochs=decay, decay_rate=rate), opt, epochs)
    assert got == [step_lr(e, lr, decay, rate) for e in range(1, epochs + 1)]


def test_default_flags_and_a_stage_of_its_own_keep_the_old_lrs():
    main = Stage("main", 240)
    assert _stage_lrs([], main) == [step_lr(e, 0.05, [150, 180, 210], 0.1) for e in range(1, 241)]
    own = Stage("init", 30, lr=0.1, lr_decay_epochs=(10, 20))   # e.g. SSKD's teacher stage
    assert _stage_lrs(["--lr_decay_rate", "0.2"], own) == [
        step_lr(e, 0.1, (10, 20), 0.2) for e in range(1, 31)]


def test_a_stage_gets_its_own_cosine_schedule_and_a_shorter_warmup():
    stage = Stage("init", 3, lr=0.1, lr_decay_epochs=(1,))
    got = _stage_lrs(["--lr_scheduler", "cosine", "--warmup_epochs", "5", "--epochs", "20"], stage)
    assert got == pytest.approx([0.1 / 3, 0.2 / 3, 0.1], rel=1e-9)


# --- the other schedules ----------------------------------------------------------------------

def test_cosine_with_warmup():
    opt = _optimizer(0.1)
    got = _lrs(make_scheduler(opt, name="cosine", epochs=10, warmup_epochs=2), opt, 10)
    want = [0.1 / 3, 0.2 / 3] + [0.05 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    assert got == pytest.approx(want, rel=1e-9)
    assert got[-1] > 0


def test_linear_decays_to_zero_and_step_every_n():
    opt = _optimizer(0.1)
    got = _lrs(make_scheduler(opt, name="linear", epochs=4), opt, 4)
    assert got == pytest.approx([0.1, 0.075, 0.05, 0.025], rel=1e-9)
    opt = _optimizer(0.1)
    got = _lrs(make_scheduler(opt, name="step", epochs=7, decay_step=3, decay_rate=0.1), opt, 7)
    assert got == pytest.approx([0.1] * 3 + [0.01] * 3 + [0.001], rel=1e-9)


def test_multistep_with_warmup_counts_decay_from_the_stage_start():
    opt = _optimizer(0.1)
    got = _lrs(make_scheduler(opt, epochs=8, decay_epochs=[4, 6], decay_rate=0.1,
                              warmup_epochs=1), opt, 8)
    assert got == pytest.approx([0.05, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rel=1e-9)


def test_scheduler_state_resumes_mid_schedule():
    def fresh():
        opt = _optimizer(0.1)
        return opt, make_scheduler(opt, name="cosine", epochs=12, warmup_epochs=3)
    opt, sched = fresh()
    full = _lrs(sched, opt, 12)
    opt, sched = fresh()
    first = _lrs(sched, opt, 5)
    state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
    opt, sched = fresh()
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    assert first + _lrs(sched, opt, 7) == full


def test_optimizers():
    sgd = _optimizer(0.1, nesterov=True)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    assert sgd.defaults["fused"]
    adamw = _optimizer(0.1, name="adamw")
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 5e-4


# --- label smoothing --------------------------------------------------------------------------

def test_label_smoothing_applies_to_the_ce_term():
    torch.manual_seed(0)
    student = create_model("mlp_800", 10)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    distiller = MethodConfig.create("vanilla").build(student, None, RunInfo(epochs=1))
    assert distiller.label_smoothing == 0.0
    logits, losses = distiller(x, y)
    assert torch.allclose(losses["cls"], F.cross_entropy(logits, y))
    distiller = MethodConfig.create("vanilla", label_smoothing=0.1).build(student, None,
                                                                          RunInfo(epochs=1))
    logits, losses = distiller(x, y)
    assert torch.allclose(losses["cls"], F.cross_entropy(logits, y, label_smoothing=0.1))
    assert not torch.allclose(losses["cls"], F.cross_entropy(logits, y))


def _smoothed_ce_by_hand(logits, targets, eps):
    """Mean over rows of -sum_k q_k log p_k, q = (1 - eps) one_hot + eps / classes."""
    total = 0.0
    for row, label in zip(logits.double().tolist(), targets.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        q = [(1 - eps) * (k == label) + eps / len(row) for k in range(len(row))]
        total -= sum(qk * (v - log_z) for qk, v in zip(q, row))
    return total / len(targets)


def test_label_smoothing_arrives_with_the_weights():
    config = MethodConfig.create("kd", label_smoothing=0.1)
    assert config.weights.label_smoothing == 0.1
    assert (config.weights.cls, config.weights.div, config.weights.beta) == (1.0, 1.0, 0.0)
    torch.manual_seed(0)
    student, teacher = create_model("mlp_800", 10), create_model("mlp_800", 10)
    distiller = config.build(student, teacher, RunInfo(epochs=1))
    assert distiller.label_smoothing == 0.1
    distiller.train()
    x, y = torch.randn(4, 1, 28, 28), torch.tensor([0, 3, 7, 9])
    logits, losses = distiller(x, y)
    assert set(losses) == {"cls", "kd"}
    expected = F.cross_entropy(logits.detach(), y, label_smoothing=0.1)
    assert losses["cls"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses["cls"].item() == pytest.approx(_smoothed_ce_by_hand(logits, y, 0.1), rel=1e-5)
    with torch.no_grad():  # the KD term does not smooth
        kd = MethodConfig.create("kd").build(student, teacher, RunInfo(epochs=1))
        assert kd.label_smoothing == 0.0
        assert kd(x, y)[1]["kd"].item() == pytest.approx(losses["kd"].item(), rel=1e-6)


def test_label_smoothing_from_the_flags():
    for flags, value in ((Namespace(), 0.0), (Namespace(label_smoothing=0.2), 0.2)):
        assert MethodConfig.from_namespace("kd", flags).weights.label_smoothing == value
    combined = configure("kd+dml", Namespace(label_smoothing=0.1, div=1.0, beta={"dml": 1.0}))
    assert combined.weights.label_smoothing == 0.1
    assert [p.weights.label_smoothing for p in combined.parts] == [0.1, 0.1]
    assert [p.weights.beta for p in combined.parts] == [0.0, 1.0]
    config = parse_student_args(["--distill", "kd", "--label_smoothing", "0.1"])
    assert config.method.weights.label_smoothing == 0.1
    plain = parse_student_args(["--distill", "kd"])
    assert plain.method.weights.label_smoothing == 0.0
    # the run folder's name keeps -c, -d and -b only
    assert student_run_name(config, "resnet32x4") == student_run_name(plain, "resnet32x4")


# --- bad input: one line, exit 2, no run folder ---------------------------------------------------

def _fails(main, argv, capsys, tmp_path, *fragments):
    with pytest.raises(SystemExit) as e:
        main([*argv, "--save_folder", str(tmp_path / "save")])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    assert not (tmp_path / "save").exists()


@pytest.mark.parametrize("argv, fragments", [
    (["--optimizer", "adam"], ["invalid choice", "adamw"]),
    (["--lr_scheduler", "poly"], ["invalid choice", "cosine"]),
    (["--warmup_epochs", "-1"], ["0 or more"]),
    (["--warmup_epochs", "5", "--epochs", "5"], ["--warmup_epochs 5 must be less than"]),
    (["--label_smoothing", "1.5"], ["in [0, 1)"]),
    (["--lr_decay_step", "0", "--lr_scheduler", "step"], ["positive"]),
    (["--lr_scheduler", "step"], ["needs --lr_decay_step"]),
    (["--nesterov", "--optimizer", "adamw"], ["--nesterov"]),
    (["--nesterov", "--momentum", "0"], ["needs momentum"]),
    (["--warmup_epochs", "160"], ["--lr_decay_epochs 150", "warm-up"]),
])
def test_bad_recipe_flags(argv, fragments, capsys, tmp_path):
    _fails(train_teacher.main, ["--model", "mlp_800", "--dataset", "mnist", *argv], capsys,
           tmp_path, *fragments)


@pytest.mark.parametrize("text, fragments", [
    ("epochs: 3\nmagic: 1\n", ["unknown option magic"]),
    ("epochs: three\n", ["epochs", "expected a int"]),
    ("epochs: -3\n", ["epochs", "positive"]),
    ("lr_scheduler: poly\n", ["lr_scheduler", "not one of"]),
    ("deterministic: 1\n", ["deterministic", "true or false"]),
    ("lr_decay_epochs: [30, 20]\n", ["lr_decay_epochs", "increasing"]),
    ("learning_rate: [0.1]\n", ["learning_rate"]),
    ("- a\n- b\n", ["'option: value'"]),
    ("epochs: [3\n", ["not valid YAML"]),
    ("resume: auto\n", ["unknown option resume"]),
])
def test_bad_config_files(text, fragments, capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _fails(train_teacher.main, ["--config", str(path)], capsys, tmp_path, f"--config {path}",
           *fragments)
    _fails(train_teacher.main, ["--config", str(tmp_path / "none.yaml")], capsys, tmp_path,
           "cannot read")


# --- config.yaml round trips -----------------------------------------------------------------

def _round_trip(parse, argv, tmp_path):
    config = parse(argv)
    path = tmp_path / "config.yaml"
    config_file.write(path, config.file_args(), "x.py")
    again = parse(["--config", str(path)])
    assert again.file_args() == config.file_args()
    assert again.method == config.method and again.learning_rate == config.learning_rate


@pytest.mark.parametrize("method", distiller_names())
def test_every_method_round_trips_through_config_yaml(method, tmp_path):
    _round_trip(parse_student_args, ["--distill", method, "--trial", "7", "--epochs", "30",
                                     "--lr_scheduler", "cosine", "--warmup_epochs", "2"],
                tmp_path)


def test_teacher_round_trips_and_flags_override(tmp_path):
    _round_trip(parse_teacher_args, ["--model", "MobileNetV2", "--lr_decay_epochs", "5,9",
                                     "--nesterov", "--label_smoothing", "0.1"], tmp_path)
    path = tmp_path / "config.yaml"
    config = parse_teacher_args(["--config", str(path), "--epochs", "12", "--trial", "x"])
    assert config.args.epochs == 12 and config.args.trial == "x"
    assert config.args.nesterov and config.args.lr_decay_epochs == [5, 9]
    assert config.learning_rate == 0.01   # the derived default, written as a value
    text = yaml.safe_load(path.read_text())
    assert "resume" not in text and "config" not in text and "cls" not in text


# --- whole runs --------------------------------------------------------------------------------

def _mnist(data, save, *extra):
    return ["--model", "mlp_800", "--dataset", "mnist", "--data_folder", str(data),
            "--save_folder", str(save), "--batch_size", "256", "--print_freq", "1000",
            "--deterministic", *extra]


def _weights(run):
    return torch.load(Path(run) / "last.pth", weights_only=True)


def test_config_yaml_reruns_the_run(mnist_small, tmp_path):
    train_teacher.main(_mnist(mnist_small, tmp_path / "a", "--epochs", "2", "--lr_scheduler",
                              "cosine", "--warmup_epochs", "1", "--label_smoothing", "0.1",
                              "--nesterov", "--learning_rate", "0.02"))
    run_a = tmp_path / "a" / "teachers" / "mlp_800_vanilla_mnist_trial_0"
    stored = yaml.safe_load((run_a / "config.yaml").read_text())
    assert stored["lr_scheduler"] == "cosine" and stored["label_smoothing"] == 0.1
    assert stored["learning_rate"] == 0.02 and stored["epochs"] == 2
    train_teacher.main(["--config", str(run_a / "config.yaml"), "--save_folder",
                        str(tmp_path / "b")])
    run_b = tmp_path / "b" / "teachers" / run_a.name
    a, b = _weights(run_a), _weights(run_b)
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # the run folder's config.yaml does not break --resume (two more epochs)
    train_teacher.main(["--config", str(run_a / "config.yaml"), "--resume", "--epochs", "3"])
    assert _weights(run_a)["epoch"] == 3


def _lr_scalars(run):
    acc = EventAccumulator(str(run))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("lr")]


def _killed_in_third_epoch(monkeypatch, argv):
    """``train_teacher.main(argv)`` interrupted at the start of its third epoch."""
    real = helper.run.trainer.train_one_epoch
    calls = {"n": 0}

    def killed_in_third(model, loader, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real(model, loader, *args, **kwargs)

    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", killed_in_third)
    with pytest.raises(KeyboardInterrupt):
        train_teacher.main(argv)
    monkeypatch.setattr(helper.run.trainer, "train_one_epoch", real)


def test_resume_mid_cosine_with_warmup_matches_uninterrupted(mnist_small, tmp_path, monkeypatch):
    flags = ("--epochs", "4", "--lr_scheduler", "cosine", "--warmup_epochs", "1",
             "--learning_rate", "0.05")
    train_teacher.main(_mnist(mnist_small, tmp_path / "full", *flags))
    _killed_in_third_epoch(monkeypatch, _mnist(mnist_small, tmp_path / "cut", *flags))
    train_teacher.main([*_mnist(mnist_small, tmp_path / "cut", *flags), "--resume"])
    name = "teachers/mlp_800_vanilla_mnist_trial_0"
    full, cut = tmp_path / "full" / name, tmp_path / "cut" / name
    lrs = _lr_scalars(full)
    assert lrs == _lr_scalars(cut)
    want = [0.025] + [0.025 * (1 + math.cos(math.pi * k / 3)) for k in range(3)]
    assert [v for _, v in lrs] == pytest.approx(want, rel=1e-6)
    a, b = _weights(full), _weights(cut)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["scheduler"] == b["scheduler"]


def test_resume_from_a_checkpoint_without_scheduler_state(mnist_small, tmp_path, monkeypatch):
    """A last.pth written before the schedulers: the stage's epochs are replayed."""
    flags = ("--epochs", "3", "--lr_decay_epochs", "1,2", "--lr_decay_rate", "0.5")
    train_teacher.main(_mnist(mnist_small, tmp_path / "full", *flags))
    _killed_in_third_epoch(monkeypatch, _mnist(mnist_small, tmp_path / "cut", *flags))
    name = "teachers/mlp_800_vanilla_mnist_trial_0"
    full, cut = tmp_path / "full" / name, tmp_path / "cut" / name
    old = _weights(cut)
    del old["scheduler"]
    for group in old["optimizer"]["param_groups"]:
        del group["initial_lr"]
    torch.save(old, cut / "last.pth")
    train_teacher.main([*_mnist(mnist_small, tmp_path / "cut", *flags), "--resume"])
    assert _lr_scalars(full) == _lr_scalars(cut)
    assert [v for _, v in _lr_scalars(cut)] == pytest.approx([0.05, 0.025, 0.0125], rel=1e-6)
    a, b = _weights(full), _weights(cut)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_growing_epochs_stretches_a_cosine_schedule(mnist_small, tmp_path):
    flags = ("--lr_scheduler", "cosine", "--learning_rate", "0.05")
    train_teacher.main(_mnist(mnist_small, tmp_path, "--epochs", "2", *flags))
    train_teacher.main([*_mnist(mnist_small, tmp_path, "--epochs", "4", *flags), "--resume"])
    lrs = [v for _, v in _lr_scalars(tmp_path / "teachers/mlp_800_vanilla_mnist_trial_0")]
    want = [0.05, 0.025] + [0.025 * (1 + math.cos(math.pi * k / 4)) for k in (2, 3)]
    assert lrs == pytest.approx(want, rel=1e-6)


def test_multi_stage_resume_with_cosine_and_warmup(tmp_path, monkeypatch):
    """SSKD (a teacher stage of its own, then the student): killed in the last epoch and
    resumed under --lr_scheduler cosine --warmup_epochs 1, it ends as an uninterrupted run
    (test_resume_all's check)."""
    import test_resume_all as r
    from conftest import write_cifar100
    data = write_cifar100(tmp_path / "data", n_train=64, n_test=32)
    torch.manual_seed(0)
    model = create_model("resnet14", 100)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, 3, 32, 32))
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": model.state_dict(), "model_name": "resnet14"}, teacher)
    argv = r._argv
    monkeypatch.setattr(r, "_argv", lambda *a: [
        *argv(*a), "--epochs", "3", "--lr_scheduler", "cosine", "--warmup_epochs", "1",
        "--sskd_t_epochs", "2"])
    r.test_killed_and_resumed_run_matches_uninterrupted("sskd", (data, teacher), tmp_path,
                                                        monkeypatch)

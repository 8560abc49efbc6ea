"""Several methods in one run (``--distill a+b -b a=1,b=8``): the composed loss is the sum of
the single-method losses on the same batch, each term logged under its method's name, extras
saved per method, exact resume, and every refusal in one line."""
import dataclasses
from argparse import Namespace

import pytest
import torch
import yaml

from distillers import MethodConfig, RunInfo, Weights
from distillers.combine import Combined, configure
from distillers.crd import CRD
from helper.run.options import parse_student_args
from helpers import assert_gradients, assert_resume_is_exact, one_epoch, read_summary
from models import create_model


def _models():
    torch.manual_seed(0)
    student, teacher = create_model("resnet8x4", 100), create_model("resnet14x4", 100)
    teacher.eval()
    return student, teacher


def _batch():
    torch.manual_seed(1)
    return torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,))


def _combined(spec, **flags):
    student, teacher = _models()
    config = configure(spec, Namespace(**flags))
    return student, teacher, config.build(student, teacher,
                                          RunInfo(epochs=30, batch_size=8, train_size=64))


def test_composed_loss_is_the_sum_of_the_single_method_losses():
    student, teacher, combined = _combined("dkd+reviewkd", beta={"dkd": 1.0, "reviewkd": 8.0},
                                           div=0.5)
    combined.on_epoch_start(25)  # past both methods' warm-ups: factors 1
    images, targets = _batch()
    _, losses = combined.forward_train(images, targets)
    assert set(losses) == {"cls", "kd", "dkd", "reviewkd"}

    # The same terms from the two methods alone, on the same models and the same ABF extras.
    single = {}
    for name, flags in (("dkd", dict(cls=1.0, div=0.5, beta=1.0)),
                        ("reviewkd", dict(cls=0.0, div=0.0, beta=8.0))):
        config = MethodConfig.from_namespace(name, Namespace(**flags))
        alone = config.build(student, teacher, RunInfo(epochs=30, batch_size=8))
        alone.load_extra_state_dict({k.split(".", 2)[2]: v for k, v in
                                     combined.extra_state_dict().items()
                                     if k.startswith(f"methods.{name}.")})
        alone.on_epoch_start(25)
        alone.train()
        single.update(alone.forward_train(images, targets)[1])
    assert set(single) == set(losses)
    for key in losses:
        # the same float32 computation on the same inputs, in the same order: equal to rounding
        torch.testing.assert_close(losses[key], single[key], rtol=1e-6, atol=0), key


def test_gradients_reach_the_student_and_every_extra_never_the_teacher():
    student, teacher, combined = _combined("dkd+reviewkd+crd", div=1.0,
                                           beta={"reviewkd": 1.0, "crd": 0.8},
                                           nce_k=16)
    combined.train()
    images, targets = _batch()
    index, contrast = torch.arange(8), torch.randint(0, 64, (8, 17))
    combined.on_epoch_start(25)  # past ReviewKD's warm-up, whose first epoch has factor 0
    _, losses = combined.forward_train(images, targets, index=index, contrast_index=contrast)
    assert {"dkd", "reviewkd", "crd"} <= set(losses)
    sum(losses.values()).backward()
    assert_gradients(student, teacher, combined.methods["reviewkd"].abfs,
                     combined.methods["crd"].embed_s)


def test_extras_are_saved_per_method_without_the_student():
    _, _, combined = _combined("dkd+reviewkd")
    state = combined.extra_state_dict()
    assert state and all(k.startswith("methods.reviewkd.abfs.") for k in state)
    _, _, other = _combined("dkd+reviewkd")
    with torch.no_grad():
        for p in other.methods["reviewkd"].parameters():
            p.add_(1.0)
    other.load_extra_state_dict(state)
    for key, value in other.extra_state_dict().items():
        assert torch.equal(value, state[key]), key
    # the student is trained once: no parameter twice in the optimizer's list
    params = combined.trainable_parameters()
    assert len({id(p) for p in params}) == len(params)


def test_dml_peers_train_beside_kd_and_are_saved_alone():
    student, teacher, combined = _combined("kd+dml", div=1.0, beta={"dml": 1.0})
    combined.train()
    images, targets = _batch()
    _, losses = combined.forward_train(images, targets)
    # the peers' CE keeps -c, as DML alone: its peers learn from the labels beside the teacher
    assert set(losses) == {"cls", "kd", "dml", "peers_cls", "peers_dml"}
    peer = combined.methods["dml"].peers[0]
    sum(losses.values()).backward()
    assert_gradients(student, teacher, peer)
    assert set(combined.extra_models()) == {"peer1"}


def test_the_teacher_cache_serves_a_combination_only_of_logit_methods():
    assert _combined("dkd+kd", div=1.0)[2].cacheable == "logits"
    assert _combined("dkd+reviewkd")[2].cacheable is None


def test_label_smoothing_reaches_each_methods_own_ce_terms():
    """--label_smoothing goes with the weights to the combination and to each method: DML's
    peers' CE beside KD is smoothed as the shared CE term."""
    student, teacher, combined = _combined("kd+dml", div=1.0, beta={"dml": 1.0},
                                           label_smoothing=0.1)
    assert combined.label_smoothing == 0.1
    assert [p.label_smoothing for p in combined.methods.values()] == [0.1, 0.1]
    combined.train()
    images, targets = _batch()
    logits, losses = combined.forward_train(images, targets)
    with torch.no_grad():  # train-mode BN: the same batch statistics, so the same logits
        peer = combined.methods["dml"].peers[0](images)
    F = torch.nn.functional
    torch.testing.assert_close(losses["cls"], F.cross_entropy(logits, targets, label_smoothing=0.1))
    torch.testing.assert_close(losses["peers_cls"],
                               F.cross_entropy(peer, targets, label_smoothing=0.1))


def test_teacher_mode_follows_the_teacher_train_switch():
    student, teacher = _models()
    for spec in ("dkd+reviewkd", "reviewkd+dkd"):
        config = configure(spec, Namespace())
        combined = config.build(student, teacher,  # --teacher_train
                                RunInfo(epochs=1, batch_size=8, teacher_train=True))
        combined.train()
        assert teacher.training, spec  # whatever the order of the methods
        combined.eval()
        assert not teacher.training


def test_default_weights_and_run_configuration():
    config = parse_student_args(["--distill", "dkd+crd", "-b", "crd=0.5", "-d", "0"])
    method = config.method
    assert method.name == "dkd+crd" and method.betas == {"dkd": 1.0, "crd": 0.5}
    assert (method.weights.cls, method.weights.div) == (1.0, 0.0)
    args = config.effective_args()
    assert args["beta"] == "dkd=1,crd=0.5" and args["dkd_beta"] == 8.0 and args["nce_k"] == 16384
    # the effective -b is a valid -b: config.yaml's value parses back to the same weights
    again = parse_student_args(["--distill", "dkd+crd", "-b", args["beta"], "-d", "0"])
    assert again.method == method


@pytest.mark.parametrize("argv, words", [
    (["--distill", "dkd+reviewkd", "-b", "2"], ["ambiguous", "-b dkd=2,reviewkd=2"]),
    (["--distill", "dkd+crd", "-b", "fitnet=1"], ["-b names fitnet", "dkd, crd"]),
    (["--distill", "dkd", "-b", "crd=1"], ["-b names crd", "-b dkd=WEIGHT"]),
    (["--distill", "dkd+crd", "-b", "crd=-1", "-d", "0"], ["-b crd must be 0 or more"]),
    (["--distill", "dkd+nope"], ["unknown method 'nope'"]),
    (["--distill", "dkd+dkd"], ["names dkd twice"]),
    (["--distill", "kd+simkd", "-c", "1"], ["simkd", "cannot be combined"]),
    (["--distill", "dkd+crd", "-b", "crd="], ["name=weight pairs"]),
    (["--distill", "kd+crd", "-b", "kd=0,crd=0", "-c", "0", "-d", "0"], ["no loss term"]),
    (["--distill", "dkd+fitnet"], ["different -d", "dkd 0", "fitnet 1", "give -d"]),
])
def test_bad_combinations_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        parse_student_args(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


def test_combinations_that_cannot_share_a_step_are_refused():
    student, teacher = _models()
    run = RunInfo(epochs=2, batch_size=8, train_size=64)
    with pytest.raises(Exception, match="trains in stages"):  # FT's init stage
        configure("kd+ft", Namespace(div=1.0)).build(student, teacher, run)
    with pytest.raises(Exception, match="features at different points"):
        configure("reviewkd+at", Namespace(div=0.0)).build(student, teacher, run)

    class CRD2(CRD):  # a second method asking for CRD's negatives with another nce_k
        name = "crd2"
    alone = dict(weights=Weights(0.0, 0.0, 0.8), run=run)
    parts = [CRD(student, teacher, dataclasses.replace(CRD.Options(), nce_k=16), **alone),
             CRD2(student, teacher, dataclasses.replace(CRD.Options(), nce_k=32), **alone)]
    with pytest.raises(Exception, match="contrast_index"):
        Combined(student, teacher, parts, weights=Weights(1.0, 0.0, 0.0), kd=None, run=run)


def test_a_combined_run_logs_each_term_and_resumes_exactly(cifar100_tiny, teacher_ckpt,
                                                           tmp_path, capsys):
    teacher = teacher_ckpt("resnet14x4")
    flags = ("--distill", "dkd+crd", "-b", "dkd=1,crd=0.8", "-d", "0", "--nce_k", "64",
             "--deterministic")
    run, summary = one_epoch("dkd+crd", teacher, "resnet8x4", cifar100_tiny, tmp_path / "one",
                             *flags[2:])
    assert run.name.endswith("_dkd+crd_r:1_a:0_b:1,0.8_0")
    progress = [line for line in capsys.readouterr().out.splitlines() if "img/s" in line]
    assert progress and all(f" {term} " in progress[-1] for term in ("cls", "dkd", "crd"))
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["distill"] == "dkd+crd" and config["beta"] == "dkd=1,crd=0.8"

    def resume_run(folder, *more):
        from helpers import run_student
        return run_student("dkd+crd", "resnet8x4", cifar100_tiny, tmp_path / folder,
                           *flags[2:], *more, teacher=teacher)
    assert_resume_is_exact(resume_run)
    assert read_summary(tmp_path / "a" / "students" / run.name)["epochs_done"] == 2

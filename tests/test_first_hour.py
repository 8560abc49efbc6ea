"""What a new user meets in the first hour of train_student.py: refusals that do not need the
teacher come before it is scored, and the teachers' scores say when one is useless."""
import pytest

from helpers import run_student, save_teacher


@pytest.fixture(scope="module")
def untrained(tmp_path_factory):
    """Two untrained 100-class teachers: chance level on any data."""
    folder = tmp_path_factory.mktemp("untrained")
    return [save_teacher(name, folder / f"{name}.pth") for name in ("resnet8", "resnet14")]


def test_a_teacher_at_chance_level_is_a_warning_and_the_ensemble_is_scored(
        untrained, cifar100_micro, tmp_path, capsys):
    run_student("kd", "resnet8", cifar100_micro, tmp_path, "--path_t", *map(str, untrained),
                teacher=None, batch_size=10)
    out = capsys.readouterr().out.splitlines()
    scores = [line for line in out if ": test top-1" in line]
    assert [line.split(" from ")[0] for line in scores[:2]] == ["teacher resnet8",
                                                                 "teacher resnet14"]
    assert scores[2].startswith("the ensemble of the 2 teachers (mean logits): test top-1")
    warnings = [line for line in out if line.startswith("warning:")]
    assert len(warnings) == 3 and all("chance level for 100 classes (1.00)" in w for w in warnings)


def test_a_run_folder_taken_is_refused_before_the_teacher_is_scored(untrained, cifar100_micro,
                                                                      tmp_path, capsys):
    run_student("kd", "resnet8", cifar100_micro, tmp_path, teacher=untrained[0], batch_size=10)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run_student("kd", "resnet8", cifar100_micro, tmp_path, teacher=untrained[0],
                    batch_size=10)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert "already holds a run" in captured.err and "test top-1" not in captured.out
    with pytest.raises(SystemExit):  # nor is a teacher cache built for it
        run_student("kd", "resnet8", cifar100_micro, tmp_path, "--teacher_cache",
                    str(tmp_path / "cache"), teacher=untrained[0], batch_size=10)
    assert "already holds a run" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


LOGITS_ONLY = """import torch.nn as nn


def build(num_classes):
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))
"""


@pytest.mark.parametrize("case,extra,message", [
    ("nce_k", ["--distill", "crd", "--nce_k", "100000"], "--nce_k 100000 is more than"),
    ("logit-only model", ["--distill", "fitnet", "--model_s", "{net}:build"],
     "without the feature API, so feature methods cannot use it"),
])
def test_refusals_needing_no_teacher_score_come_first(untrained, cifar100_micro, tmp_path,
                                                      capsys, case, extra, message):
    net = tmp_path / "net.py"
    net.write_text(LOGITS_ONLY)
    extra = [a.format(net=net) for a in extra]
    with pytest.raises(SystemExit) as e:
        run_student("kd", "resnet8", cifar100_micro, tmp_path, *extra, teacher=untrained[0],
                    batch_size=10)
    assert e.value.code == 2
    captured = capsys.readouterr()
    assert message in captured.err and "test top-1" not in captured.out
    assert not (tmp_path / "students").exists()

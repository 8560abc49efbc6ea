"""What a user sees is scoped to the run (issue 27, part 2): config.yaml and summary.json hold
the run-wide options and the chosen methods' own, config.yaml keeps paths as given and
summary.json resolves them; a config.yaml written before the scoping (every method's options,
old option names) still loads and reruns; ``--help`` fits one screen, ``--distill X --help``
adds X's options, ``--help_all`` lists every flag; ``python -m distillers`` lists the methods
and its ``--markdown`` is README.md's methods table."""
import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
import yaml

import train_student
import train_teacher
from distillers import distiller_classes, distiller_names, get_distiller
from distillers.__main__ import listing, markdown_table, option_defaults
from distillers.combine import split_methods
from distillers.registry import method_option_names, switches
from helper.run.options import parse_student_args, student_parser

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# Written by train_student.py as it was at these commits (``git archive``), for
# --distill kd / reviewkd --reviewkd_teacher_train --path_t save/teachers/.../best.pth
# --model_s resnet8x4 --epochs 2 --dataset cifar100: every method's options, and in the older
# one --teacher_train still under the method's own name.
OLD_KD = FIXTURES / "config_50f976f_kd.yaml"
OLD_REVIEWKD = FIXTURES / "config_96c1449_reviewkd.yaml"
OLD_FLAGS = ["--path_t", "save/teachers/resnet32x4_vanilla_cifar100_trial_0/best.pth",
             "--model_s", "resnet8x4", "--epochs", "2", "--dataset", "cifar100"]


def _others(spec):
    return method_option_names() - method_option_names(split_methods(spec))


# ---- config.yaml and summary.json hold the run's options ------------------------------------

@pytest.mark.parametrize("spec", [*distiller_names(), "dkd+rkd"])
def test_config_holds_only_the_chosen_methods_options(spec):
    config = parse_student_args(["--distill", spec])
    own = method_option_names(split_methods(spec))
    for values in (config.file_args(), config.effective_args(), config.summary_args()):
        assert not set(values) & _others(spec), spec
        assert {f.name for name in split_methods(spec)
                for f in dataclasses.fields(get_distiller(name).Options)} <= set(values)
    assert not set(config.option_names) & _others(spec)
    assert own - set(config.file_args()) <= {k for n in split_methods(spec) for k in
                                             getattr(get_distiller(n), "renamed_options", {})}


def test_a_kd_config_is_less_than_half_of_the_old_one():
    keys = set(parse_student_args(["--distill", "kd"]).file_args())
    old = set(yaml.safe_load(OLD_KD.read_text()))
    assert len(keys) < len(old) / 2 and keys <= old
    assert not keys & method_option_names()


def test_a_kd_run_writes_paths_as_given_and_resolves_them_in_the_summary(
        cifar100_micro, teacher_ckpt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = os.path.relpath(cifar100_micro, tmp_path)
    teacher = os.path.relpath(teacher_ckpt("resnet8"), tmp_path)
    train_student.main(["--distill", "kd", "--model_s", "resnet8", "--path_t", teacher,
                        "--teacher_forward", "eager", "--data_folder", data,
                        "--save_folder", "runs", "--epochs", "1", "--batch_size", "16",
                        "--print_freq", "1000"])
    [run] = (tmp_path / "runs" / "students").iterdir()
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert not set(stored) & method_option_names()
    assert (stored["data_folder"], stored["save_folder"], stored["path_t"]) == (data, "runs", teacher)
    args = json.loads((run / "summary.json").read_text())["args"]
    assert not set(args) & method_option_names()
    assert args["data_folder"] == os.path.realpath(data)
    assert args["save_folder"] == os.path.realpath("runs")
    assert args["path_t"] == os.path.realpath(teacher)


# ---- a config.yaml written before the scoping --------------------------------------------------

def _same_run(a, b):
    assert a.file_args() == b.file_args() and a.method == b.method
    assert a.learning_rate == b.learning_rate


def test_an_old_kd_config_loads_as_its_flags():
    old = parse_student_args(["--config", str(OLD_KD)])
    _same_run(old, parse_student_args(["--distill", "kd", *OLD_FLAGS]))


def test_an_old_name_of_a_chosen_methods_option_is_read_under_its_new_one():
    old = parse_student_args(["--config", str(OLD_REVIEWKD)])
    assert old.args.teacher_train
    _same_run(old, parse_student_args(["--distill", "reviewkd", "--teacher_train", *OLD_FLAGS]))


def test_other_methods_options_of_an_old_config_are_ignored():
    """--distill on the command line picks the method: the file's options of the others (its
    reviewkd_teacher_train among them) are dropped, the new method's take their defaults (the
    file's -c/-d/-b, written as the run used them, stay)."""
    for spec in ("ofd", "dkd", "dkd+rkd"):
        beta = "dkd=1,rkd=1" if "+" in spec else "1"  # the file's -b 5 names no method
        old = parse_student_args(["--config", str(OLD_REVIEWKD), "--distill", spec, "-b", beta])
        new = parse_student_args(["--distill", spec, "-b", beta, *OLD_FLAGS])
        assert not old.args.teacher_train, spec
        assert set(old.file_args()) == set(new.file_args())
        assert old.method.option_values() == new.method.option_values()


def test_an_old_config_still_reruns_bit_identically(cifar100_micro, teacher_ckpt, tmp_path):
    flags = ["--model_s", "resnet8", "--path_t", str(teacher_ckpt("resnet8")),
             "--teacher_forward", "eager", "--data_folder", str(cifar100_micro),
             "--epochs", "1", "--batch_size", "16", "--print_freq", "1000", "--deterministic"]
    train_student.main(["--config", str(OLD_KD), *flags, "--save_folder", str(tmp_path / "a")])
    train_student.main(["--distill", "kd", "--dataset", "cifar100", *flags,
                        "--save_folder", str(tmp_path / "b")])
    runs = [next((tmp_path / side / "students").iterdir()) for side in "ab"]
    assert runs[0].name == runs[1].name
    a, b = (torch.load(run / "last.pth", weights_only=True)["model"] for run in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    stored = [yaml.safe_load((run / "config.yaml").read_text()) for run in runs]
    assert {k for k in stored[0] if stored[0][k] != stored[1].get(k)} == {"save_folder"}
    assert set(stored[0]) == set(stored[1])


# ---- --help ----------------------------------------------------------------------------------

def _help(capsys, main, *argv):
    with pytest.raises(SystemExit) as e:
        main([*argv])
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.fixture
def screen(monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")


def test_help_is_one_screen_of_common_flags(capsys, screen):
    text = _help(capsys, train_student.main, "--help")
    assert len(text.splitlines()) < 80
    for flag in ("--batch_size", "--path_t", "--distill", "--epochs", "--config", "-b"):
        assert flag in text
    assert "--help_all" in text and "--distill METHOD --help" in text
    assert "--dkd_beta" not in text and "--nce_k" not in text
    assert len(_help(capsys, train_teacher.main, "-h").splitlines()) < 80


def test_help_with_a_method_adds_its_options(capsys, screen):
    text = _help(capsys, train_student.main, "--distill", "dkd+crd", "--help")
    assert "--dkd_beta" in text and "--nce_k" in text and "--kd_T" in text
    assert "--at_p" not in text and "--reviewkd_warmup" not in text
    assert "--init_epochs" in _help(capsys, train_student.main, "--help", "--distill", "ft")


def test_help_all_lists_every_flag(capsys, screen):
    text = _help(capsys, train_student.main, "--help_all")
    assert text == student_parser().format_help()
    for action in student_parser()._actions:
        assert action.option_strings[0] in text


# ---- python -m distillers and the README's table ------------------------------------------------

def test_every_method_has_its_paper_code_and_shown_defaults():
    for cls in distiller_classes():
        ref = cls.reference
        assert ref.label and ref.code, cls.name
        assert set(ref.shown) <= set(option_defaults(cls)), cls.name
    for ref in switches():
        assert ref.flags and ref.paper and ref.code
    # each its own row of the table, which never follows the order the files were imported in
    rows = [r.row for r in [cls.reference for cls in distiller_classes()] + switches()]
    assert None not in rows and len(set(rows)) == len(rows)


def test_listing_names_every_method():
    text = listing()
    for cls in distiller_classes():
        assert f"\n{cls.name}" in text and cls.reference.code in text


def test_readme_methods_table_is_the_generated_one():
    readme = (REPO / "README.md").read_text()
    start = readme.index(markdown_table().splitlines()[0])
    end = readme.index("\n\n", start) + 1
    assert readme[start:end] == markdown_table(), "run: python -m distillers --markdown"

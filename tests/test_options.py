"""Method options and the run configuration: each method declares its own flags, the command
line is generated from those declarations, parsing never writes to the namespace, and every
method builds from its options object alone."""
import dataclasses
import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from distillers import (KDOptions, KDTerm, RunInfo, WeightOptions, Weights, distiller_classes,
                        get_distiller, option_owners)
from distillers.options import declaring_classes, flag_names
from helper.core.errors import UserError
from helper.run.options import parse_student_args, parse_teacher_args, student_parser
from models import create_model
from models.teachers import TeacherEnsemble

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_no_two_option_groups_share_a_flag():
    owner_of = {}
    for name, options_cls in option_owners():
        for cls in declaring_classes(options_cls):
            for field in dataclasses.fields(cls):
                if field.name not in cls.__dict__.get("__annotations__", {}):
                    continue
                for flag in flag_names(field):
                    assert owner_of.setdefault(flag, cls) is cls, \
                        f"{flag} is declared by {owner_of[flag].__qualname__} and {cls.__qualname__}"
    assert "--init_epochs" in owner_of and "--nce_k" in owner_of and "-f" in owner_of
    student_parser()  # argparse itself refuses a flag added twice


def _help_sections():
    """``{group title: its help text}`` of ``train_student.py --help``."""
    text = student_parser().format_help()
    return dict(re.findall(r"^(\S[^\n]*):\n((?:(?:  [^\n]*)?\n)*)", text + "\n", re.M))


def test_help_lists_each_method_options_under_its_name():
    sections = _help_sections()
    for method in distiller_classes():
        own = [f for f in dataclasses.fields(method.Options)
               if f.name in method.Options.__dict__.get("__annotations__", {})]
        for field in own:
            assert f"--{field.name}" in sections[method.name], (method.name, field.name)
    assert "--init_epochs" in sections["init stage (ab, fsp, ft)"]
    kd = next(title for title in sections if title.startswith("kd term"))
    assert "--kd_T" in sections[kd] and "--logit_stand" in sections[kd]
    assert "--tfkd_mode" not in sections["kd"] if "kd" in sections else True


def test_parsing_gives_a_read_only_namespace_and_derives_into_the_config():
    config = parse_student_args(["--distill", "mgd", "--mgd_with_kd", "1", "--model_s", "ShuffleV2",
                                 "--batch_size", "64", "--adjust_lr"])
    before = dict(vars(config.args))
    with pytest.raises(AttributeError, match="read-only"):
        config.args.learning_rate = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.learning_rate = 1.0
    # derived once: the learning rate's default by model, the method's weights and temperature
    assert config.args.learning_rate is None and config.learning_rate == 0.01
    assert config.method.weights == Weights(cls=1.0, div=1.0, beta=1.0)
    assert config.method.kd.kd_T == 1.5 and config.args.kd_T == 4.0
    # per process: the batch of one of two processes, the lr scaled to the total batch (4 x 32)
    two = config.for_process(local_size=2, world_size=4)
    assert (two.batch_per_process, two.learning_rate) == (32, 0.01 * 32 * 4 / 64)
    assert two.run_info.batch_size == 32 and config.batch_per_process == 64
    assert two.data.batch_size == 64  # the flag: one machine's batch
    assert dict(vars(config.args)) == before
    with pytest.raises(UserError, match="does not split evenly"):
        config.for_process(local_size=3, world_size=3)


def test_the_teacher_script_has_no_method_flags():
    config = parse_teacher_args(["--model", "vgg8"])
    assert config.method.name == "vanilla" and config.method.weights == Weights(1.0, 0.0, 0.0)
    assert config.learning_rate == 0.05
    assert not hasattr(config.args, "kd_T") and not hasattr(config.args, "nce_k")


def test_a_bad_method_option_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        parse_student_args(["--distill", "fitnet", "--fitnet_stage1_epochs", "-1"])
    assert e.value.code == 2
    assert "--fitnet_stage1_epochs must be 0 or more" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_student_args(["--kd_T", "0"])


@pytest.mark.parametrize("method", [cls.name for cls in distiller_classes()])
def test_each_method_builds_from_its_options_object_alone(method):
    """No namespace anywhere: the class, its ``Options()``, the weights, the KD term and
    ``RunInfo``; a forward/backward pass gives finite losses."""
    cls = get_distiller(method)
    options = cls.Options()
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    if not cls.requires_teacher(options):
        teacher = None
    elif cls.min_teachers > 1:
        teacher = TeacherEnsemble([teacher, create_model("resnet8", 10)])
    div = 1.0 if teacher is not None else 0.0  # a method without teacher refuses a KD term
    distiller = cls(student, teacher, options, weights=Weights(1.0, div, 1.0), kd=KDTerm(4.0),
                    run=RunInfo(epochs=2, batch_size=8, num_classes=10, train_size=64))
    assert distiller.options is options
    stage = distiller.stages()[-1]
    distiller.on_epoch_start(1, None, stage)
    distiller.train()
    batch = {}
    if "contrast_index" in distiller.batch_requests():
        batch = {"index": torch.arange(8), "contrast_index": torch.randint(0, 64, (8, 17))}
        batch["contrast_index"][:, 0] = batch["index"]
    if "strong_images" in distiller.batch_requests():  # MLKD's second view
        batch["strong_images"] = torch.randn(8, 3, 32, 32)
    _, losses = distiller.forward_train(torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), **batch)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_weight_and_kd_options_are_their_own_objects():
    assert WeightOptions().cls is None and KDOptions().kd_T == 4.0
    term = KDTerm.from_options(KDOptions(kd_T=2.0, logit_stand=True))
    assert term.T == 2.0 and term.logit_stand and term.temperature is None
    assert KDTerm.from_options(KDOptions(ctkd=True)).temperature is not None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_semckd_attention_is_sized_for_the_batch_of_one_process(cifar100_tiny, teacher_ckpt, tmp_path):
    """Two Gloo processes with --batch_size 64 get 32 each: SemCKD's query/key MLPs take 32
    inputs (SimKD's per-GPU batch), and the run resumes."""
    argv = [sys.executable, os.path.join(REPO, "train_student.py"), "--distill", "semckd",
            "--model_s", "resnet8", "--path_t", str(teacher_ckpt("resnet14")),
            "--dataset", "cifar100", "--data_folder", str(cifar100_tiny), "--save_folder",
            str(tmp_path), "--batch_size", "64", "--print_freq", "1000",
            "--multiprocessing-distributed", "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        url = f"tcp://127.0.0.1:{_free_port()}"
        subprocess.run(argv + extra + ["--dist-url", url], check=True, env=env, timeout=300,
                       capture_output=True)
    run = next((tmp_path / "students").iterdir())
    last = torch.load(run / "last.pth", weights_only=True)
    assert last["epoch"] == 2
    query_inputs = {v.shape[1] for k, v in last["extras"].items()
                    if k.startswith("attention.query") and k.endswith("linear1.weight")}
    assert query_inputs == {32}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["config"]["batch_size_per_process"] == 32 and summary["args"]["batch_size"] == 64


# ---- the run's own option groups -------------------------------------------------------------

def test_every_run_flag_lives_in_one_typed_group():
    from helper.run.options import RUN_GROUPS, TeacherOptions
    config = parse_student_args(["--distill", "kd", "--path_t", "t.pth", "--epochs", "12",
                                 "--lr_decay_epochs", "5,9", "--nesterov", "--batch_size", "32",
                                 "--amp_dtype", "bf16", "--amp", "--trial", "x", "--aug",
                                 "randaugment", "--teacher_forward", "eager", "--nproc", "2"])
    assert config.optim.epochs == 12 and config.optim.lr_decay_epochs == (5, 9)
    assert config.optim.nesterov and config.data.batch_size == 32
    assert config.precision.amp and config.precision.amp_dtype == "bf16"
    assert config.run.trial == "x" and config.augment.aug == "randaugment"
    assert config.teacher.path_t == "t.pth" and config.teacher.teacher_forward == "eager"
    assert config.dist.nproc == 2
    # every flag but the student, the method and the method's options belongs to one group
    owners = {}
    for _, group in RUN_GROUPS + (("teacher", TeacherOptions),):
        for field in dataclasses.fields(group):
            assert field.name not in owners, f"--{field.name} in {owners.get(field.name)} too"
            owners[field.name] = group.__name__
    method_flags = {f.name for _, options in option_owners() for f in dataclasses.fields(options)}
    for action in student_parser()._actions:
        if action.dest not in ("help", "model_s", "distill") and action.dest not in method_flags:
            assert action.dest in owners, f"--{action.dest} belongs to no option group"


def test_a_run_configuration_is_built_in_code_without_argv():
    from helper.run.options import RunConfig
    config = RunConfig.create("ShuffleV2", data={"dataset": "cifar10", "batch_size": 32},
                              optim={"epochs": 3, "lr_decay_epochs": [2]})
    assert config.learning_rate == 0.01  # the default by model, as parsing derives it
    assert (config.batch_per_process, config.data.batch_size) == (32, 32)
    assert config.method.name == "vanilla" and config.args is None
    assert config.file_args()["dataset"] == "cifar10"
    assert config.file_args()["lr_decay_epochs"] == [2]
    # the same checks as the command line, with the same line
    with pytest.raises(UserError, match="--warmup_epochs 5 must be less than --epochs 3"):
        RunConfig.create("resnet8", optim={"epochs": 3, "warmup_epochs": 5})
    with pytest.raises(TypeError, match="no option group 'optimizer'"):
        RunConfig.create("resnet8", optimizer={})
    # equal to the parsed configuration of the same flags
    parsed = parse_teacher_args(["--model", "ShuffleV2", "--dataset", "cifar10", "--batch_size",
                                 "32", "--epochs", "3", "--lr_decay_epochs", "2"])
    for name in ("data", "optim", "augment", "precision", "dist", "run"):
        assert getattr(parsed, name) == getattr(config, name), name
    assert parsed.learning_rate == config.learning_rate


def test_label_smoothing_reaches_a_teachers_cross_entropy():
    config = parse_teacher_args(["--label_smoothing", "0.1"])
    assert config.method.weights.label_smoothing == 0.1
    built = config.method.build(create_model("resnet8", 10), None)
    assert built.label_smoothing == 0.1


def test_no_module_reads_the_parsed_namespace():
    """After parsing, the run's options are read from their groups: ``config.args.X`` and
    ``getattr(args, ...)`` appear only where the command line is parsed and written."""
    import ast
    allowed = {os.path.join("helper", "options.py"), os.path.join("helper", "config_file.py")}
    found = []
    for folder in ("helper", "dataset", "distillers", "models"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)
                if not name.endswith(".py") or rel in allowed:
                    continue
                for node in ast.walk(ast.parse(open(path).read())):
                    if (isinstance(node, ast.Attribute) and node.attr == "args"
                            and isinstance(node.value, ast.Name) and node.value.id == "config"):
                        found.append(f"{rel}:{node.lineno} config.args")
                    if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "getattr"
                            and node.args and getattr(node.args[0], "id", None) == "args"):
                        found.append(f"{rel}:{node.lineno} getattr(args, ...)")
    for script in ("train_teacher.py", "train_student.py"):
        if "config.args" in open(os.path.join(REPO, script)).read():
            found.append(f"{script} config.args")
    assert not found, found


def test_what_a_method_reads_is_one_declaration():
    from distillers import Distiller, Reads
    from distillers.registry import get_distiller
    # the attributes the code reads follow from the declaration
    assert get_distiller("kd").cacheable == "logits" and not get_distiller("kd").teacher_feats
    assert get_distiller("crd").cacheable == "pooled" and not get_distiller("crd").stage_maps
    assert get_distiller("mlkd").cacheable is None  # its strong view runs the teacher too
    assert get_distiller("mlkd").accepts_ensemble(None)  # ... on the ensemble's mean logit
    catkd = get_distiller("catkd")
    assert catkd.cacheable is None and not catkd.accepts_ensemble(None)  # hooks: one teacher
    assert get_distiller("reviewkd").preact and get_distiller("reviewkd").stage_maps
    # never by hand
    with pytest.raises(TypeError, match="sets cacheable by hand; declare what it reads"):
        type("Mine", (Distiller,), {"cacheable": "logits"})
    with pytest.raises(ValueError, match="Reads.teacher is one of"):
        Reads(teacher="features")
    mine = type("Mine", (Distiller,), {"reads": Reads("pooled", "logits")})
    assert (mine.teacher_feats, mine.student_feats, mine.cacheable) == (True, False, "pooled")
    # python -m distillers says it, and what it allows
    from distillers.__main__ import listing
    text = listing()
    assert "reads: teacher logits, student logits; --teacher_cache, --fkd, several --path_t" in text
    assert "reads: teacher logits (and hooks), student logits\n" in text  # catkd

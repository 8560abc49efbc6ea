"""The table scripts: every command parses with the entry scripts' own parsers, gets a run
folder of its own, and runs the recipe of its source.

``RECIPES`` is written from the sources' configs and commands (each script's header names the
file of every row), not from the toolbox's defaults: for every command a script prints, exactly
one row of its script must select it, and the run configuration must have every value that
row lists (the effective learning rate and loss weights, the method's options, the teacher
checkpoint). Every row must select at least one command.
"""
import dataclasses
import os
import shlex
import subprocess
from pathlib import Path
from unittest import mock

import pytest

from helper.run.options import parse_student_args, parse_teacher_args
from helper.teachers.published import TABLES
from helper.run.run_folder import SEP, student_run_name, teacher_run_name

SCRIPT_DIR = Path(__file__).resolve().parents[1] / "scripts"
# The table scripts (common.sh is their library; gpu_check.sh a check, not a table)
SCRIPTS = sorted(p for p in SCRIPT_DIR.glob("*.sh") if p.name not in ("common.sh", "gpu_check.sh"))
SAVE = "./save"


def _output(script, trials=2, gpus="0 1"):
    # ZOO=0: every teacher is trained, so its command and recipe are checked here (the teacher
    # step's found/fetched/trained choice is tested in test_teachers.py)
    env = {**os.environ, "DRY_RUN": "1", "TRIALS": str(trials), "GPUS": gpus, "SAVE": SAVE,
           "ZOO": "0"}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def _commands(script, **kw):
    """The commands a script would run; its '# ...' lines (teacher checkpoint, metric) are notes."""
    return [shlex.split(line) for line in _output(script, **kw)
            if line.strip() and not line.startswith("#")]


def _notes(script):
    return [line for line in _output(script) if line.startswith("#")]


def _facts(argv):
    """What a command runs: its flags as parsed, the learning rate it uses, and for a student
    the method's effective weights, KD term and options, and the teacher checkpoint."""
    if "--sync_bn" in argv:  # a GPU flag (refused on the CPU): parse as on a GPU machine
        with mock.patch("torch.cuda.is_available", return_value=True):
            return _parsed_facts(argv)
    return _parsed_facts(argv)


def _parsed_facts(argv):
    assert argv[0] == "python", argv
    if argv[1] == "train_teacher.py":
        config = parse_teacher_args(argv[2:])
        facts = {**vars(config.args), "kind": "teacher", "run": teacher_run_name(config)}
    else:
        assert argv[1] == "train_student.py", argv
        config = parse_student_args(argv[2:])
        m = config.method
        path_t = Path(config.args.path_t)
        facts = {**vars(config.args), **dataclasses.asdict(m.options), "kind": "student",
                 "distill": m.name, "cls": m.weights.cls, "div": m.weights.div,
                 "beta": m.weights.beta, "kd_T": m.kd.kd_T, "logit_stand": m.kd.logit_stand,
                 "teacher_ckpt": path_t.name, "teacher_run": path_t.parent.name,
                 "run": student_run_name(config, config.args.model_t or _teacher_model(path_t))}
    facts.update(model=config.model, learning_rate=config.learning_rate)
    return facts


def _teacher_model(path_t):
    from helper.run.checkpoint import model_name_from_path
    return model_name_from_path(path_t) or "teacher"


def _same(got, want):
    if isinstance(want, float) or isinstance(got, float):
        return got is not None and not isinstance(got, (list, tuple)) and got == pytest.approx(want)
    if isinstance(want, (list, tuple)):
        return list(got) == list(want)
    return got == want


# ---- the recipes, from the sources ------------------------------------------------------
def row(select, **expect):
    """A recipe row: ``select`` (values the commands of this row have) and what they must run
    with; a value may be a function of the command's facts (e.g. a rule by student model)."""
    return select, expect


def lr_rule(small_models, small, normal):
    """A source's learning-rate rule by model (SimKD, RepDistiller: 0.01 for MobileNet and
    ShuffleNet students)."""
    return lambda f: small if f["model"] in small_models else normal


def teacher(model, dataset, ckpt, trial="0"):
    return dict(teacher_run=f"{model}_vanilla_{dataset}_trial_{trial}", teacher_ckpt=ckpt)


# SimKD: README.md (teacher command), scripts/run_distill.sh, train_student.py defaults.
SIMKD_SCHEDULE = dict(dataset="cifar100", batch_size=64, epochs=240,
                      lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1, weight_decay=5e-4,
                      momentum=0.9)
SIMKD_LR = lr_rule(("MobileNetV2", "MobileNetV2_1_0", "ShuffleV1", "ShuffleV2", "ShuffleV2_1_5"),
                   0.01, 0.05)
SIMKD_STUDENT = dict(SIMKD_SCHEDULE, learning_rate=SIMKD_LR, kd_T=4.0,
                     **teacher("resnet32x4", "cifar100", "best.pth"))
SIMKD = [row({"kind": "teacher"}, **SIMKD_SCHEDULE, learning_rate=SIMKD_LR)]
for method, beta, extra in [("kd", 0.0, {}), ("fitnet", 100.0, {"hint_layer": 1}),
                            ("at", 1000.0, {"at_p": 2.0}), ("sp", 3000.0, {}), ("vid", 1.0, {}),
                            ("crd", 0.8, {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
                                          "nce_m": 0.5, "mode": "exact"}),
                            ("srrl", 1.0, {}), ("semckd", 400.0, {"semckd_soft": 1.0})]:
    SIMKD.append(row({"kind": "student", "distill": method}, cls=1.0, div=1.0, beta=beta,
                     **extra, **SIMKD_STUDENT))
for f in (8, 4, 2):
    SIMKD.append(row({"kind": "student", "distill": "simkd", "factor": f},
                     cls=0.0, div=0.0, beta=1.0, **SIMKD_STUDENT))

# RepDistiller: README.md, scripts/run_cifar_distill.sh, train_student.py and train_teacher.py
# defaults.
REP_SCHEDULE = SIMKD_SCHEDULE
REP_LR = lr_rule(("MobileNetV2", "ShuffleV1", "ShuffleV2"), 0.01, 0.05)
def trial0(dataset):
    """The run folder of the teacher named by the command (trial 0), for a per-pair teacher."""
    return lambda f: f"{f['teacher_run'].split('_vanilla_')[0]}_vanilla_{dataset}_trial_0"


REP_STUDENT = dict(REP_SCHEDULE, learning_rate=REP_LR, kd_T=4.0, teacher_run=trial0("cifar100"),
                   teacher_ckpt="last.pth")
REPDISTILLER = [row({"kind": "teacher"}, **REP_SCHEDULE, learning_rate=REP_LR),
                row({"kind": "student", "distill": "kd"}, cls=0.1, div=0.9, beta=0.0,
                    **REP_STUDENT)]
for method, beta, extra in [("fitnet", 100.0, {"hint_layer": 2}), ("at", 1000.0, {}),
                            ("sp", 3000.0, {}), ("cc", 0.02, {"cc_feat_dim": 128}),
                            ("vid", 1.0, {}),
                            ("rkd", 1.0, {"rkd_w_d": 25.0, "rkd_w_a": 50.0}), ("pkt", 30000.0, {}),
                            ("ab", 1.0, {"init_epochs": 30, "ab_margin": 1.0}),
                            ("ft", 200.0, {"init_epochs": 30, "ft_rate": 0.5}),
                            ("fsp", 50.0, {"init_epochs": 30, "fsp_one_stage": False}),
                            ("nst", 50.0, {}),
                            ("crd", 0.8, {"feat_dim": 128, "nce_k": 16384, "nce_t": 0.07,
                                          "nce_m": 0.5, "mode": "exact"})]:
    REPDISTILLER.append(row({"kind": "student", "distill": method}, cls=1.0, div=0.0, beta=beta,
                            **extra, **REP_STUDENT))

# mdistiller configs/cifar100/dkd/*.yaml + engine/cfg.py; logit-standardization-KD
# tools/train.py; DIST_KD README + dist_cifar.yaml; ReviewKD CIFAR-100/train.py + scripts.
MD_SCHEDULE = SIMKD_SCHEDULE
MD_LR = lr_rule(("MobileNetV2", "ShuffleV1", "ShuffleV2"), 0.01, 0.05)
DKD_BETA = {("resnet56", "resnet20"): 2, ("resnet110", "resnet32"): 2,
            ("resnet32x4", "resnet8x4"): 8, ("wrn_40_2", "wrn_16_2"): 6,
            ("wrn_40_2", "wrn_40_1"): 6, ("vgg13", "vgg8"): 6, ("resnet32x4", "ShuffleV1"): 8, ("wrn_40_2", "ShuffleV1"): 8,
            ("vgg13", "MobileNetV2"): 6, ("ResNet50", "MobileNetV2"): 8,
            ("resnet32x4", "ShuffleV2"): 8}
# dvlab-research/ReviewKD CIFAR-100/train.py (49015fb): batch 128 (line 23), 240 epochs (25),
# lr 0.1 (27), gamma 0.1 (29), lr_adjust_step 150 180 210 (31) applied by util/misc.py
# lr_schedule (lines 55-60) after those 0-based epochs, i.e. our decay after 151, 181, 211;
# wd 5e-4 (33); SGD momentum 0.9, nesterov=True (178-179); Normalize with CIFAR-10's
# (125.3, 123.0, 113.9)/255 and (63.0, 62.1, 66.7)/255 (96-97).
REVIEWKD_DECAY = [e + 1 for e in (150, 180, 210)]
REVIEWKD_SCHEDULE = dict(dataset="cifar100", batch_size=128, epochs=240, learning_rate=0.1,
                         lr_decay_epochs=REVIEWKD_DECAY, lr_decay_rate=0.1, weight_decay=5e-4,
                         momentum=0.9, nesterov=True, cifar_normalization="reviewkd")
MD_STUDENT = dict(MD_SCHEDULE, learning_rate=MD_LR, teacher_ckpt="last.pth",
                  teacher_run=trial0("cifar100"))
DKD = [
    row({"kind": "teacher", "trial": "0"}, **MD_SCHEDULE, learning_rate=0.05),
    row({"kind": "teacher", "trial": "reviewkd"}, model="resnet32x4", **REVIEWKD_SCHEDULE),
    row({"kind": "student", "distill": "dkd", "logit_stand": False}, cls=1.0, div=0.0, beta=1.0,
        dkd_alpha=1.0, kd_T=4.0, dkd_warmup=20.0, **MD_STUDENT,
        dkd_beta=lambda f: float(DKD_BETA[(f["teacher_run"].split("_vanilla")[0], f["model"])])),
    row({"kind": "student", "distill": "kd", "logit_stand": True}, model="resnet8x4",
        cls=0.1, div=9.0, kd_T=2.0, **MD_STUDENT),
    # sunshangquan/logit-standardization-KD tools/train.py at its first version 6083e2d,
    # lines 116-118 (--kd-weight 9 --base-temp 2, README line 66, on mdistiller's DKD config
    # CE 1, ALPHA 1, BETA 8, T 4): ALPHA = 1 * 9, BETA = ALPHA * 9, T unchanged. (HEAD
    # 6b58661 lines 116-118: BETA = 8 * 9 = 72, T = 2; a commented row of the script.)
    row({"kind": "student", "distill": "dkd", "logit_stand": True}, model="resnet8x4",
        cls=1.0, div=0.0, beta=1.0, dkd_alpha=1.0 * 9, dkd_beta=(1.0 * 9) * 9, kd_T=4.0,
        dkd_warmup=20.0, **MD_STUDENT),
    # hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml (d9662f7):
    # batch_size 64 (line 5), epochs 240 (12), lr 0.05 (14), smoothing 0.0 (15), momentum 0.9
    # (19), weight_decay 5e-4 (29), sgd_no_nesterov True (31), ori_loss_weight 1 (34),
    # kd_loss_weight 2 (35), kd dist_t4 (36); warmup_epochs 120 at warmup_lr 0.05 (27-28), then
    # decay_epochs 30, decay_rate 0.1 (9-10): x0.1 after 150, 180, 210.
    row({"kind": "student", "distill": "dist"}, model="resnet8x4", cls=1.0, div=0.0, beta=2.0,
        dist_beta=1.0, dist_gamma=1.0, dist_tau=4.0, nesterov=False, label_smoothing=0.0,
        **MD_STUDENT),
    row({"kind": "student", "distill": "reviewkd"}, model="resnet8x4", cls=1.0, div=0.0, beta=5.0,
        reviewkd_warmup=20.0, teacher_train=True, reviewkd_student_preact=False,
        **REVIEWKD_SCHEDULE, **teacher("resnet32x4", "cifar100", "best.pth", "reviewkd")),
]

# hankyul2/KnowledgeDistillation (HEAD f019dfc) README.md (Experiment Setting, [FSP]),
# main.py (batch 128 line 13, lr 0.1 line 15, 200 epochs line 16) and src/train*.py (MyOpt:
# SGD momentum 0.9, weight decay 1e-4, MultiStepLR [100, 150] x0.1).
# src/dataset.py at 22f39c5 (unchanged to f019dfc): DataLoader(..., drop_last=True) for the
# train and the test loader (line 8), Pad(4, padding_mode='reflect') (line 35), CIFAR-10
# mean/std (0.4914, 0.4822, 0.4465)/(0.2470, 0.2435, 0.2616) (lines 27-28), CIFAR-100's
# (0.5071, 0.4865, 0.4409)/(0.2673, 0.2564, 0.2762) (lines 31-32).
ZOO_DATA = dict(padding_mode="reflect", cifar_normalization="per_dataset", eval_drop_last=True)
ZOO_SCHEDULE = dict(batch_size=128, epochs=200, learning_rate=0.1, lr_decay_epochs=[100, 150],
                    lr_decay_rate=0.1, weight_decay=1e-4, momentum=0.9, nesterov=False, **ZOO_DATA)
# src/ModelWrapper.py line 80: BaseModelWrapper.train() puts only self.model in training mode;
# the teacher is never put in eval mode (src/resnet_32.py get_model loads it, lines 134-135).
ZOO_STUDENT = dict(ZOO_SCHEDULE, teacher_ckpt="best.pth", teacher_train=True,
                   teacher_run=lambda f: f"{f['model']}_vanilla_{f['dataset']}_trial_0")
# FSP: src/fsp.py at d0ed979, line 8 FSP(soft_factor=3, kd_lambda=1), line 15 the mean over
# the pairs of mse / soft_factor * kd_lambda; src/train_fsp.py at 6475dcd, line 32: the pairs
# (stem, stage 1), (stage 1, stage 2), (stage 2, stage 3), 3 of them; line 85 FSP().
HANKYUL2_FSP = dict(soft_factor=3, kd_lambda=1, pairs=3)
HANKYUL2_FSP_BETA = HANKYUL2_FSP["kd_lambda"] / HANKYUL2_FSP["soft_factor"] / HANKYUL2_FSP["pairs"]
KD_ZOO = [
    row({"kind": "teacher"}, **ZOO_SCHEDULE),
    # src/train_logit.py line 30: kd_criterion(std_feat, teat_feat.detach()), the pooled
    # features (src/resnet_32.py ResNet_32.forward), src/logits.py: F.mse_loss
    row({"kind": "student", "distill": "l2"}, cls=1.0, div=0.0, beta=1.0, **ZOO_STUDENT),
    row({"kind": "student", "distill": "kd"}, cls=1.0, div=1.0, beta=0.0, kd_T=4.0, **ZOO_STUDENT),
    row({"kind": "student", "distill": "at", "div": 0.0}, cls=1.0, beta=1000.0, at_p=2.0,
        **ZOO_STUDENT),
    # src/train_at.py line 52: MyCriterion(alpha=0.9, beta=1e+3)
    row({"kind": "student", "distill": "at", "div": 0.9}, cls=1.0, beta=1000.0, at_p=2.0, kd_T=4.0,
        **ZOO_STUDENT),
    row({"kind": "student", "distill": "fsp"}, cls=1.0, div=0.0, beta=HANKYUL2_FSP_BETA,
        fsp_one_stage=True, **ZOO_STUDENT),
]

# torchdistill configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/*.yaml (+ logs, README),
# nlp-oss2023/kr-resnet18_from_resnet34.yaml, configs/sample/ilsvrc2012/dist/...; torchvision's
# references/classification recipe for the ResNet-18 trained alone.
TD = dict(dataset="imagenet", momentum=0.9, lr_decay_rate=0.1, dali="gpu", sync_bn=False)
TD_T34 = dict(TD, path_t="resnet34-b627a593.pth", model_t="resnet34", model="resnet18")
TD_E100 = dict(epochs=100, lr_decay_epochs=[30, 60, 90], weight_decay=1e-4)
TORCHDISTILL = [
    row({"kind": "teacher"}, model="resnet18", **TD, epochs=90, batch_size=256, learning_rate=0.1,
        lr_decay_epochs=[30, 60], weight_decay=1e-4),
    row({"kind": "student", "distill": "kd"}, **TD_T34, **TD_E100, batch_size=768,
        learning_rate=0.3, cls=0.5, div=0.5, kd_T=1.0),
    row({"kind": "student", "distill": "at"}, **TD_T34, **TD_E100, batch_size=768,
        learning_rate=0.3, cls=1.0, div=0.0, beta=1000.0, at_p=2.0, at_stages=(3, 4)),
    row({"kind": "student", "distill": "ft"}, **TD_T34, epochs=90, lr_decay_epochs=[30, 60, 90],
        weight_decay=1e-4, batch_size=256, learning_rate=0.1, cls=1.0, div=0.0, beta=1000.0,
        init_epochs=1, ft_init_lr=0.01, ft_rate=0.5, ft_paper_factor=True,
        ft_translator_no_bn=True),
    # crd-resnet18_from_resnet34.log (0f86a75) line 2: Namespace(..., sync_bn=True, ...,
    # world_size=3); every other rrpr2020 log has sync_bn=False
    row({"kind": "student", "distill": "crd"}, **{**TD_T34, "sync_bn": True}, **TD_E100,
        batch_size=256, learning_rate=0.1, cls=1.0, div=0.0, beta=0.8, feat_dim=128,
        nce_k=16384, nce_t=0.07, nce_m=0.5, mode="exact"),
    row({"kind": "student", "distill": "tfkd"}, **TD, path_t="resnet18-f37072fd.pth",
        model_t="resnet18", model="resnet18", epochs=90, lr_decay_epochs=[30, 60, 80],
        weight_decay=1e-4,
        batch_size=768, learning_rate=0.3, cls=0.9, div=0.0, beta=0.1, tfkd_mode="self",
        tfkd_T=1.0, tfkd_reduction="batchmean", tfkd_multiplier=1.0),
    row({"kind": "student", "distill": "sskd"}, **TD_T34, epochs=100, lr_decay_epochs=[30, 60, 90],
        weight_decay=5e-4, batch_size=256, learning_rate=0.1, cls=1.0, div=0.9, beta=10.0, kd_T=4.0,
        sskd_tf_weight=2.7, sskd_tf_T=4.0, sskd_ss_T=0.5, sskd_ratio_ss=0.75, sskd_ratio_tf=1.0,
        sskd_t_epochs=30, sskd_t_lr=0.1, sskd_t_milestones=[10, 20]),
    row({"kind": "student", "distill": "l2"}, **TD_T34, epochs=90, lr_decay_epochs=[30, 60],
        weight_decay=1e-4, batch_size=512, learning_rate=0.2, cls=1.0, div=0.0, beta=15.0),
    row({"kind": "student", "distill": "pad_l2"}, **TD_T34, epochs=30, lr_decay_epochs=[30],
        weight_decay=1e-4, batch_size=512, learning_rate=0.002, cls=1.0, div=0.0, beta=1.0,
        pad_l2_l2_epochs=0,
        pretrained=lambda f: (f"{SAVE}/students/S{SEP}resnet18_T{SEP}resnet34_imagenet_l2_"
                              f"r{SEP}1_a{SEP}0_b{SEP}15_{f['trial']}/best.pth")),
    row({"kind": "student", "distill": "reviewkd"}, **TD_T34, **TD_E100, batch_size=96,
        learning_rate=0.075, cls=1.0, div=0.0, beta=1.0, reviewkd_warmup=0.0,
        reviewkd_student_preact=True, teacher_train=False),
    row({"kind": "student", "distill": "dist"}, **TD_T34, **TD_E100, batch_size=256,
        learning_rate=0.1, cls=1.0, div=0.0, beta=2.0, dist_beta=1.0, dist_gamma=1.0, dist_tau=1.0),
]

# kaiyuyue/mgd README.md (training scripts) and main_mgd.py defaults.
MGD_COMMON = dict(momentum=0.9, nesterov=True, weight_decay=1e-4, lr_decay_rate=0.1)
MGD_CUB = dict(MGD_COMMON, dataset="cub200", batch_size=64, epochs=120, learning_rate=0.01,
               lr_decay_epochs=[31, 61, 81], pretrained="IMAGENET1K_V1")
MGD_IN = dict(MGD_COMMON, dataset="imagenet", batch_size=256, epochs=130, learning_rate=0.1,
              lr_decay_epochs=[41, 71, 91], warmup_epochs=10)
MGD_METHOD = dict(cls=1.0, beta=1.0, mgd_reducer="amp", mgd_loss_factor=1e4, mgd_amp_signed=False)
MGD = [
    row({"kind": "teacher", "dataset": "cub200"}, **MGD_CUB),
    row({"kind": "teacher", "dataset": "imagenet"}, model="mobilenet_v1", **MGD_IN,
        pretrained=None),
    row({"kind": "student", "dataset": "cub200", "mgd_with_kd": 0}, **MGD_CUB, **MGD_METHOD,
        div=0.0, mgd_update_freq=2, **teacher("resnet50", "cub200", "best.pth")),
    row({"kind": "student", "dataset": "cub200", "mgd_with_kd": 1}, **MGD_CUB, **MGD_METHOD,
        model="shufflenet_v2_x1_0", div=1.0, kd_T=1.5, mgd_update_freq=2,
        **teacher("resnet50", "cub200", "best.pth")),
    row({"kind": "student", "dataset": "imagenet"}, **MGD_IN, **MGD_METHOD, div=0.0, mgd_with_kd=0,
        mgd_update_freq=1, model="mobilenet_v1", path_t="resnet50-0676ba61.pth", model_t="resnet50",
        pretrained=None),
]

# Hinton, Vinyals & Dean 2015 (architectures, jitter 2, T 20); the schedule is ours.
HINTON_SCHEDULE = dict(dataset="mnist", batch_size=128, epochs=60, learning_rate=0.01,
                       lr_decay_epochs=[40, 50], weight_decay=0.0)
HINTON = [
    row({"kind": "teacher", "model": "mlp_1200"}, **HINTON_SCHEDULE, jitter=2),
    row({"kind": "teacher", "model": "mlp_800"}, **HINTON_SCHEDULE, jitter=0),
    row({"kind": "student"}, **HINTON_SCHEDULE, distill="kd", cls=1.0, div=1.0, kd_T=20.0,
        **teacher("mlp_1200", "mnist", "best.pth")),
]

# Ours (no source): the schedule of scripts/cifar10_jpeg.sh, methods at their defaults.
JPEG = dict(dataset="cifar10", batch_size=64, learning_rate=0.05)
CIFAR10_JPEG = [
    row({"kind": "teacher", "model": "resnet56"}, **JPEG, epochs=8, lr_decay_epochs=[5, 7],
        amp=True),
    row({"kind": "teacher", "model": "resnet20"}, **JPEG, epochs=3, lr_decay_epochs=[2], amp=True),
    row({"kind": "student", "amp": True}, **JPEG, epochs=3, lr_decay_epochs=[2],
        **teacher("resnet56", "cifar10", "best.pth")),
    row({"kind": "student", "amp": False}, **JPEG, epochs=3, lr_decay_epochs=[2], distill="kd",
        **teacher("resnet56", "cifar10", "best.pth")),
]

RECIPES = {"simkd_cifar100.sh": SIMKD, "repdistiller_cifar100.sh": REPDISTILLER,
           "dkd_cifar100.sh": DKD, "kd_zoo_cifar.sh": KD_ZOO,
           "torchdistill_imagenet.sh": TORCHDISTILL, "mgd.sh": MGD, "hinton_mnist.sh": HINTON,
           "cifar10_jpeg.sh": CIFAR10_JPEG}

# The teacher checkpoint and metric each script prints, as helper/teachers/published.py's TABLES.
NOTES = {"simkd_cifar100.sh": ["simkd_cifar100"],
         "repdistiller_cifar100.sh": ["repdistiller_cifar100"],
         "dkd_cifar100.sh": ["dkd_cifar100"], "kd_zoo_cifar.sh": ["kd_zoo_cifar10/100"],
         "torchdistill_imagenet.sh": ["torchdistill_imagenet"],
         "mgd.sh": ["mgd_cub200", "mgd_imagenet"], "hinton_mnist.sh": ["hinton_mnist"],
         "cifar10_jpeg.sh": ["cifar10_jpeg"]}


# ---- the tests --------------------------------------------------------------------------
def test_every_script_has_recipes():
    assert {p.name for p in SCRIPTS} == set(RECIPES)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_commands_parse(script):
    commands = _commands(script)
    assert commands, f"{script.name} printed no commands"
    folders = set()
    for argv in commands:
        facts = _facts(argv)
        folders.add((facts["kind"], facts["save_folder"], facts.get("path_t"), facts["run"]))
    # Every run gets a folder of its own (a clash would make the second run refuse to start).
    assert len(folders) == len(commands)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_row_runs_its_source_recipe(script):
    rows = RECIPES[script.name]
    used = [0] * len(rows)
    for argv in _commands(script):
        facts = _facts(argv)
        chosen = [i for i, (select, _) in enumerate(rows)
                  if all(k in facts and _same(facts[k], v) for k, v in select.items())]
        assert len(chosen) == 1, (f"{script.name}: {len(chosen)} recipe rows select "
                                  f"{shlex.join(argv)}")
        used[chosen[0]] += 1
        for key, want in rows[chosen[0]][1].items():
            want = want(facts) if callable(want) else want
            assert key in facts, f"{script.name}: no {key} in {shlex.join(argv)}"
            assert _same(facts[key], want), (f"{script.name}: {key} is {facts[key]!r}, the source "
                                             f"gives {want!r}: {shlex.join(argv)}")
    unused = [rows[i][0] for i, n in enumerate(used) if not n]
    assert not unused, f"{script.name}: rows never used: {unused}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_print_teacher_checkpoint_and_metric(script):
    notes = _notes(script)
    for name in NOTES[script.name]:
        line = next((n for n in notes if name in n), None)
        assert line is not None, f"{script.name} prints no note for {name}"
        table = TABLES.get(name.replace("/100", ""), TABLES.get(name))
        if table is not None:
            assert f"metric: {table['metric']}" in line
    # the header names the source file of every recipe row
    header = "".join(l for l in script.read_text().splitlines(True)[:60] if l.startswith("#"))
    assert "Recipe" in header and "Teacher checkpoint" in header and "Metric" in header


def test_teacher_checkpoints_are_the_sources():
    """RepDistiller, mdistiller, DIST and logit standardization distil from the last epoch
    (ckpt_epoch_240.pth), SimKD, ReviewKD, the KD README and MGD from the best."""
    def ckpts(script, **select):
        students = [_facts(a) for a in _commands(SCRIPT_DIR / script) if a[1] == "train_student.py"]
        return {f["teacher_ckpt"] for f in students
                if all(f.get(k) == v for k, v in select.items())}
    assert ckpts("repdistiller_cifar100.sh") == {"last.pth"}
    assert ckpts("dkd_cifar100.sh", distill="dkd") == {"last.pth"}
    assert ckpts("dkd_cifar100.sh", distill="dist") == {"last.pth"}
    assert ckpts("dkd_cifar100.sh", distill="kd") == {"last.pth"}
    assert ckpts("dkd_cifar100.sh", distill="reviewkd") == {"best.pth"}
    assert ckpts("simkd_cifar100.sh") == ckpts("kd_zoo_cifar.sh") == {"best.pth"}


def test_pad_l2_starts_from_the_l2_run_of_its_trial():
    commands = [_facts(a) for a in _commands(SCRIPT_DIR / "torchdistill_imagenet.sh", trials=3)]
    l2 = {f["trial"]: f["run"] for f in commands if f["kind"] == "student" and f["distill"] == "l2"}
    pad = [f for f in commands if f["kind"] == "student" and f["distill"] == "pad_l2"]
    assert len(pad) == len(l2) == 3
    for f in pad:
        assert f["pretrained"] == f"{SAVE}/students/{l2[f['trial']]}/best.pth"
    # the pad runs come after every l2 run (the script waits for them)
    kinds = [f["distill"] for f in commands if f["kind"] == "student"]
    last_l2 = max(i for i, k in enumerate(kinds) if k == "l2")
    assert last_l2 < min(i for i, k in enumerate(kinds) if k == "pad_l2")


def test_teacher_path_and_student_path_helpers():
    common = SCRIPT_DIR / "common.sh"
    script = (f'export SAVE=s; source "{common}"; teacher_path resnet56 cifar100; '
              'teacher_path vgg13 cifar100 last; teacher_path r cifar10 best 7; '
              'student_path resnet18 resnet34 imagenet l2 1 0 15 2; '
              'teacher_path r c worst || echo refused')
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True).stdout.split()
    assert out == ["s/teachers/resnet56_vanilla_cifar100_trial_0/best.pth",
                   "s/teachers/vgg13_vanilla_cifar100_trial_0/last.pth",
                   "s/teachers/r_vanilla_cifar10_trial_7/best.pth",
                   "s/students/S:resnet18_T:resnet34_imagenet_l2_r:1_a:0_b:15_2/best.pth",
                   "refused"]


# ---- the README's recipes, against their sources ------------------------------------------
README = Path(__file__).resolve().parents[1] / "README.md"


def _readme_commands(distill):
    """The ``python train_student.py ... --distill NAME`` commands of the README's code blocks."""
    text = README.read_text().replace("\\\n", " ")
    return [shlex.split(line.strip()) for line in text.splitlines()
            if line.strip().startswith("python train_student.py") and f"--distill {distill} " in line]


def test_readme_dist_recipe_is_dist_cifar_yaml():
    """hunto/image_classification_sota configs/strategies/distill/dist_cifar.yaml (d9662f7)
    lines 5, 12, 14, 15, 19, 29, 31, 34-37; the schedule of lines 9-10 and 27-28 is x0.1 after
    150, 180, 210."""
    yaml = dict(batch_size=64, epochs=240, learning_rate=0.05, label_smoothing=0.0, momentum=0.9,
                weight_decay=5e-4, nesterov=False, cls=1.0, beta=2.0, div=0.0, dist_tau=4.0,
                dist_beta=1.0, dist_gamma=1.0, lr_decay_epochs=[150, 180, 210], lr_decay_rate=0.1,
                teacher_run="wrn_40_2_vanilla_cifar100_trial_0", teacher_ckpt="last.pth")
    (argv,) = _readme_commands("dist")
    facts = _facts(argv)
    for key, want in yaml.items():
        assert _same(facts[key], want), (key, facts[key], want)


# Jin-Ying/Multi-Level-Logit-Distillation configs/cifar100/ours/*.yaml at 5ee473f: SOLVER
# EPOCHS (line 11) and LR (line 12); BATCH_SIZE 64, LR_DECAY_STAGES [150, 180, 210] in all.
MLKD_CONFIGS = {"res56_res20": (240, 0.025), "res110_res32": (240, 0.025),
                "res32x4_res8x4": (240, 0.025), "wrn40_2_wrn_16_2": (240, 0.025),
                "wrn40_2_wrn_40_1": (240, 0.025), "vgg13_vgg8": (240, 0.025),
                "vgg13_mv2": (480, 0.01), "res50_mv2": (480, 0.01), "wrn40_2_shuv1": (480, 0.01),
                "res32x4_shuv1": (960, 0.01), "res32x4_shuv2": (960, 0.01)}


def test_readme_mlkd_recipes_are_the_configs():
    row = next(line for line in README.read_text().splitlines() if line.startswith("| MLKD |"))
    assert "5ee473f" in row
    for epochs, lr in set(MLKD_CONFIGS.values()):
        command = f"`--distill mlkd --learning_rate {lr:g} --epochs {epochs}`"
        assert command in row, command
        args = parse_student_args(shlex.split(command.strip("`"))).args
        assert args.epochs == epochs and args.learning_rate == lr

"""Command-line flags shared by train_teacher.py and train_student.py (SimKD's names)."""
import argparse

from dataset import DATASET_NAMES
from helper import distributed, precision
from distillers import distiller_classes, distiller_names, get_distiller
from models import model_names

SMALL_LR_MODELS = ("MobileNetV2", "MobileNetV2_1_0", "mobile_half", "ShuffleV1", "ShuffleV2",
                   "ShuffleV2_1_5")


def _epochs_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 150,180,210, got {text!r}")
    if any(b <= a for a, b in zip(values, values[1:])):
        raise argparse.ArgumentTypeError(f"epochs must be increasing, got {text!r}")
    return values


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
        return value
    return parse


def _common(parser):
    g = parser.add_argument_group("data and optimisation")
    g.add_argument("--dataset", default="cifar100", choices=DATASET_NAMES)
    g.add_argument("--data_folder", "--data-folder", default="./data",
                   help="folder holding the data set (downloaded there when missing and online)")
    g.add_argument("--batch_size", "--batch-size", type=_positive(int), default=64)
    g.add_argument("--num_workers", "--num-workers", type=int, default=8,
                   help="loader workers for folder data sets (in-memory data sets need none)")
    g.add_argument("--epochs", type=_positive(int), default=240)
    g.add_argument("--learning_rate", "--learning-rate", "--lr", type=_positive(float), default=None,
                   help="default 0.05, or 0.01 for MobileNet/ShuffleNet as in SimKD")
    g.add_argument("--lr_decay_epochs", "--lr-decay-epochs", type=_epochs_list, default=[150, 180, 210])
    g.add_argument("--lr_decay_rate", "--lr-decay-rate", type=_positive(float), default=0.1)
    g.add_argument("--weight_decay", "--weight-decay", type=float, default=5e-4)
    g.add_argument("--momentum", type=float, default=0.9)
    g.add_argument("--dali", choices=["cpu", "gpu"], default=None,
                   help="DALI pipelines for folder data sets (imagenet, cub200, folder): decode on cpu or gpu")
    g.add_argument("--pretrained", default=None,
                   help="start the trained model from a weight file, or torchvision's weights by name "
                        "(ImageNet models, e.g. IMAGENET1K_V1); a classifier of another class count "
                        "starts fresh (MGD's --use-pretrained)")
    g.add_argument("--jitter", type=int, default=0,
                   help="MNIST only: random translation of up to this many pixels (Hinton et al.: 2)")
    r = parser.add_argument_group("run")
    r.add_argument("--trial", default="0", help="trial id, part of the run folder name and the seed")
    r.add_argument("--print_freq", "--print-freq", type=_positive(int), default=100)
    r.add_argument("--gpu_id", "--gpu-id", type=int, default=0, help="CUDA device used when CUDA is present")
    r.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms (bit-identical reruns on CPU)")
    r.add_argument("--seed", type=int, default=12345, help="base seed; the trial id is added to it")
    r.add_argument("--save_folder", "--save-folder", default="./save")
    r.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from this run's last.pth, or from the given checkpoint")
    distributed.add_arguments(parser)
    precision.add_arguments(parser)


def teacher_parser():
    parser = argparse.ArgumentParser(description="Train a model with cross-entropy (a teacher or a baseline).")
    parser.add_argument("--model", default="resnet32x4", choices=model_names())
    _common(parser)
    return parser


def student_parser():
    parser = argparse.ArgumentParser(description="Distil a student from a trained teacher.")
    g = parser.add_argument_group("distillation")
    g.add_argument("--model_s", "--model-s", default="resnet8x4", choices=model_names())
    g.add_argument("--path_t", "--path-t", default=None, help="teacher checkpoint")
    g.add_argument("--model_t", "--model-t", default=None, choices=model_names(),
                   help="teacher architecture, when the checkpoint does not name it")
    g.add_argument("--distill", default="kd", choices=distiller_names())
    g.add_argument("-c", "-r", "--cls", "--gamma", dest="cls", type=float, default=None,
                   help="weight of cross-entropy (method default, 1 for most)")
    g.add_argument("-d", "-a", "--div", "--alpha", dest="div", type=float, default=None,
                   help="weight of the KD term (method default, 1 for most)")
    g.add_argument("-b", "--beta", type=float, default=None, help="weight of the method's own loss")
    g.add_argument("--kd_T", "--kd-T", type=_positive(float), default=4.0, help="KD temperature")
    for cls in distiller_classes():
        cls.add_arguments(parser)
    _common(parser)
    return parser


def parse_teacher_args(argv=None):
    parser = teacher_parser()
    return finish(parser, parser.parse_args(argv), "model")


def parse_student_args(argv=None):
    parser = student_parser()
    return finish(parser, parser.parse_args(argv), "model_s")


def finish(parser, args, model_flag):
    """Check combinations and fill defaults that depend on other flags."""
    distributed.check_arguments(parser, args)
    model_name = getattr(args, model_flag)
    if args.learning_rate is None:
        args.learning_rate = 0.01 if model_name in SMALL_LR_MODELS else 0.05
    if args.jitter < 0:
        parser.error(f"--jitter must be 0 or more, got {args.jitter}")
    if getattr(args, "distill", None) is not None:
        args.distill = get_distiller(args.distill).name  # an alias names the run as its method
        defaults = get_distiller(args.distill).default_weights
        for key in ("cls", "div", "beta"):
            if getattr(args, key) is None:
                setattr(args, key, defaults[key])
    else:
        args.cls, args.div, args.beta = 1.0, 0.0, 0.0
        args.kd_T = 4.0
    return args

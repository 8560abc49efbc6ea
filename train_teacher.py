"""Train a model with cross-entropy: a teacher, or the student-alone baseline (SimKD's flags).

    python train_teacher.py --model resnet32x4 --dataset cifar100
"""
from pathlib import Path

from distillers import get_distiller
from helper.checkpoint import create_pretrained
from helper.distributed import launch
from helper.options import parse_teacher_args
from helper.run_folder import teacher_run_name
from helper.trainer import build_data, train, user_errors
from models.base import fit_to_data


def run(args, ctx):
    with user_errors(ctx.rank):
        train_loader, val_loader, info = build_data(args, ctx)
        model = fit_to_data(create_pretrained(args.model, info["num_classes"], args.pretrained),
                            info["input_size"])
        distiller = get_distiller("vanilla")(model, None, args, data_info=info).to(ctx.device)
        run_path = Path(args.save_folder) / "teachers" / teacher_run_name(args)
        meta = {"model_name": args.model, "num_classes": info["num_classes"],
                "dataset": args.dataset, "distill": "vanilla", "teacher": None}
        train(args, distiller, train_loader, val_loader, run_path, meta, ctx)


def main(argv=None):
    launch(run, parse_teacher_args(argv))


if __name__ == "__main__":
    main()

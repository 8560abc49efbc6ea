"""Train a model with cross-entropy: a teacher, or the student-alone baseline (SimKD's flags).

    python train_teacher.py --model resnet32x4 --dataset cifar100
"""
from pathlib import Path

from helper.run.checkpoint import create_pretrained
from helper.run.distributed import launch
from helper.run.probe import score_checkpoint
from helper.run.options import parse_teacher_args
from helper.run.run_folder import teacher_run_name
from helper.run.trainer import build_data, train, user_errors
from models.base import fit_to_data


def run(config, ctx):
    with user_errors(ctx.rank):
        if config.run.evaluate is not None:
            score_checkpoint(config, ctx, "--model")
            return
        config, train_loader, val_loader = build_data(config, ctx)
        info = config.data_info
        model = fit_to_data(create_pretrained(config.model, info["num_classes"], config.run.pretrained),
                            info["input_size"])
        distiller = config.method.build(model, None, config.run_info).to(ctx.device)
        run_path = Path(config.run.save_folder) / "teachers" / teacher_run_name(config)
        meta = {"model_name": config.model, "num_classes": info["num_classes"],
                "dataset": config.data.dataset, "distill": "vanilla", "teacher": None}
        train(config, distiller, train_loader, val_loader, run_path, meta, ctx)


def main(argv=None):
    launch(run, parse_teacher_args(argv))


if __name__ == "__main__":
    main()

"""Distil a student from a trained teacher with any registered method (SimKD's flags).

    python train_student.py --path_t save/teachers/<run>/best.pth --distill kd --model_s resnet8x4
"""
from pathlib import Path

from helper.run.checkpoint import create_pretrained
from helper.run.distributed import launch
from helper.run.probe import score_checkpoint
from helper.run.options import parse_student_args
from helper.run.resume import refuse_overwrite
from helper.run.run_folder import student_run_name
from helper.teachers.setup import (load_teachers, needed_teachers, score_teachers,
                                  teacher_record, training_loader)
from helper.run.trainer import build_data, train, user_errors
from models.base import fit_to_data
from models.teachers import ensemble_of


def run(config, ctx):
    with user_errors(ctx.rank):
        if config.run.evaluate is not None:
            score_checkpoint(config, ctx, "--model_t", model_name=config.teacher.model_t)
            return
        specs = needed_teachers(config)
        config, train_loader, val_loader = build_data(config, ctx)
        info = config.data_info
        train_loader, teachers, loaded = load_teachers(config, ctx, specs, train_loader)
        teacher = ensemble_of(teachers)
        teacher_name = teacher.model_name if teacher is not None else "none"  # several: a+b
        student = fit_to_data(create_pretrained(config.model, info["num_classes"],
                                                config.run.pretrained), info["input_size"], "student")
        distiller = config.method.build(student, teacher, config.run_info).to(ctx.device)
        run_path = Path(config.run.save_folder) / "students" / student_run_name(
            config, [t.model_name for t in teachers] or teacher_name)
        refuse_overwrite(config, run_path)  # before the teacher cache is built
        train_loader = training_loader(train_loader, distiller, config, ctx)
        meta = {"model_name": config.model, "num_classes": info["num_classes"],
                "dataset": config.data.dataset, "distill": config.method.name,
                **teacher_record(config, teacher_name, specs)}
        train(config, distiller, train_loader, val_loader, run_path, meta, ctx,
              before_fit=lambda: score_teachers(loaded, val_loader, info["num_classes"], ctx))


def main(argv=None):
    launch(run, parse_student_args(argv))


if __name__ == "__main__":
    main()

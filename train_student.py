"""Distil a student from a trained teacher with any registered method (SimKD's flags).

    python train_student.py --path_t save/teachers/<run>/best.pth --distill kd --model_s resnet8x4
"""
from pathlib import Path

from dataset.batch_keys import add_batch_keys
from helper.checkpoint import create_pretrained, load_teacher
from helper.distributed import launch
from helper.evaluate import evaluate
from helper.errors import UserError
from helper.loop import validate
from helper.options import parse_student_args
from helper.run_folder import student_run_name
from helper.trainer import build_data, train, user_errors
from models.base import fit_to_data


def run(config, ctx):
    with user_errors(ctx.rank):
        args, method = config.args, config.method
        if args.evaluate is not None:
            evaluate(config, ctx, args.evaluate, model_name=args.model_t, fallback=config.model,
                     flag="--model_t")
            return
        needs_teacher = method.requires_teacher()
        if needs_teacher and args.path_t is None:
            raise UserError(f"--distill {method.name} needs a teacher; pass --path_t CHECKPOINT")
        config, train_loader, val_loader = build_data(config, ctx)
        info = config.data
        teacher, teacher_name = None, "none"
        if needs_teacher:
            teacher, _ = load_teacher(args.path_t, info["num_classes"], args.model_t)
            teacher_name = teacher.model_name
            fit_to_data(teacher.to(ctx.device), info["input_size"], "teacher")
            ctx.log(f"teacher {teacher_name} from {args.path_t}: test top-1 "
                    f"{validate(teacher, val_loader, ctx.device)['acc']:.2f}")
        student = fit_to_data(create_pretrained(config.model, info["num_classes"], args.pretrained),
                              info["input_size"], "student")
        distiller = method.build(student, teacher, config.run_info).to(ctx.device)
        train_loader = add_batch_keys(train_loader, distiller.batch_requests(), method.name)
        run_path = Path(args.save_folder) / "students" / student_run_name(config, teacher_name)
        meta = {"model_name": config.model, "num_classes": info["num_classes"],
                "dataset": args.dataset, "distill": method.name, "teacher": teacher_name,
                "path_t": args.path_t}
        train(config, distiller, train_loader, val_loader, run_path, meta, ctx)


def main(argv=None):
    launch(run, parse_student_args(argv))


if __name__ == "__main__":
    main()

"""Distil a student from a trained teacher with any registered method (SimKD's flags).

    python train_student.py --path_t save/teachers/<run>/best.pth --distill kd --model_s resnet8x4
"""
from pathlib import Path

from dataset.batch_keys import add_batch_keys
from distillers import get_distiller
from helper.checkpoint import create_pretrained, load_teacher
from helper.distributed import launch
from helper.errors import UserError
from helper.loop import validate
from helper.options import parse_student_args
from helper.run_folder import student_run_name
from helper.trainer import build_data, train, user_errors
from models.base import fit_to_data


def run(args, ctx):
    with user_errors(ctx.rank):
        method = get_distiller(args.distill)
        needs_teacher = method.requires_teacher(args)
        if needs_teacher and args.path_t is None:
            raise UserError(f"--distill {args.distill} needs a teacher; pass --path_t CHECKPOINT")
        train_loader, val_loader, info = build_data(args, ctx)
        teacher, teacher_name = None, "none"
        if needs_teacher:
            teacher, _ = load_teacher(args.path_t, info["num_classes"], args.model_t)
            teacher_name = teacher.model_name
            fit_to_data(teacher.to(ctx.device), info["input_size"], "teacher")
            ctx.log(f"teacher {teacher_name} from {args.path_t}: test top-1 "
                    f"{validate(teacher, val_loader, ctx.device)['acc']:.2f}")
        student = fit_to_data(create_pretrained(args.model_s, info["num_classes"], args.pretrained),
                              info["input_size"], "student")
        distiller = method(student, teacher, args, data_info=info).to(ctx.device)
        train_loader = add_batch_keys(train_loader, method.batch_keys, args)
        run_path = Path(args.save_folder) / "students" / student_run_name(args, teacher_name)
        meta = {"model_name": args.model_s, "num_classes": info["num_classes"],
                "dataset": args.dataset, "distill": args.distill, "teacher": teacher_name,
                "path_t": args.path_t}
        train(args, distiller, train_loader, val_loader, run_path, meta, ctx)


def main(argv=None):
    launch(run, parse_student_args(argv))


if __name__ == "__main__":
    main()

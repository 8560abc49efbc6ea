"""Distil a student from a trained teacher with any registered method (SimKD's flags).

    python train_student.py --path_t save/teachers/<run>/best.pth --distill kd --model_s resnet8x4
"""
from pathlib import Path

from dataset import build_loaders
from dataset.batch_keys import add_batch_keys
from distillers import get_distiller
from helper.checkpoint import load_teacher
from helper.errors import UserError
from helper.loop import validate
from helper.options import finish, student_parser
from helper.run_folder import student_run_name
from helper.trainer import fit, resume_checkpoint, seed_everything, select_device, user_errors
from models import create_model


def main(argv=None):
    parser = student_parser()
    args = parser.parse_args(argv)
    args = finish(parser, args, args.model_s)
    with user_errors():
        method = get_distiller(args.distill)
        if method.needs_teacher and args.path_t is None:
            raise UserError(f"--distill {args.distill} needs a teacher; pass --path_t CHECKPOINT")
        device = select_device(args)
        seed = seed_everything(args)
        train_loader, val_loader, info = build_loaders(
            args.dataset, args.data_folder, args.batch_size, device, seed=seed, jitter=args.jitter)
        teacher, teacher_name = None, "none"
        if method.needs_teacher:
            teacher, _ = load_teacher(args.path_t, info["num_classes"], args.model_t)
            teacher_name = teacher.model_name
            teacher.to(device)
            print(f"teacher {teacher_name} from {args.path_t}: test top-1 "
                  f"{validate(teacher, val_loader, device)['acc']:.2f}")
        student = create_model(args.model_s, num_classes=info["num_classes"])
        distiller = method(student, teacher, args, data_info=info).to(device)
        train_loader = add_batch_keys(train_loader, method.batch_keys, args)
        run_path = Path(args.save_folder) / "students" / student_run_name(args, teacher_name)
        meta = {"model_name": args.model_s, "num_classes": info["num_classes"],
                "dataset": args.dataset, "distill": args.distill, "teacher": teacher_name,
                "path_t": args.path_t}
        resume = resume_checkpoint(args, run_path, meta)
        fit(args, distiller, train_loader, val_loader, run_path, meta, device=device, resume=resume)


if __name__ == "__main__":
    main()

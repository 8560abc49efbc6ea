"""Train a model with cross-entropy: a teacher, or the student-alone baseline (SimKD's flags).

    python train_teacher.py --model resnet32x4 --dataset cifar100
"""
from pathlib import Path

from dataset import build_loaders
from distillers import get_distiller
from helper.options import finish, teacher_parser
from helper.run_folder import teacher_run_name
from helper.trainer import fit, resume_checkpoint, seed_everything, select_device, user_errors
from models import create_model


def main(argv=None):
    parser = teacher_parser()
    args = parser.parse_args(argv)
    args = finish(parser, args, args.model)
    with user_errors():
        device = select_device(args)
        seed = seed_everything(args)
        train_loader, val_loader, info = build_loaders(
            args.dataset, args.data_folder, args.batch_size, device, seed=seed, jitter=args.jitter)
        model = create_model(args.model, num_classes=info["num_classes"])
        distiller = get_distiller("vanilla")(model, None, args, data_info=info).to(device)
        run_path = Path(args.save_folder) / "teachers" / teacher_run_name(args)
        meta = {"model_name": args.model, "num_classes": info["num_classes"],
                "dataset": args.dataset, "distill": "vanilla", "teacher": None}
        resume = resume_checkpoint(args, run_path, meta)
        fit(args, distiller, train_loader, val_loader, run_path, meta, device=device, resume=resume)


if __name__ == "__main__":
    main()

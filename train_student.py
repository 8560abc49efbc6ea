"""Distil a student from a trained teacher with any registered method (SimKD's flags).

    python train_student.py --path_t save/teachers/<run>/best.pth --distill kd --model_s resnet8x4
"""
from pathlib import Path

from dataset.batch_keys import add_batch_keys
from helper.checkpoint import create_pretrained, load_teacher
from helper.distributed import launch
from helper import fkd_labels
from helper.evaluate import evaluate
from helper.errors import UserError
from helper.loop import validate
from helper.options import parse_student_args
from helper.probe import linear_probe
from helper.resume import refuse_overwrite
from helper.run_folder import student_run_name
from helper.teacher_cache import attach as attach_teacher_cache, file_sha256
from helper.teacher_forward import wrap_teacher
from helper.trainer import build_data, train, user_errors
from models.base import fit_to_data
from models.teachers import as_list, ensemble_of, teacher_specs


def load_teachers(config, ctx, specs, train_loader):
    """The teachers of ``specs`` (path, model name), each loaded, fitted to the data and given
    its fast forward (--teacher_forward); with --fkd none runs: the stored outputs stand in.
    Returns the training loader (FKD's replaces it), the teachers, and ``(path, teacher)`` of
    those loaded from a checkpoint (none with --fkd)."""
    teacher, info = config.teacher, config.data_info
    if teacher.fkd is not None:
        train_loader, stored_teacher = fkd_labels.attach(train_loader, config, ctx)
        return train_loader, [stored_teacher], []
    teachers = []
    for path, name in specs:
        model, _ = load_teacher(path, info["num_classes"], name, dataset=config.data.dataset)
        fit_to_data(model.to(ctx.device), info["input_size"], "teacher")
        teachers.append(wrap_teacher(model, teacher.teacher_forward, info["input_size"],
                                     ctx.device, teacher.teacher_compile, log=ctx.log))
    return train_loader, teachers, list(zip(teacher.paths, teachers))


def score_teachers(loaded, val_loader, num_classes, ctx):
    """Each teacher's test top-1 (and the ensemble's, for several), once, with a warning for a
    teacher no better than chance."""
    chance = 100.0 / num_classes
    scored = [(f"teacher {t.model_name} from {path}", t) for path, t in loaded]
    if len(loaded) > 1:
        scored.append((f"the ensemble of the {len(loaded)} teachers (mean logits)",
                       ensemble_of([t for _, t in loaded])))
    for what, model in scored:
        acc = validate(model, val_loader, ctx.device)["acc"]
        ctx.log(f"{what}: test top-1 {acc:.2f}")
        if acc < 2 * chance:
            ctx.log(f"warning: {what} scores {acc:.2f}, chance level for {num_classes} classes "
                    f"({chance:.2f}): it is untrained, trained on other data or another label "
                    "order, or fed inputs normalised otherwise; distilling from it teaches "
                    "nothing")


def run(config, ctx):
    with user_errors(ctx.rank):
        method, teacher_options, run = config.method, config.teacher, config.run
        if run.evaluate is not None:
            if len(as_list(teacher_options.model_t)) > 1:
                raise UserError("--evaluate scores one checkpoint; give one --model_t")
            score = linear_probe if run.linear_probe else evaluate  # helper/probe.py
            score(config, ctx, run.evaluate, model_name=teacher_options.model_t,
                  fallback=config.model, flag="--model_t")
            return
        needs_teacher = method.requires_teacher()
        if needs_teacher and teacher_options.path_t is None:
            raise UserError(f"--distill {method.name} needs a teacher; pass --path_t CHECKPOINT")
        specs = (teacher_specs(teacher_options.path_t, teacher_options.model_t)
                 if needs_teacher else [])
        if needs_teacher and len(specs) < method.min_teachers():
            raise UserError(f"--distill {method.name} weighs {method.min_teachers()} or more "
                            "teachers; pass several checkpoints: --path_t A B [C ...]")
        if len(specs) > 1 and not all(m.method.accepts_ensemble(m.options) for m in method.parts):
            raise UserError(f"--distill {method.name} reads one teacher's features; pass one "
                            "--path_t (several teachers: kd, dkd or another logit method, or "
                            "camkd)")
        config, train_loader, val_loader = build_data(config, ctx)
        info = config.data_info
        train_loader, teachers, loaded = load_teachers(config, ctx, specs, train_loader)
        teacher = ensemble_of(teachers)
        teacher_name = teacher.model_name if teacher is not None else "none"  # several: a+b
        student = fit_to_data(create_pretrained(config.model, info["num_classes"], run.pretrained),
                              info["input_size"], "student")
        distiller = method.build(student, teacher, config.run_info).to(ctx.device)
        run_path = Path(run.save_folder) / "students" / student_run_name(
            config, [t.model_name for t in teachers] or teacher_name)
        refuse_overwrite(config, run_path)  # before the teacher cache is built
        train_loader = attach_teacher_cache(train_loader, distiller, config, ctx)
        train_loader = add_batch_keys(train_loader, distiller.batch_requests(), method.name)
        # --resume compares the teacher files' SHA-256, not their paths: a file replaced at
        # its path is another teacher, one moved elsewhere the same
        meta = {"model_name": config.model, "num_classes": info["num_classes"],
                "dataset": config.data.dataset, "distill": method.name, "teacher": teacher_name,
                "path_t": teacher_options.path_t,
                "teacher_sha256": [file_sha256(p) for p, _ in specs]}
        train(config, distiller, train_loader, val_loader, run_path, meta, ctx,
              before_fit=lambda: score_teachers(loaded, val_loader, info["num_classes"], ctx))


def main(argv=None):
    launch(run, parse_student_args(argv))


if __name__ == "__main__":
    main()

"""The teachers of a student run, from its flags to the loader the loop reads: which files
(``--path_t``, ``--model_t``) the method needs, each loaded, fitted to the data and given its
fast forward (``--teacher_forward``); FKD's stored outputs standing in for them (``--fkd``);
their cached outputs (``--teacher_cache``); their score before training."""
from dataset.batch_keys import add_batch_keys
from distillers import distiller_classes
from helper import fkd_labels
from helper.run.checkpoint import load_teacher
from helper.core.errors import UserError
from helper.run.loop import validate
from helper.teachers.cache import attach as attach_teacher_cache, file_sha256
from helper.teachers.forward import prepare_teacher
from models.teachers import ensemble_of, teacher_specs


def needed_teachers(config):
    """``[(path, model name or None)]`` of the teachers the method needs (none: it needs
    none), refused early when they are missing, too few, or several for a method that reads
    one teacher's features."""
    method, files = config.method, config.teacher
    if not method.requires_teacher():
        return []
    if files.path_t is None:
        raise UserError(f"--distill {method.name} needs a teacher; pass --path_t CHECKPOINT")
    specs = teacher_specs(files.path_t, files.model_t)
    if len(specs) < method.min_teachers():
        raise UserError(f"--distill {method.name} weighs {method.min_teachers()} or more "
                        "teachers; pass several checkpoints: --path_t A B [C ...]")
    if len(specs) > 1 and not all(m.method.accepts_ensemble(m.options) for m in method.parts):
        raise UserError(f"--distill {method.name} reads one teacher's features; pass one "
                        f"--path_t, or distil several with {', '.join(ensemble_methods())}")
    return specs


def ensemble_methods():
    """The methods that distil from several teachers with their default options."""
    return [c.name for c in distiller_classes() if c.requires_teacher(c.Options())
            and c.accepts_ensemble(c.Options())]


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
        teachers.append(prepare_teacher(model, info["input_size"], ctx.device,
                                        teacher.teacher_forward, teacher.teacher_compile,
                                        log=ctx.log))
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


def training_loader(train_loader, distiller, config, ctx):
    """The loader the loop reads: the teachers' cached outputs attached (--teacher_cache),
    and the batch entries the method asks for (CRD's contrast indices, ...)."""
    train_loader = attach_teacher_cache(train_loader, distiller, config, ctx)
    return add_batch_keys(train_loader, distiller.batch_requests(), config.method.name)


def teacher_record(config, teacher_name, specs):
    """What a student's checkpoints record of its teachers: --resume compares the files'
    SHA-256, not their paths (a file replaced at its path is another teacher, one moved
    elsewhere the same)."""
    return {"teacher": teacher_name, "path_t": config.teacher.path_t,
            "teacher_sha256": [file_sha256(path) for path, _ in specs]}

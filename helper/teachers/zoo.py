"""The teacher zoo: published teachers, fetched and converted to the toolbox's format.

    python -m helper.teachers list [--plain]
    python -m helper.teachers fetch [NAME ...]          # all of the release's teachers by default
    python -m helper.teachers fetch resnet56_akamaster --release akamaster
    python -m helper.teachers register ARCHIVE_OR_FOLDER [NAME ...]
    python -m helper.teachers register FILE --model NAME [--dataset cifar10]   # one foreign file

``fetch`` downloads mdistiller's ``cifar_teachers.tar`` (GitHub release "checkpoints": the
teachers RepDistiller trained, ``cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth``, each
``{'model': state_dict, ...}``) to a temporary file with progress, resuming a dropped
connection where the server allows it (else restarting), then verifies it (the archive reads,
it holds each teacher asked for, each loads strict into our model of that name) and writes
each teacher as ``<save_folder>/teachers/<model>_vanilla_cifar100_trial_0/best.pth`` in the
toolbox's format (``helper.run.trainer.Fit.save``'s fields), which ``--path_t`` and ``--evaluate``
read. ``register`` does the same offline from a local copy of the archive (any tar
compression) or its extracted folder. Nothing is written unless every teacher asked for
verifies; the temporary file is removed whatever happens; every failure is one line and exit
code 2 (Ctrl-C: 130). Existing teachers are kept unless ``--force``.

``register FILE --model NAME`` converts one foreign checkpoint (RepDistiller/SimKD's
``{'model': ...}``, akamaster's ``{'state_dict': ..., 'best_prec1': ...}`` with DataParallel
keys, a bare state dict) into ``<model>_vanilla_<dataset>_trial_0/best.pth``.

``--release akamaster`` fetches akamaster's CIFAR-10 ResNets (``pretrained_models/*.th``, one
file per teacher). Every teacher written records the input normalisation it was trained with
(``'normalization'``: the release's, e.g. akamaster's ImageNet mean and std; a registered
file's from ``--mean/--std``, its own record, akamaster's for its trainer's files, else the
toolbox pipeline's of ``--dataset``), so that ``--path_t`` and ``--evaluate`` feed it inputs
normalised as it expects (``helper/teachers/normalization.py``).

When the teacher's data set is in ``--data_folder`` (nothing is downloaded for this), each
teacher written is scored once on its test split (``--evaluate``'s line and ``best.pth.eval.json``)
and compared with the accuracy its source publishes; more than 0.5 points off is reported as a
warning line (not an error). ``--no_check`` skips it. ``list --plain`` prints one line per
published teacher (``RELEASE MODEL DATASET TOP1``) for the table scripts (scripts/common.sh).

Note: a teacher lives where ``train_teacher.py`` would write its own run of that model, data
set and trial 0; training one there afterwards replaces it (``--trial`` avoids that).
"""
import argparse
import contextlib
import hashlib
import re
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch

from helper.run.checkpoint import FORMAT
from helper.teachers.download import check_url, download, why
from helper.core.errors import UserError
from helper.run.evaluate import check_published, data_missing
from helper.core.files import atomic_save, load_bytes, load_file, load_weights, state_dict_of
from helper.teachers.normalization import Normalization, data_normalization, stored_normalization
from models import create_model, model_names
from models.registry import accepts
from models.resnet_akamaster import AKAMASTER_MEAN, AKAMASTER_STD


@dataclass(frozen=True)
class Release:
    """A published archive of teachers: where it is, how it is laid out, what was reported."""
    name: str
    url: str
    dataset: str
    num_classes: int
    root: str                       # the folder inside the archive
    member: str                     # a teacher's path under ``root``, with {model}
    published: Dict[str, float] = field(default_factory=dict)  # model -> reported top-1
    source: str = ""
    sha256: Optional[str] = None    # of the archive, where it is known
    # A release of single files instead of an archive: model -> file name, ``url`` (and
    # ``member``) holding {file}.
    files: Dict[str, str] = field(default_factory=dict)
    # (mean, std) the teachers were trained with; None: the toolbox's pipeline of ``dataset``
    normalization: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None

    def member_of(self, model):
        """A teacher's path under ``root``."""
        return self.member.format(model=model, file=self.files.get(model, ""))

    def path_of(self, model):
        return f"{self.root}/{self.member_of(model)}" if self.root else self.member_of(model)

    def normalization_of(self):
        if self.normalization is None:
            return data_normalization(self.dataset)
        return Normalization(*self.normalization)


# RepDistiller's teachers (Tian et al., ICLR 2020, Table 1 and 2: the teachers' CIFAR-100 top-1),
# as mdistiller (Zhao et al., CVPR 2022) republished them.
RELEASES = {
    "mdistiller": Release(
        name="mdistiller",
        url="https://github.com/megvii-research/mdistiller/releases/download/checkpoints/"
            "cifar_teachers.tar",
        dataset="cifar100", num_classes=100, root="cifar_teachers",
        member="{model}_vanilla/ckpt_epoch_240.pth",
        published={"wrn_40_2": 75.61, "resnet56": 72.34, "resnet110": 74.31,
                   "resnet32x4": 79.42, "vgg13": 74.64, "ResNet50": 79.34},
        source="megvii-research/mdistiller release 'checkpoints' (RepDistiller's teachers)"),
    # akamaster/pytorch_resnet_cifar10 README.md: the published test errors 8.27, 7.37, 6.90,
    # 6.61, 6.32, 6.18 % and the files in pretrained_models/ ({'state_dict', 'best_prec1'}
    # through DataParallel); trainer.py normalises CIFAR-10 with ImageNet's mean and std.
    "akamaster": Release(
        name="akamaster",
        url="https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/"
            "{file}",
        dataset="cifar10", num_classes=10, root="", member="{file}",
        files={"resnet20_akamaster": "resnet20-12fca82f.th",
               "resnet32_akamaster": "resnet32-d509ac18.th",
               "resnet44_akamaster": "resnet44-014dd654.th",
               "resnet56_akamaster": "resnet56-4bfd9763.th",
               "resnet110_akamaster": "resnet110-1d1ed7c2.th",
               "resnet1202_akamaster": "resnet1202-f3b1deed.th"},
        published={"resnet20_akamaster": 91.73, "resnet32_akamaster": 92.63,
                   "resnet44_akamaster": 93.10, "resnet56_akamaster": 93.39,
                   "resnet110_akamaster": 93.68, "resnet1202_akamaster": 93.82},
        normalization=(AKAMASTER_MEAN, AKAMASTER_STD),
        source="akamaster/pytorch_resnet_cifar10 pretrained_models (CIFAR-10, option-A ResNets)"),
}
DEFAULT_RELEASE = "mdistiller"
def run_folder(save_folder, model, dataset):
    return Path(save_folder) / "teachers" / f"{model}_vanilla_{dataset}_trial_0"


# ----------------------------------------------------------------------------- verify, convert

def _first_line(error):
    return (why(error).strip().splitlines() or [type(error).__name__])[0].rstrip(":")


def _members(source, label, stack):
    """``{normalised path: opener}`` of the files in an archive (a tar, any compression) or a
    folder; an opener returns the file's bytes."""
    source = Path(source)
    if source.is_dir():
        base = source
        out = {}
        for path in source.rglob("*"):
            if path.is_file():
                out[path.relative_to(base).as_posix()] = path.read_bytes
        return out
    if not source.is_file():
        raise UserError(f"{source} does not exist; give the archive (cifar_teachers.tar) or the "
                        "folder it extracts to")
    try:
        archive = stack.enter_context(tarfile.open(source))
        infos = archive.getmembers()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise UserError(f"{label} is not a readable tar archive ({_first_line(e)}); it is "
                        "truncated or corrupt: fetch it again") from None

    def opener(info):
        def read():
            try:
                return archive.extractfile(info).read()
            except (tarfile.TarError, EOFError, OSError, zlib.error, AttributeError) as e:
                raise UserError(f"{label}: member {info.name} is unreadable "
                                f"({_first_line(e)}); the archive is truncated or corrupt: fetch "
                                "it again") from None
        return read
    return {re.sub(r"^(\./)+", "", i.name): opener(i) for i in infos if i.isfile()}


def check_sha256(path, expected):
    """Refuse a file whose SHA-256 is not ``expected`` (None: no check)."""
    if not expected:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != expected.lower():
        raise UserError(f"the archive's SHA-256 is {digest.hexdigest()}, not {expected}; it is "
                        "corrupt or another file: fetch it again")


def _find(members, release, model):
    """The member holding ``model``: the release's path, under any leading folders (a folder
    given at or above the archive's root)."""
    want = release.path_of(model)
    for tail in (want, release.member_of(model)):
        hits = [n for n in members if n == tail or n.endswith("/" + tail)]
        if hits:
            return min(hits, key=len)
    return None


def _load_bytes(data, where):
    try:
        return load_bytes(data, where)
    except UserError as e:
        raise UserError(f"{e}; the archive is corrupt or another one: fetch it again") from None


def _accuracy(checkpoint):
    for key in ("best_acc", "accuracy", "acc", "best_prec1"):
        value = checkpoint.get(key) if isinstance(checkpoint, dict) else None
        if torch.is_tensor(value) and value.numel() == 1:
            value = value.item()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def verify(source, release, models, label=None):
    """``{model: toolbox checkpoint}`` for each of ``models``, read from ``source`` (called
    ``label`` in messages) and loaded strict into our model of that name; a UserError at the
    first problem."""
    label = label or str(source)
    with contextlib.ExitStack() as stack:
        return _convert(_members(source, label, stack), release, models, label)


def _convert(members, release, models, label):
    missing = [m for m in models if _find(members, release, m) is None]
    present = [m for m in release.published if _find(members, release, m) is not None]
    if missing and present:
        raise UserError(f"{label} lacks {len(missing)} of the teachers asked for "
                        f"({', '.join(missing)}); it holds {', '.join(present)}: register "
                        f"those by name, e.g. python -m helper.teachers register {label} "
                        f"{' '.join(present)}")
    if missing:
        held = ", ".join(sorted(members)[:4]) or "nothing"
        raise UserError(f"{label} is not laid out as {release.name}'s archive: no "
                        f"{release.path_of(missing[0])} (it holds {held}"
                        f"{', ...' if len(members) > 4 else ''})")
    converted = {}
    for model in models:
        name = _find(members, release, model)
        where = f"{label}: {name}"
        checkpoint = _load_bytes(members[name](), where)
        state = state_dict_of(checkpoint, where, "teacher")
        net = create_model(model, num_classes=release.num_classes)
        load_weights(net, state, where)
        converted[model] = toolbox_checkpoint(
            net, model, release.num_classes, release.dataset, release.normalization_of(),
            f"{label} {name}",
            recorded=_accuracy(checkpoint), published=release.published.get(model),
            epoch=checkpoint.get("epoch") if isinstance(checkpoint, dict) else None)
    return converted


def toolbox_checkpoint(net, model, num_classes, dataset, normalization, source, *,
                       recorded=None, published=None, epoch=None):
    """A published teacher in the format ``train_teacher.py`` writes (``--path_t`` and
    ``--evaluate`` read it), with the normalisation it was trained with and where it came from."""
    return {"format": FORMAT, "model_name": model, "num_classes": num_classes, "dataset": dataset,
            "distill": "vanilla", "teacher": None, "model": net.state_dict(), "extras": {},
            "deploy": None, "epoch": epoch if isinstance(epoch, int) else None, "stage": "main",
            "accuracy": recorded, "best_acc": recorded, "published_acc": published,
            "normalization": normalization.as_dict(), "source": source}


def install(converted, release, save_folder, force=False, log=print):
    """Write each converted teacher's best.pth; on any failure (or Ctrl-C) the folders made
    here are removed again. Returns the written paths."""
    written, made = [], []
    try:
        for model, checkpoint in converted.items():
            folder = run_folder(save_folder, model, release.dataset)
            target = folder / "best.pth"
            trained = [n for n in ("last.pth", ".lock") if (folder / n).exists()]
            if trained:
                log(f"{model}: {folder} holds a run trained here ({trained[0]}); not touched")
                continue
            if target.exists() and not force:
                log(f"{model}: {target} exists; kept (--force replaces it)")
                continue
            missing = [p for p in (folder, *folder.parents) if not p.exists()]
            try:
                folder.mkdir(parents=True, exist_ok=True)
                made.extend(reversed(missing))  # outermost first
                atomic_save(checkpoint, target)
            except OSError as e:
                raise UserError(f"cannot write {target} ({e.strerror or e}); choose a writable "
                                "--save_folder") from None
            written.append(target)
    except BaseException:
        for folder in reversed(made):  # innermost first
            for path in folder.iterdir():
                if path.is_file():
                    path.unlink()
            folder.rmdir()
        raise
    return written


def _select(release, names):
    if not names or names == ["all"]:
        return list(release.published)
    unknown = [n for n in names if n not in release.published]
    if unknown:
        raise UserError(f"{release.name} has no teacher {unknown[0]!r}; it has: "
                        f"{', '.join(release.published)}")
    return list(dict.fromkeys(names))


def _report(written, release, log):
    for path in written:
        model = path.parent.name.split("_vanilla_")[0]
        published = release.published.get(model)
        note = f" (published top-1 {published:.2f})" if published is not None else ""
        log(f"{model}: {path}{note}")
    if written:
        log(f"score one with: python train_teacher.py --evaluate {written[0]} "
            f"--dataset {release.dataset}")


def score(written, dataset, args, log=print):
    """Each teacher just written, scored once on the test split of ``dataset`` when it is in
    ``--data_folder`` and compared with its published accuracy (helper.run.evaluate.check_published);
    ``--no_check`` skips this."""
    if not written or args.no_check:
        return
    missing = data_missing(dataset, args.data_folder)
    if missing:
        log(f"not scored against the published accuracy: {missing}")
        return
    for path in written:
        check_published(path, dataset, args.data_folder, args.save_folder, log)


# ----------------------------------------------------------------------------- commands

def cmd_list(args, log=print):
    if args.plain:
        for release in RELEASES.values():
            for model, acc in release.published.items():
                log(f"{release.name} {model} {release.dataset} {acc:.2f}")
        return
    if args.release == "torchvision":
        import torchvision.models
        log("torchvision: ImageNet weights by name (fetch NAME --release torchvision "
            "[--weights NAME])")
        for model in torchvision_models():
            for w in torchvision.models.get_model_weights(model):
                top1 = _top1(w)
                log(f"  {model:<20} {w.name:<16} published top-1 "
                    f"{'?' if top1 is None else f'{top1:.3f}'}")
        return
    for release in RELEASES.values():
        log(f"{release.name}: {release.url}")
        layout = (f"one file per teacher ({next(iter(release.files.values()))}, ...)"
                  if release.files else f"layout {release.path_of('<model>')}")
        log(f"  {release.source}; {release.dataset}, {layout}")
        for model, acc in release.published.items():
            target = run_folder(args.save_folder, model, release.dataset) / "best.pth"
            state = "installed" if target.exists() else "not fetched"
            log(f"  {model:<20} published top-1 {acc:.2f}  {state}: {target}")


def torchvision_models():
    """The ImageNet models with torchvision's weights by name."""
    import torchvision.models
    names = []
    for name in model_names():
        if accepts(name, "pretrained"):
            try:
                torchvision.models.get_model_weights(name)
            except ValueError:  # ours (mobilenet_v1): no published weights
                continue
            names.append(name)
    return names


def _torchvision_weights(model, text):
    import torchvision.models
    try:
        enum = torchvision.models.get_model_weights(model)
    except ValueError:
        raise UserError(f"torchvision has no weights for {model}") from None
    try:
        return enum[text.split(".")[-1]]
    except KeyError:
        choices = ", ".join(["DEFAULT"] + [w.name for w in enum])
        raise UserError(f"torchvision has no {text!r} weights for {model}; choose one of: "
                        f"{choices}") from None


def _top1(weights):
    metrics = (weights.meta.get("_metrics") or {}).get("ImageNet-1K") or {}
    value = metrics.get("acc@1")
    return float(value) if isinstance(value, (int, float)) else None


def fetch_torchvision(models, weights_name, save_folder, force=False, log=print):
    """ImageNet teachers from torchvision's weights (downloaded, hash-checked and cached by
    torch.hub), written as ``<model>_vanilla_imagenet_trial_0/best.pth``; returns their paths."""
    unknown = [m for m in models if m not in torchvision_models()]
    if not models or unknown:
        raise UserError(f"name the ImageNet teachers to fetch from torchvision"
                        f"{f' ({unknown[0]!r} is not one)' if unknown else ''}: "
                        f"{', '.join(torchvision_models())}")
    release = Release(name="torchvision", url="", dataset="imagenet", num_classes=1000,
                      root="", member="")
    converted = {}
    for model in models:
        weights = _torchvision_weights(model, weights_name)
        log(f"{model}: torchvision {weights.name} weights from {weights.url}")
        net = create_model(model, num_classes=1000, pretrained=weights.name)
        top1 = _top1(weights)
        preset = weights.transforms()
        converted[model] = toolbox_checkpoint(
            net, model, 1000, "imagenet", Normalization(preset.mean, preset.std), weights.url,
            recorded=top1, published=top1)
        release.published[model] = top1
    written = install(converted, release, save_folder, force, log)
    _report(written, release, log)
    return written


def cmd_fetch(args, log=print):
    if args.release == "torchvision":
        written = fetch_torchvision(args.names, args.weights, args.save_folder, args.force, log)
        score(written, "imagenet", args, log)
        return
    if args.url is not None:
        check_url(args.url)
    release = RELEASES[args.release]
    models = _select(release, args.names)
    if release.files and args.sha256:
        raise UserError(f"--sha256 checks an archive; {release.name} publishes one file per "
                        "teacher: drop --sha256")
    with tempfile.TemporaryDirectory(prefix=".kd-teachers-") as tmp:
        if release.files:  # one file per teacher, into a folder laid out as the release
            base = args.url.rstrip("/") + "/{file}" if args.url else release.url
            label = base.replace("/{file}", "")
            for model in models:
                name = release.files[model]
                download(base.format(file=name), Path(tmp) / name, retries=args.retries,
                         timeout=args.timeout, log=log)
            source = tmp
        else:
            label = args.url or release.url
            source = Path(tmp) / "archive.part"
            download(label, source, retries=args.retries, timeout=args.timeout, log=log)
            check_sha256(source, args.sha256 or release.sha256)
        converted = verify(source, release, models, label=label)
    written = install(converted, release, args.save_folder, args.force, log)
    _report(written, release, log)
    score(written, release.dataset, args, log)


# The class count of the data sets a single registered file may be for.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "imagenet": 1000}


def file_normalization(checkpoint, path, dataset, given=None):
    """The normalisation a registered file was trained with: ``given`` (--mean/--std), else
    the file's own (``helper.teachers.normalization.stored_normalization``: its record, its data set,
    akamaster's for a file of akamaster's trainer), else the toolbox pipeline's of ``dataset``."""
    if given is not None:
        return given
    return stored_normalization(checkpoint, path) or data_normalization(dataset)


def convert_file(path, model, dataset, normalization=None):
    """One foreign teacher file as a toolbox checkpoint of ``model`` for ``dataset``
    (``normalization``: the inputs it was trained on, when not the file's or its family's)."""
    path = Path(path)
    checkpoint = load_file(path, "teacher file")
    state = state_dict_of(checkpoint, path, "teacher file")
    num_classes = NUM_CLASSES[dataset]
    net = create_model(model, num_classes=num_classes)
    load_weights(net, state, str(path), name=f"{model} with {num_classes} classes ({dataset})")
    return toolbox_checkpoint(
        net, model, num_classes, dataset,
        file_normalization(checkpoint, path, dataset, normalization), str(path.resolve()),
        recorded=_accuracy(checkpoint),
        epoch=checkpoint.get("epoch") if isinstance(checkpoint, dict) else None)


def cmd_register(args, log=print):
    source = Path(args.source).expanduser()
    if args.model is not None:
        if args.names:
            raise UserError("--model registers one file; drop the teacher names "
                            f"{' '.join(args.names)}")
        if not source.is_file() or tarfile.is_tarfile(source):
            raise UserError(f"--model {args.model} registers one checkpoint file; {source} is "
                            "not one (an archive or folder of the release: drop --model)")
        single = Release(name="file", url="", dataset=args.dataset, num_classes=0, root="",
                         member="")
        converted = {args.model: convert_file(source, args.model, args.dataset,
                                              _given_normalization(args))}
        written = install(converted, single, args.save_folder, args.force, log)
        _report(written, single, log)
        score(written, args.dataset, args, log)
        return
    if args.mean is not None or args.std is not None:
        raise UserError("--mean and --std apply to one file registered with --model; a "
                        "release's teachers carry the release's normalisation: drop them")
    release = RELEASES[args.release]
    models = _select(release, args.names)
    if source.is_file():
        check_sha256(source, args.sha256 or release.sha256)
    converted = verify(source, release, models)
    written = install(converted, release, args.save_folder, args.force, log)
    _report(written, release, log)
    score(written, release.dataset, args, log)


def _channel_values(text, flag):
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"{flag} takes one number per channel separated by commas, e.g. "
                        f"0.485,0.456,0.406; got {text!r}") from None
    return values


def _given_normalization(args):
    """``--mean``/``--std`` as a Normalization, or None when neither is given."""
    if args.mean is None and args.std is None:
        return None
    if args.mean is None or args.std is None:
        raise UserError("give both --mean and --std (the normalisation the file was trained "
                        "with), or neither")
    mean, std = _channel_values(args.mean, "--mean"), _channel_values(args.std, "--std")
    try:
        return Normalization(mean, std)
    except ValueError as e:
        raise UserError(f"--mean/--std: {e}") from None


def parser():
    p = argparse.ArgumentParser(prog="python -m helper.teachers",
                                description="Published teachers: list, fetch, register.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--save_folder", "--save-folder", default="./save")
    common.add_argument("--release", default=DEFAULT_RELEASE,
                        choices=sorted(RELEASES) + ["torchvision"],
                        help="an archive of CIFAR teachers, or torchvision's ImageNet weights")
    common.add_argument("--sha256", default=None, help="the archive's expected SHA-256")
    scoring = argparse.ArgumentParser(add_help=False)
    scoring.add_argument("--data_folder", "--data-folder", default="./data",
                         help="where the data set is: each teacher written is scored on its "
                              "test split and compared with its published accuracy")
    scoring.add_argument("--no_check", "--no-check", action="store_true",
                         help="do not score the teachers written")
    ls = sub.add_parser("list", parents=[common], help="the known releases and their teachers")
    ls.add_argument("--plain", action="store_true",
                    help="one line per published teacher: RELEASE MODEL DATASET TOP1 (scripts)")
    f = sub.add_parser("fetch", parents=[common, scoring], help="download, verify and convert")
    f.add_argument("names", nargs="*", help="teachers (model names); all by default")
    f.add_argument("--weights", default="DEFAULT",
                   help="--release torchvision: the weights' name (e.g. IMAGENET1K_V1)")
    f.add_argument("--url", default=None, help="another location of the release's archive "
                   "(of the folder holding its files, for a release of single files)")
    f.add_argument("--force", action="store_true", help="replace teachers already there")
    f.add_argument("--retries", type=int, default=3, help="resumptions of a dropped download")
    f.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")
    r = sub.add_parser("register", parents=[common, scoring],
                       help="convert a local archive or folder")
    r.add_argument("source", help="the archive (cifar_teachers.tar) or its extracted folder")
    r.add_argument("names", nargs="*", help="teachers (model names); all by default")
    r.add_argument("--force", action="store_true", help="replace teachers already there")
    r.add_argument("--model", default=None, choices=model_names(), metavar="NAME",
                   help="register one checkpoint file (ours, RepDistiller's, akamaster's .th) as "
                        "this architecture")
    r.add_argument("--dataset", default="cifar100", choices=sorted(NUM_CLASSES),
                   help="with --model: the data set the file was trained on")
    r.add_argument("--mean", default=None, metavar="M1,M2,M3",
                   help="with --model: the per-channel mean the file's inputs were normalised "
                        "with (default: the file's own record, akamaster's for its files, else "
                        "this toolbox's for --dataset)")
    r.add_argument("--std", default=None, metavar="S1,S2,S3",
                   help="with --model: the std, as --mean")
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    command = {"list": cmd_list, "fetch": cmd_fetch, "register": cmd_register}[args.command]
    try:
        command(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; the download and the teachers not yet written were discarded",
              file=sys.stderr, flush=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

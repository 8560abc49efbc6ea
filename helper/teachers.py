"""The teacher zoo: published CIFAR-100 teachers, fetched and converted to the toolbox's format.

    python -m helper.teachers list
    python -m helper.teachers fetch [NAME ...]          # all of the release's teachers by default
    python -m helper.teachers register ARCHIVE_OR_FOLDER [NAME ...]
    python -m helper.teachers register FILE --model NAME [--dataset cifar10]   # one foreign file

``fetch`` downloads mdistiller's ``cifar_teachers.tar`` (GitHub release "checkpoints": the
teachers RepDistiller trained, ``cifar_teachers/<model>_vanilla/ckpt_epoch_240.pth``, each
``{'model': state_dict, ...}``) to a temporary file with progress, resuming a dropped
connection where the server allows it (else restarting), then verifies it (the archive reads,
it holds each teacher asked for, each loads strict into our model of that name) and writes
each teacher as ``<save_folder>/teachers/<model>_vanilla_cifar100_trial_0/best.pth`` in the
toolbox's format (``helper.trainer.Fit.save``'s fields), which ``--path_t`` and ``--evaluate``
read. ``register`` does the same offline from a local copy of the archive (any tar
compression) or its extracted folder. Nothing is written unless every teacher asked for
verifies; the temporary file is removed whatever happens; every failure is one line and exit
code 2 (Ctrl-C: 130). Existing teachers are kept unless ``--force``.

``register FILE --model NAME`` converts one foreign checkpoint (RepDistiller/SimKD's
``{'model': ...}``, akamaster's ``{'state_dict': ..., 'best_prec1': ...}`` with DataParallel
keys, a bare state dict) into ``<model>_vanilla_<dataset>_trial_0/best.pth``.

Note: a teacher lives where ``train_teacher.py`` would write its own run of that model, data
set and trial 0; training one there afterwards replaces it (``--trial`` avoids that).
"""
import argparse
import contextlib
import hashlib
import http.client
import os
import re
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional

import torch

from helper.checkpoint import FORMAT
from helper.errors import UserError
from helper.files import atomic_save, describe_mismatch, load_bytes, load_file, state_dict_of
from models import create_model, model_names
from models.registry import accepts
from models.resnet_akamaster import akamaster_state_dict


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

    def path_of(self, model):
        return f"{self.root}/{self.member.format(model=model)}"


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
}
DEFAULT_RELEASE = "mdistiller"
CHUNK = 1 << 16


def run_folder(save_folder, model, dataset):
    return Path(save_folder) / "teachers" / f"{model}_vanilla_{dataset}_trial_0"


# ----------------------------------------------------------------------------- download

class _Progress:
    """Progress on stdout: a carriage-return line on a terminal, else one line per quarter."""

    def __init__(self, label, total, out=None):
        self.label, self.total, self.out = label, total, out or sys.stdout
        self.tty = self.out.isatty()
        self.shown, self.last = -1, 0.0

    def __call__(self, done):
        mb = done / 1e6
        if self.total:
            pct = int(100 * done / self.total)
            text = f"{self.label}: {mb:.1f}/{self.total / 1e6:.1f} MB ({pct}%)"
        else:
            pct, text = -1, f"{self.label}: {mb:.1f} MB"
        now = time.monotonic()
        if self.tty:
            if now - self.last > 0.2 or (self.total and done >= self.total):
                self.out.write("\r" + text)
                self.out.flush()
                self.last = now
        elif self.total and pct // 25 > self.shown:
            self.shown = pct // 25
            print(text, file=self.out, flush=True)

    def end(self):
        if self.tty:
            self.out.write("\n")
            self.out.flush()


def _open(url, start, timeout):
    headers = {"User-Agent": "kd-toolbox"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _why(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        reason = error.reason
        return getattr(reason, "strerror", None) or str(reason)
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def download(url, path, *, retries=3, timeout=60, log=print):
    """Download ``url`` into ``path``; a dropped connection is resumed with a Range request
    where the server answers 206, else the download restarts. Returns the byte count."""
    done, total, failures = 0, None, 0
    progress = None
    with open(path, "wb") as f:
        while True:
            try:
                response = _open(url, done, timeout)
            except urllib.error.HTTPError as e:
                raise UserError(f"cannot download {url}: {_why(e)}; check the URL, or fetch the "
                                "archive by other means and use 'register'") from None
            except (urllib.error.URLError, OSError) as e:
                failures += 1
                if failures > retries or done == 0:
                    raise UserError(f"cannot download {url} ({_why(e)}); check the network, or "
                                    "fetch the archive by other means and use 'register'") from None
                continue
            with response:
                status = getattr(response, "status", 200)
                if done and status != 206:  # the server ignores Range: start again
                    log(f"the server cannot resume; restarting the download at 0 of "
                        f"{total or '?'} bytes")
                    f.seek(0)
                    f.truncate()
                    done = 0
                length = response.headers.get("Content-Length")
                if total is None and length is not None:
                    total = int(length) + done
                if progress is None:
                    progress = _Progress(f"downloading {url}", total)
                try:
                    while True:
                        chunk = response.read(CHUNK)
                        if not chunk:
                            break
                        f.write(chunk)
                        done += len(chunk)
                        progress(done)
                except (OSError, http.client.HTTPException) as e:
                    failures += 1
                    if failures > retries:
                        progress.end()
                        raise UserError(f"download of {url} failed after {retries} retries "
                                        f"({_why(e)}); try again later") from None
                    log(f"connection lost at {done} bytes ({_why(e)}); resuming")
                    continue
            if total is not None and done < total:
                failures += 1
                if failures > retries:
                    progress.end()
                    raise UserError(f"download of {url} stopped at {done} of {total} bytes after "
                                    f"{retries} retries; try again later")
                log(f"connection closed at {done} of {total} bytes; resuming")
                continue
            progress.end()
            return done


# ----------------------------------------------------------------------------- verify, convert

def _first_line(error):
    return (_why(error).strip().splitlines() or [type(error).__name__])[0].rstrip(":")


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
    for tail in (want, release.member.format(model=model)):
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
    for key in ("best_acc", "accuracy", "acc"):
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
        mismatch = describe_mismatch(net, state)
        if mismatch:
            raise UserError(f"{where} does not fit {model}: {mismatch}")
        net.load_state_dict(state, strict=True)
        recorded = _accuracy(checkpoint)
        epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
        converted[model] = {
            "format": FORMAT, "model_name": model, "num_classes": release.num_classes,
            "dataset": release.dataset, "distill": "vanilla", "teacher": None,
            "model": net.state_dict(), "extras": {}, "deploy": None,
            "epoch": epoch if isinstance(epoch, int) else None, "stage": "main",
            "accuracy": recorded, "best_acc": recorded,
            "published_acc": release.published.get(model),
            "source": f"{label} {name}"}
    return converted


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


# ----------------------------------------------------------------------------- commands

def cmd_list(args, log=print):
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
        log(f"  {release.source}; {release.dataset}, layout {release.path_of('<model>')}")
        for model, acc in release.published.items():
            target = run_folder(args.save_folder, model, release.dataset) / "best.pth"
            state = "installed" if target.exists() else "not fetched"
            log(f"  {model:<12} published top-1 {acc:.2f}  {state}: {target}")


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
    torch.hub), written as ``<model>_vanilla_imagenet_trial_0/best.pth``."""
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
        converted[model] = {
            "format": FORMAT, "model_name": model, "num_classes": 1000, "dataset": "imagenet",
            "distill": "vanilla", "teacher": None, "model": net.state_dict(), "extras": {},
            "deploy": None, "epoch": None, "stage": "main", "accuracy": top1, "best_acc": top1,
            "published_acc": top1, "source": weights.url}
        release.published[model] = top1
    _report(install(converted, release, save_folder, force, log), release, log)


def cmd_fetch(args, log=print):
    if args.release == "torchvision":
        fetch_torchvision(args.names, args.weights, args.save_folder, args.force, log)
        return
    release = RELEASES[args.release]
    models = _select(release, args.names)
    url = args.url or release.url
    fd, tmp = tempfile.mkstemp(prefix=".kd-teachers-", suffix=".part")
    os.close(fd)
    try:
        download(url, tmp, retries=args.retries, timeout=args.timeout, log=log)
        check_sha256(tmp, args.sha256 or release.sha256)
        converted = verify(tmp, release, models, label=url)
    finally:
        os.unlink(tmp)
    _report(install(converted, release, args.save_folder, args.force, log), release, log)


# The class count of the data sets a single registered file may be for.
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion_mnist": 10, "imagenet": 1000}


def _weights_of(checkpoint, where):
    """The state dict of one foreign file: ours, RepDistiller/SimKD's ``{'model': ...}``,
    akamaster's ``{'state_dict': ..., 'best_prec1': ...}`` (DataParallel keys), or bare."""
    try:
        return state_dict_of(checkpoint, where, "teacher")
    except UserError:
        state = akamaster_state_dict(checkpoint)
        if state is None:
            raise
        return state


def convert_file(path, model, dataset):
    """One foreign teacher file as a toolbox checkpoint of ``model`` for ``dataset``."""
    path = Path(path)
    checkpoint = load_file(path, "teacher file")
    state = _weights_of(checkpoint, path)
    num_classes = NUM_CLASSES[dataset]
    net = create_model(model, num_classes=num_classes)
    mismatch = describe_mismatch(net, state)
    if mismatch:
        raise UserError(f"{path} does not fit {model} with {num_classes} classes ({dataset}): "
                        f"{mismatch}")
    net.load_state_dict(state, strict=True)
    recorded = _accuracy(checkpoint)
    if recorded is None and isinstance(checkpoint, dict):
        recorded = _accuracy({"acc": checkpoint.get("best_prec1")})
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    return {"format": FORMAT, "model_name": model, "num_classes": num_classes,
            "dataset": dataset, "distill": "vanilla", "teacher": None,
            "model": net.state_dict(), "extras": {}, "deploy": None,
            "epoch": epoch if isinstance(epoch, int) else None, "stage": "main",
            "accuracy": recorded, "best_acc": recorded, "published_acc": None,
            "source": str(path.resolve())}


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
        converted = {args.model: convert_file(source, args.model, args.dataset)}
        _report(install(converted, single, args.save_folder, args.force, log), single, log)
        return
    release = RELEASES[args.release]
    models = _select(release, args.names)
    if source.is_file():
        check_sha256(source, args.sha256 or release.sha256)
    converted = verify(source, release, models)
    _report(install(converted, release, args.save_folder, args.force, log), release, log)


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
    sub.add_parser("list", parents=[common], help="the known releases and their teachers")
    f = sub.add_parser("fetch", parents=[common], help="download, verify and convert")
    f.add_argument("names", nargs="*", help="teachers (model names); all by default")
    f.add_argument("--weights", default="DEFAULT",
                   help="--release torchvision: the weights' name (e.g. IMAGENET1K_V1)")
    f.add_argument("--url", default=None, help="another location of the release's archive")
    f.add_argument("--force", action="store_true", help="replace teachers already there")
    f.add_argument("--retries", type=int, default=3, help="resumptions of a dropped download")
    f.add_argument("--timeout", type=float, default=60, help="seconds without data before a retry")
    r = sub.add_parser("register", parents=[common], help="convert a local archive or folder")
    r.add_argument("source", help="the archive (cifar_teachers.tar) or its extracted folder")
    r.add_argument("names", nargs="*", help="teachers (model names); all by default")
    r.add_argument("--force", action="store_true", help="replace teachers already there")
    r.add_argument("--model", default=None, choices=model_names(), metavar="NAME",
                   help="register one checkpoint file (ours, RepDistiller's, akamaster's .th) as "
                        "this architecture")
    r.add_argument("--dataset", default="cifar100", choices=sorted(NUM_CLASSES),
                   help="with --model: the data set the file was trained on")
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

"""``python -m helper.export RUN_OR_FILE --format onnx|torchscript [--opset N] [--dynamic_batch]``

Writes the deployable model of a checkpoint (a run folder means its ``best.pth``) as ONNX or
TorchScript and checks it on the test split of the run's data set: the exported model's logits
must equal PyTorch's within ``|exported - eager| <= ATOL + RTOL * |eager|`` for every logit, and
its top-1 must be PyTorch's. The model is what ``--evaluate`` scores (``helper.run.evaluate``
``load_for_evaluation``): a SimKD student is its ``'deploy'`` entry, the student with its
projector and the teacher's classifier as one module (``forward_test``); a checkpoint trained on
inputs normalised otherwise than its data set's pipeline carries the re-normalisation hook
(``helper.teachers.normalization``), which the export records as part of the graph (the model is wrapped
so that its forward pre-hooks run inside the traced call). Everything runs on the CPU, in
float32.

One line reports the result; a JSON record (``<file>.json``) is written beside the exported file,
which goes beside the checkpoint (``best.onnx``, ``best.torchscript.pt``) unless ``--output``.
Nothing is written when the export or its check fails: one line says why (exit code 2).

ONNX uses torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), not the
``torch.export``-based one that is the default since torch 2.9: the latter needs ``onnxscript``
(another package and its dependencies, about 25 MB), takes several times longer per model on the
CPU, and gains nothing for these models, which are static graphs of standard layers that the
tracer records exactly (the check on the test split shows it). Torch deprecates the
TorchScript-based exporter, so its warnings are recorded in the JSON record, not printed.
TorchScript is ``torch.jit.trace`` (``torch.jit.script`` cannot compile the models' ``is_feat``
branches); the traced module takes any batch size, and the check runs it on the loader's batches.
ONNX has a fixed batch of 1 unless ``--dynamic_batch``.

Both ONNX packages are optional and imported only here: the exporter needs ``onnx``, the check
runs the file with ONNX Runtime (``pip install onnx onnxruntime``); without them the export or
its check is refused with one line, and ``--no_check`` exports without ONNX Runtime.
"""
import io
import json
import platform
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn as nn

from helper.core.argtypes import OneLineParser, positive
from helper.core.errors import UserError
from helper.core.files import atomic_write, load_file
from models.base import dummy_input, evaluating, fit_to_data

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
DEFAULT_OPSET = 17
# The exported graph runs the same float32 operations as PyTorch in other kernels (ONNX
# Runtime's GEMM and convolution blocking, its fused Conv+BatchNorm): sums reordered, each
# logit off by a few ulps of the largest partial sums. 1e-4 absolute plus 1e-4 relative is
# ~1000 ulps of a logit of order 1: far above reordering, far below any wrong operation.
ATOL = 1e-4
RTOL = 1e-4
INSTALL_ONNX = "pip install onnx"  # the exporter serialises through it
INSTALL_ONNXRUNTIME = "pip install onnxruntime"


class Deployable(nn.Module):
    """A loaded model as one module mapping images to logits. Its forward pre-hooks (the input
    re-normalisation) run inside this module's forward, so a trace records them (a trace of the
    model itself calls its ``forward`` and skips its own hooks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        return self.model(images)


# ---- what to export -------------------------------------------------------------------------
def checkpoint_path(run_or_file):
    """The checkpoint a RUN folder (its ``best.pth``) or a FILE names."""
    path = Path(run_or_file)
    if path.is_dir():
        best = path / "best.pth"
        if not best.is_file():
            raise UserError(f"run folder {path} holds no best.pth (its run has not finished an "
                            "epoch); give a checkpoint file instead")
        return best
    if not path.is_file():
        raise UserError(f"{path} does not exist; give a run folder or a checkpoint file")
    return path


def dataset_of(path, checkpoint, given=None):
    """The data set the checkpoint was trained on: ``given`` (``--dataset``), else the one the
    checkpoint records, else its run folder's summary.json's."""
    if given:
        return given
    recorded = checkpoint.get("dataset") if isinstance(checkpoint, dict) else None
    if isinstance(recorded, str):
        return recorded
    summary = Path(path).parent / "summary.json"
    if summary.is_file():
        dataset = json.loads(summary.read_text()).get("dataset")
        if isinstance(dataset, str):
            return dataset
    raise UserError(f"{path} does not record its data set; pass --dataset NAME")


def num_classes_of(path, checkpoint):
    """The class count a checkpoint records (needed when no data is read, ``--no_check``)."""
    classes = checkpoint.get("num_classes") if isinstance(checkpoint, dict) else None
    if not isinstance(classes, int):
        raise UserError(f"{path} does not record its class count; drop --no_check so that the "
                        "data set tells it")
    return classes


def load_deployable(path, checkpoint, dataset, num_classes, input_size=None):
    """The checkpoint's model as ``--evaluate`` loads it, in eval mode on the CPU, wrapped as a
    ``Deployable``; ``input_size`` (C, H, W): the data's, checked with one sample."""
    from helper.run.evaluate import load_for_evaluation
    model, _ = load_for_evaluation(path, num_classes, checkpoint=checkpoint, dataset=dataset)
    model = model.cpu().float().eval()
    if input_size is not None:
        model = fit_to_data(model, input_size, "model")
    deployable = Deployable(model).eval()
    deployable.input_size = tuple(getattr(model, "input_size", input_size))
    deployable.model_name = getattr(model, "model_name", type(model).__name__)
    return deployable


def checking_loader(path, dataset, data_folder, batch_size):
    """``(loader, data info)``: the test split as ``--evaluate`` builds it (nothing is
    downloaded: missing data is refused)."""
    from helper.run.distributed import Context
    from helper.run.evaluate import data_missing
    from helper.run.options import RunConfig
    from helper.run.trainer import build_data
    missing = data_missing(dataset, data_folder)
    if missing:
        raise UserError(f"cannot check the export: {missing} (or pass --no_check)")
    config = RunConfig.create(None, data={"dataset": dataset, "data_folder": str(data_folder),
                                          "batch_size": batch_size, "num_workers": 0},
                              run={"evaluate": str(path)})
    config, _, loader = build_data(config, Context(device=torch.device("cpu")))
    return loader, config.data_info


# ---- exporting ------------------------------------------------------------------------------
def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def export_onnx(module, input_size, opset=DEFAULT_OPSET, dynamic_batch=False):
    """``(ONNX bytes, warnings)``: input ``images`` (batch, C, H, W), output ``logits``."""
    import_onnx()
    example = torch.zeros(2 if dynamic_batch else 1, *input_size)
    axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=["images"], output_names=["logits"],
                              dynamic_axes=axes)
        except RuntimeError as e:  # torch.onnx.errors.OnnxExporterError among them
            raise UserError(f"{module.model_name} cannot be exported to ONNX opset {opset} "
                            f"({_first_line(e)}); try another --opset or --format "
                            "torchscript") from e
    return buffer.getvalue(), _messages(caught)


def export_torchscript(module, input_size):
    """``(TorchScript bytes, warnings)``: ``torch.jit.trace`` on a batch of 2."""
    buffer = io.BytesIO()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with evaluating(module):
                traced = torch.jit.trace(module, (dummy_input(module, input_size),),
                                         check_trace=False)
            torch.jit.save(traced, buffer)
        except RuntimeError as e:
            raise UserError(f"{module.model_name} cannot be traced to TorchScript "
                            f"({_first_line(e)}); try --format onnx") from e
    return buffer.getvalue(), _messages(caught)


def _messages(caught):
    """The distinct warning lines, for the record."""
    return sorted({f"{w.category.__name__}: {_first_line(w.message)}" for w in caught})


# ---- running the exported model -------------------------------------------------------------
def import_onnx():
    """``onnx``, which torch's ONNX exporter needs, or a one-line refusal."""
    try:
        import onnx
    except ImportError:
        raise UserError(f"exporting to ONNX needs the onnx package, which is not installed: "
                        f"{INSTALL_ONNX}") from None
    return onnx


def import_onnxruntime(purpose):
    """``onnxruntime``, or a one-line refusal naming ``purpose`` and the install command."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(f"{purpose} needs ONNX Runtime, which is not installed: "
                        f"{INSTALL_ONNXRUNTIME}") from None
    return onnxruntime


def onnx_session(data, threads=None):
    """An ONNX Runtime CPU session of the model ``data`` (bytes); ``threads``: its intra-op
    threads (None: ONNX Runtime's default)."""
    ort = import_onnxruntime("running the ONNX model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def onnx_runner(data, threads=None):
    """``run(images) -> logits`` (tensors) through ONNX Runtime."""
    session = onnx_session(data, threads)

    def run(images):
        return torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])
    return run


def torchscript_runner(data):
    """``run(images) -> logits`` through the loaded TorchScript module."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")
    module.eval()

    def run(images):
        with torch.no_grad():
            return module(images)
    return run


# ---- the check --------------------------------------------------------------------------------
def _pieces(images, batch):
    """``images`` in chunks of ``batch`` (None: whole)."""
    return [images] if batch is None else list(images.split(batch))


@torch.no_grad()
def compare(module, run, loader, batch=None):
    """Logits of ``module`` (eager) and ``run`` (exported) on every test image; ``batch``: the
    exported model's fixed batch (None: any). Returns the check's record."""
    diff, close = 0.0, True
    images_seen = eager_hits = exported_hits = disagree = 0
    for loaded in loader:
        targets = loaded["targets"]
        for images, labels in zip(_pieces(loaded["images"].float(), batch),
                                  _pieces(targets, batch)):
            eager = module(images)
            exported = run(images).to(eager.dtype)
            if exported.shape != eager.shape:
                raise UserError(f"the exported model gives logits of shape "
                                f"{tuple(exported.shape)}, PyTorch {tuple(eager.shape)}")
            diff = max(diff, (exported - eager).abs().nan_to_num(float("inf")).max().item())
            close = close and bool(torch.isclose(exported, eager, rtol=RTOL, atol=ATOL).all())
            top_eager, top_exported = eager.argmax(1), exported.argmax(1)
            eager_hits += (top_eager == labels).sum().item()
            exported_hits += (top_exported == labels).sum().item()
            disagree += (top_eager != top_exported).sum().item()
            images_seen += labels.numel()
    if images_seen == 0:
        raise UserError("the test split is empty; check --data_folder")
    return {"images": images_seen, "atol": ATOL, "rtol": RTOL, "max_abs_diff": diff,
            "within_tolerance": close, "top1_pytorch": 100.0 * eager_hits / images_seen,
            "top1_exported": 100.0 * exported_hits / images_seen,
            "predictions_differ": disagree,
            "passed": close and eager_hits == exported_hits}


def check_line(check):
    return (f"test top-1 {check['top1_exported']:.2f} (PyTorch {check['top1_pytorch']:.2f}) on "
            f"{check['images']} images, logits within {check['max_abs_diff']:.1e} of PyTorch's "
            f"(tolerance {ATOL:g} + {RTOL:g}*|logit|)")


def refuse_failed_check(check, fmt):
    if not check["within_tolerance"]:
        raise UserError(f"the {fmt} export's logits differ from PyTorch's by up to "
                        f"{check['max_abs_diff']:.2e}, beyond {ATOL:g} + {RTOL:g}*|logit|; "
                        "nothing written")
    raise UserError(f"the {fmt} export scores top-1 {check['top1_exported']:.2f}, PyTorch "
                    f"{check['top1_pytorch']:.2f} ({check['predictions_differ']} predictions "
                    "differ); nothing written")


# ---- the command ----------------------------------------------------------------------------
def output_path(checkpoint, fmt, given=None):
    if given:
        return Path(given)
    return checkpoint.with_name(checkpoint.stem + FORMATS[fmt])


def exported(module, fmt, opset, dynamic_batch):
    """``(bytes, warnings, runner, fixed batch or None)`` of the export in ``fmt``."""
    if fmt == "onnx":
        data, caught = export_onnx(module, module.input_size, opset, dynamic_batch)
        return data, caught, (lambda: onnx_runner(data)), (None if dynamic_batch else 1)
    data, caught = export_torchscript(module, module.input_size)
    return data, caught, (lambda: torchscript_runner(data)), None


def write_outputs(out, data, record):
    """The exported file, then its record (``<file>.json``), each written atomically."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda f: f.write(data))
        atomic_write(record_path(out),
                     lambda f: f.write((json.dumps(record, indent=2) + "\n").encode()))
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e}); pass a writable --output") from e


def record_path(out):
    return out.with_name(out.name + ".json")


def make_record(args, path, checkpoint, module, dataset, out, caught, check):
    stored = checkpoint if isinstance(checkpoint, dict) else {}
    own = getattr(module.model, "input_normalization", None)
    versions = {"torch": torch.__version__, "python": platform.python_version()}
    if args.format == "onnx" and check is not None:
        versions["onnxruntime"] = import_onnxruntime("the ONNX check").__version__
    return {"checkpoint": str(path.resolve()), "file": str(out.resolve()),
            "format": args.format, "opset": args.opset if args.format == "onnx" else None,
            "batch": "dynamic" if args.format == "torchscript" or args.dynamic_batch else 1,
            "model_name": module.model_name, "deploy": (stored.get("deploy") or {}).get("builder"),
            "distill": stored.get("distill"), "dataset": dataset,
            "input_size": list(module.input_size),
            "renormalizes_from": own.as_dict() if own is not None else None,
            "check": check, "exporter_warnings": caught, "versions": versions,
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def export(args):
    """Export and check as ``args`` says; returns ``(output path, record)``."""
    path = checkpoint_path(args.run_or_file)
    if args.format == "onnx":
        import_onnx()
        if not args.no_check:
            import_onnxruntime("checking the ONNX export (or pass --no_check)")
    checkpoint = load_file(path, "checkpoint to export")
    dataset = dataset_of(path, checkpoint, args.dataset)
    loader = None
    if args.no_check:
        module = load_deployable(path, checkpoint, dataset, num_classes_of(path, checkpoint))
    else:
        loader, info = checking_loader(path, dataset, args.data_folder, args.batch_size)
        module = load_deployable(path, checkpoint, dataset, info["num_classes"],
                                 info["input_size"])
    data, caught, runner, batch = exported(module, args.format, args.opset, args.dynamic_batch)
    check = None if loader is None else compare(module, runner(), loader, batch)
    if check is not None and not check["passed"]:
        refuse_failed_check(check, args.format)
    out = output_path(path, args.format, args.output)
    record = make_record(args, path, checkpoint, module, dataset, out, caught, check)
    write_outputs(out, data, record)
    return out, record


def result_line(out, record):
    check = record["check"]
    what = check_line(check) if check else "not checked (--no_check)"
    opset = f" opset {record['opset']}" if record["opset"] else ""
    return (f"exported {record['model_name']} ({record['dataset']}) to {out} "
            f"({record['format']}{opset}, batch {record['batch']}): {what}; "
            f"record {record_path(out)}")


def parser():
    p = OneLineParser(prog="python -m helper.export", description=__doc__.split("\n\n")[1])
    p.add_argument("run_or_file", help="a run folder (its best.pth) or a checkpoint file")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--opset", type=positive(int), default=DEFAULT_OPSET,
                   help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--dynamic_batch", "--dynamic-batch", action="store_true",
                   help="ONNX: any batch size (default: a fixed batch of 1)")
    p.add_argument("--output", help="where to write the file (default: beside the checkpoint)")
    p.add_argument("--dataset", help="the checkpoint's data set, when it does not record it")
    p.add_argument("--data_folder", "--data-folder", default="./data",
                   help="where the data set's test split is (nothing is downloaded)")
    p.add_argument("--batch_size", "--batch-size", type=positive(int), default=256,
                   help="images per batch of the check")
    p.add_argument("--no_check", "--no-check", action="store_true",
                   help="export without comparing with PyTorch on the test split")
    return p


def check_arguments(p, args):
    from torch.onnx import _constants
    low, high = _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    if args.format == "onnx" and not low <= args.opset <= high:
        p.error(f"--opset {args.opset}: this torch exports ONNX opsets {low} to {high}")


def main(argv=None):
    p = parser()
    args = p.parse_args(argv)
    check_arguments(p, args)
    try:
        out, record = export(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    print(result_line(out, record), flush=True)


if __name__ == "__main__":
    main()

"""``--evaluate FILE --linear_probe DATASET``: how well FILE's representation transfers.

The model is frozen (eval mode: BatchNorms on their running statistics, no gradient); its
pooled feature (the classifier's input, ``model(x, is_feat=True)[0][-1]``) is extracted once,
in batches, for every image of DATASET's train and test splits, through the data set's own
evaluation pipeline (no augmentation; the data set's normalisation, and the checkpoint's own
where it was trained on other inputs: the re-normalisation hook of ``--evaluate``). A linear
classifier is then trained on the train features and scored on the test features: one line and
a JSON record (``--evaluate``'s fields, ``dataset`` the probe's, and ``linear_probe``). This is
CRD's transferability experiment (Tian et al., ICLR 2020, section 4.3: CIFAR-100 students
frozen, a linear classifier trained on their last hidden layer for STL-10 and Tiny-ImageNet,
images downsampled to 32x32).

DATASET is any data set the toolbox builds, read from ``--probe_data_folder`` (default
``--data_folder``): ``cifar10``, ``mnist``, ... in memory, ``folder`` (any ImageFolder:
``train/`` and ``val/`` or ``test/``, e.g. STL-10 or Tiny-ImageNet written as JPEGs), of any
size; ``--input_size N`` sets the folder data sets' evaluation crop (Resize, CenterCrop), which
must be the image size the model was trained on (32 for a CIFAR model, as in CRD). A model whose
input shape is not the probe data's is refused in one line: a CIFAR/MNIST checkpoint records
its data set, so its image size is known; a model of 1-channel MNIST inputs cannot take RGB
images and no standard adaptation exists (greyscale conversion or channel replication would be
a choice of ours, not the experiment's), so it is refused rather than adapted.

The recipe (``RECIPE``): the features are fixed tensors; a ``torch.nn.Linear`` (weights
N(0, 0.01), bias 0) is trained with cross-entropy by SGD at lr 0.05, momentum 0.9, weight decay
5e-4, batch 64, for 100 epochs at a constant lr, over the train features shuffled each epoch by a
generator seeded with ``--seed`` plus the trial. These are the settings of the CRD
transferability probe as reproduced by DCD's ``transfer_student.py`` (giakoumoglou/distillers,
08d927f: SGD 0.05, momentum 0.9, weight decay 5e-4, batch 64, 100 epochs, decay epochs
150/180/210 hence none within them, the new fc initialised N(0, 0.01) with zero bias);
RepDistiller, CRD's code, publishes no probe script. Unlike that script the network stays in
eval mode and sees unaugmented images (its BatchNorm statistics would otherwise move with the
probe data, and the features would be recomputed every epoch): a linear probe of fixed
features, whose result depends on the checkpoint and the seed only. Top-1 is reported on the
test split after the last epoch (DCD reports the last epoch too). Features are held in memory:
N x D x 4 bytes per split (50,000 CIFAR images x 256 dimensions: 51 MB).
"""
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from dataset import AugmentConfig, build_loaders
from helper.run.checkpoint import model_name_from_path
from helper.core.errors import UserError
from helper.run.evaluate import (architecture_to_load, evaluate, input_normalization_record,
                             load_for_evaluation,
                             save_folder_given, write_record)
from helper.core.files import load_file, state_dict_of
from helper.teachers.normalization import stored_normalization
from helper.run.precision import Precision, use_channels_last
from helper.run.trainer import trial_seed
from models import create_model
from models.base import fit_to_data

RECIPE = {"classifier": "torch.nn.Linear(D, K), weight N(0, 0.01), bias 0",
          "loss": "cross-entropy", "optimizer": "SGD", "learning_rate": 0.05, "momentum": 0.9,
          "weight_decay": 5e-4, "batch_size": 64, "epochs": 100, "schedule": "constant",
          "features": "pooled (the classifier's input), eval mode, unaugmented, extracted once"}

# The image shape of the in-memory data sets, which a checkpoint's 'dataset' names.
TRAINED_SHAPES = {"cifar10": (3, 32, 32), "cifar100": (3, 32, 32), "mnist": (1, 28, 28),
                  "fashion_mnist": (1, 28, 28)}

# Feature matrices up to this size are moved to the device for the probe's training.
ON_DEVICE_BYTES = 2 ** 31


def own_classes(checkpoint, path, name, flag="--model"):
    """The class count of the checkpoint's classifier: recorded in the file (this toolbox's
    checkpoints), else read from the shape of its classifier's weight."""
    info = checkpoint if isinstance(checkpoint, dict) else {}
    stored = info.get("num_classes")
    if isinstance(stored, int) and not isinstance(stored, bool) and stored > 0:
        return stored
    if name is None:
        raise UserError(f"cannot tell the architecture of {path}; pass {flag} NAME")
    state = state_dict_of(checkpoint, path, "checkpoint to probe")
    model = create_model(name, num_classes=2)  # an unknown name: its own one-line error
    try:
        classifier = model.get_classifier()
        key = next(k for k, m in model.named_modules() if m is classifier)
        return int(state[f"{key}.weight"].shape[0])
    except (NotImplementedError, StopIteration, KeyError, AttributeError, IndexError):
        raise UserError(f"cannot tell the class count of {path}: it records none and holds "
                        f"no classifier weight where {name} keeps it; check {flag}") from None


def check_shape(checkpoint, path, model_name, dataset, shape):
    """Refuse a probe whose images are not of the shape the checkpoint was trained on, where
    the file tells: its channels by its normalisation (``helper.teachers.normalization``), its image
    size by its data set when that is held in memory (CIFAR, MNIST)."""
    info = checkpoint if isinstance(checkpoint, dict) else {}
    trained = TRAINED_SHAPES.get(info.get("dataset"))
    own = stored_normalization(checkpoint, path)
    channels = len(own.mean) if own is not None else trained[0] if trained else None
    shape = tuple(shape)
    given = "x".join(map(str, shape))
    if channels is not None and channels != shape[0]:
        what = f"{info['dataset']}'s {'x'.join(map(str, trained))}" if trained else \
            f"{channels}-channel"
        raise UserError(f"{model_name} was trained on {what} images and {dataset} gives "
                        f"{given}: a linear probe needs the model's own input shape, and no "
                        f"standard way turns {shape[0]}-channel images into {channels}-channel "
                        f"ones; probe on a data set of {channels}-channel images")
    if trained is None or trained == shape:
        return
    size = "x".join(map(str, trained))
    hint = (f"pass --input_size {trained[1]} (as CRD probes CIFAR-100 students on STL-10 and "
            "Tiny-ImageNet downsampled to 32x32)" if dataset in ("imagenet", "cub200", "folder")
            else f"probe on a data set of {size} images")
    raise UserError(f"{model_name} was trained on {info['dataset']}'s {size} images and "
                    f"{dataset} gives {given}; {hint}")


def extract(model, batches, channels_last=False, precision=None):
    """The pooled features and targets of every batch, float32 on the CPU."""
    feats, targets = [], []
    with torch.inference_mode():
        for batch in batches:
            images = batch["images"]
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            if precision is not None:
                with precision.autocast():
                    out = model(images, is_feat=True)
            else:
                out = model(images, is_feat=True)
            feats.append(out[0][-1].flatten(1).float().cpu())
            targets.append(batch["targets"].cpu())
    if not feats:
        raise UserError("the probe data has an empty split; check --probe_data_folder")
    return torch.cat(feats), torch.cat(targets)


def train_linear(x, y, num_classes, seed, device, recipe=RECIPE):
    """The linear classifier of ``recipe`` trained on features ``x`` (N, D), labels ``y``."""
    g = torch.Generator().manual_seed(int(seed))
    layer = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        layer.weight.normal_(0.0, 0.01, generator=g)
        layer.bias.zero_()
    layer = layer.to(device)
    on_device = x.numel() * x.element_size() <= ON_DEVICE_BYTES
    if on_device:
        x, y = x.to(device), y.to(device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=recipe["learning_rate"],
                                momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
    n, batch = len(x), recipe["batch_size"]
    # A step of a 64 x D by D x K product is too small to split: on the CPU one thread runs it
    # about 10x faster than two that share cores with other work (measured: 0.5 s against 5 s
    # for 100 epochs of 300 features)
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        with torch.enable_grad():
            for _ in range(recipe["epochs"]):
                order = torch.randperm(n, generator=g)
                if on_device:
                    order = order.to(device)
                for start in range(0, n, batch):
                    idx = order[start:start + batch]
                    xb, yb = x[idx].to(device), y[idx].to(device)
                    loss = F.cross_entropy(layer(xb), yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return layer.eval()


def score(layer, x, y, device, batch=4096):
    """Top-1 and top-5 (in %) of ``layer`` on features ``x``, labels ``y``."""
    top1 = top5 = 0
    with torch.no_grad():
        for start in range(0, len(x), batch):
            logits = layer(x[start:start + batch].to(device))
            target = y[start:start + batch].to(device)
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top == target[:, None]
            top1 += int(hit[:, 0].sum())
            top5 += int(hit.any(1).sum())
    return 100.0 * top1 / len(x), 100.0 * top5 / len(x)


def record_path(checkpoint_path, run, dataset):
    """``<file>.probe_<dataset>.json`` beside the checkpoint, or in ``--save_folder`` (when
    given, or when the checkpoint's folder is not writable) as ``<folder>_<file>...``; returns
    ``(path, why not beside it or None)``."""
    path = Path(checkpoint_path)
    name = f"{path.name}.probe_{dataset}.json"
    folder = path.resolve().parent
    elsewhere = Path(run.save_folder) / (f"{folder.name}_{name}" if folder.name else name)
    if save_folder_given(run):
        return elsewhere, None
    if not os.access(folder, os.W_OK | os.X_OK):
        return elsewhere, f"{path.parent} is not writable"
    return path.parent / name, None


def linear_probe(config, ctx, path, model_name=None, fallback=None, flag="--model"):
    """Probe ``path`` on ``--linear_probe``'s data (see the module docstring); the
    architecture as ``--evaluate`` finds it. Returns the record (written by rank 0)."""
    data, run = config.data, config.run
    dataset = run.linear_probe
    if ctx.distributed:
        raise UserError("--linear_probe runs in one process; drop --multiprocessing-distributed "
                        "(or torchrun)")
    checkpoint = load_file(path, "checkpoint to probe")  # fails before the data is built
    info = checkpoint if isinstance(checkpoint, dict) else {}
    name = (architecture_to_load(checkpoint, path, model_name, fallback) or info.get("model_name")
            or model_name_from_path(path))
    classes = own_classes(checkpoint, path, name, flag)
    folder = run.probe_data_folder or data.data_folder
    if dataset in TRAINED_SHAPES:  # its shape is known: refuse before loading it
        check_shape(checkpoint, path, name or Path(path).name, dataset, TRAINED_SHAPES[dataset])
    seed = trial_seed(run)
    train_loader, test_loader, sizes = build_loaders(
        dataset, folder, data.batch_size, ctx.device, seed=seed, num_workers=data.num_workers,
        augment=AugmentConfig(input_size=config.augment.input_size))
    check_shape(checkpoint, path, name or Path(path).name, dataset, sizes["input_size"])
    model, checkpoint = load_for_evaluation(path, classes, model_name, fallback, flag,
                                            checkpoint, dataset=dataset)
    model = fit_to_data(model.to(ctx.device), sizes["input_size"], "model")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    channels_last = use_channels_last(config.precision, model, ctx.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    precision = Precision.from_options(config.precision, ctx.device)
    start = time.perf_counter()
    try:
        train_x, train_y = extract(model, train_loader.unaugmented(), channels_last, precision)
        test_x, test_y = extract(model, test_loader, channels_last, precision)
    except TypeError as e:  # a model without the feature API (is_feat)
        raise UserError(f"{model.model_name} gives no pooled feature (model(x, is_feat=True): "
                        f"{e}); a linear probe needs the toolbox's model API") from e
    extracted = time.perf_counter() - start
    num_classes = sizes["num_classes"]
    layer = train_linear(train_x, train_y, num_classes, seed, ctx.device)
    fitted = time.perf_counter() - start - extracted
    acc, acc5 = score(layer, test_x, test_y, ctx.device)
    train_acc, _ = score(layer, train_x, train_y, ctx.device)
    stored = checkpoint if isinstance(checkpoint, dict) else {}
    result = {
        "checkpoint": str(Path(path).resolve()), "model_name": model.model_name,
        "dataset": dataset, "data_folder": str(Path(folder).expanduser().resolve()),
        "num_classes": num_classes, "model_classes": classes,
        "linear_probe": {"acc": acc, "acc_top5": acc5, "train_acc": train_acc,
                         "chance": 100.0 / num_classes, "train_images": len(train_x),
                         "test_images": len(test_x), "feature_dim": int(train_x.shape[1]),
                         "input_size": list(sizes["input_size"]), "seed": seed,
                         "recipe": RECIPE,
                         "seconds": {"features": extracted, "fit": fitted}},
        "device": str(ctx.device), "normalization": input_normalization_record(model, dataset),
        "amp": precision.dtype is not None and str(precision.dtype).replace("torch.", ""),
        "recorded": {k: stored[k] for k in ("accuracy", "best_acc", "epoch", "distill",
                                            "dataset")
                     if isinstance(stored.get(k), (int, float, str))},
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if ctx.is_main:
        out, moved = record_path(path, run, dataset)
        write_record(out, result)
        ctx.log(f"linear probe {path}: {model.model_name} features ({train_x.shape[1]}-d) on "
                f"{dataset} ({len(train_x)} train, {len(test_x)} test images, {num_classes} "
                f"classes): top-1 {acc:.2f} top-5 {acc5:.2f} (chance {100.0 / num_classes:.2f}; "
                f"train top-1 {train_acc:.2f}) in {extracted:.0f}s + {fitted:.0f}s; written to "
                f"{out}" + (f" ({moved})" if moved else ""))
    return result


def score_checkpoint(config, ctx, flag, model_name=None):
    """``--evaluate FILE``: its test top-1, or with ``--linear_probe`` its probe
    (helper/run/probe.py); the architecture ``model_name`` (``--model_t``), else the file's, else
    the run's model; errors name ``flag``."""
    if isinstance(model_name, (list, tuple)):
        raise UserError(f"--evaluate scores one checkpoint; give one {flag}")
    score = linear_probe if config.run.linear_probe else evaluate
    return score(config, ctx, config.run.evaluate, model_name=model_name,
                 fallback=config.model, flag=flag)

"""Checkpoints: RNG state, and loading teachers and pretrained weights from our own or foreign
files (reading and writing the files themselves: ``helper/core/files.py``)."""
import random
import re
from pathlib import Path

import numpy as np
import torch

from helper.core.errors import UserError
from helper.core.files import load_file, load_weights, state_dict_of
from helper.teachers.normalization import data_normalization, renormalize, stored_normalization
from models import create_deployed, create_model, model_names
from models.registry import accepts, unknown_model
from models.sources import is_file_model

FORMAT = "kd-toolbox/1"


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": _numpy_state_to_tensor(np.random.get_state())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    np.random.set_state(_tensor_to_numpy_state(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state_to_tensor(state):
    name, keys, pos, has_gauss, cached = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
            "has_gauss": has_gauss, "cached": cached}


def _tensor_to_numpy_state(s):
    return ("MT19937", s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["cached"])


def _to_tuple(x):
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def model_name_from_path(path):
    """The architecture named by RepDistiller/SimKD folder and file names, or None.

    SimKD students live in ``S:<student>_T:<teacher>_...``; teachers in
    ``<model>_vanilla_<dataset>_trial_<n>/<model>_best.pth`` (SimKD) or
    ``<model>_<dataset>_lr_..._trial_<n>/ckpt_epoch_240.pth`` (RepDistiller). The longest
    registered name that prefixes the folder (or file) name followed by '_' is taken.
    """
    path = Path(path)
    folder = path.parent.name
    match = re.match(r"S[:~](.+?)_T[:~]", folder)
    if match and not unknown_model(match.group(1)):  # also timm:NAME, torchvision:NAME
        return match.group(1)
    for candidate in (folder, path.stem):
        hits = [n for n in model_names() if candidate == n or candidate.startswith(n + "_")]
        if hits:
            return max(hits, key=len)
    return None


def load_teacher(path, num_classes, model_name=None, checkpoint=None, dataset=None):
    """Build the teacher named by ``model_name``, the checkpoint, or its path, and load it.

    A toolbox checkpoint with a ``deploy`` entry (a SimKD student: the student, its projector
    and the reused classifier) loads as that whole model. ``checkpoint``: the file's contents
    when already read. ``dataset``: the run's data set; a teacher trained on inputs normalised
    otherwise takes this data set's (``helper.teachers.normalization``). Returns ``(model, checkpoint)``.
    Every failure is a one-line UserError.
    """
    if checkpoint is None:
        checkpoint = load_file(path, "teacher checkpoint")
    state = state_dict_of(checkpoint, path, "teacher checkpoint")
    info = checkpoint if isinstance(checkpoint, dict) else {}
    if "proj" in info and not info.get("deploy"):
        # SimKD's train_student.py saves a simkd student as {'model', 'proj', ...}
        raise UserError(f"teacher checkpoint {path} holds a SimKD student of SimKD's code: its "
                        "logits come from its projector ('proj') and its teacher's classifier, "
                        "which the file does not hold, so it cannot be scored or teach alone; "
                        "start a student from its weights with --pretrained instead")
    stored = info.get("model_name")
    name = model_name or stored or model_name_from_path(path)
    if name is None:
        raise UserError(f"cannot tell the teacher's architecture from {path}; pass --model_t NAME")
    deploy = info.get("deploy")
    named_by_file = [n for n in [name] + list((deploy or {}).get("kwargs", {}).values())
                     if is_file_model(n) and n != model_name]
    if named_by_file:
        raise UserError(f"teacher checkpoint {path} names the model {named_by_file[0]}, a Python "
                        "file, which is never imported because a checkpoint names it (that "
                        f"would run its code); if you trust the file, pass --model_t "
                        f"{named_by_file[0]}")
    unknown = unknown_model(name)  # a registered name, or timm:/torchvision:/FILE.py:FUNCTION
    if unknown:
        raise UserError(f"unknown teacher model {name!r}: {unknown}")
    stored_classes = info.get("num_classes")
    if stored_classes is not None and stored_classes != num_classes:
        raise UserError(f"teacher checkpoint {path} has {stored_classes} classes but the data set "
                        f"has {num_classes}; use a teacher trained on the same data set")
    if deploy:
        if model_name is not None and stored is not None and model_name != stored:
            raise UserError(f"teacher checkpoint {path} holds a {stored} student of --distill "
                            f"{info.get('distill')} with the method's extras, and loads as that "
                            f"model; drop --model_t {model_name}")
        try:
            model = create_deployed(deploy["builder"], **deploy["kwargs"])
        except (KeyError, TypeError) as e:
            raise UserError(f"teacher checkpoint {path} holds a deployed model this version "
                            f"cannot build ({e}); use the toolbox version that wrote it") from e
        model.model_name = name
        state = deploy["state_dict"]
    else:
        model = create_model(name, num_classes=num_classes)
    hint = ""
    if stored not in (None, name):
        hint = f"; the checkpoint records model {stored}: drop --model_t {name}"
    load_weights(model, state, f"teacher checkpoint {path}", hint)
    if dataset is not None:
        renormalize(model, stored_normalization(checkpoint, path), data_normalization(dataset))
    model.eval()
    return model, checkpoint


def create_pretrained(name, num_classes, pretrained=None):
    """``create_model``, then ``--pretrained`` weights: a file (any model) or torchvision's
    weights by name (ImageNet models). When the class counts differ, the classifier keeps its
    fresh initialisation (fine-tuning, as MGD's ``--use-pretrained`` on CUB-200)."""
    model = create_model(name, num_classes=num_classes)
    if pretrained is None:
        return model
    if Path(pretrained).expanduser().exists():
        path = Path(pretrained).expanduser()
        state = state_dict_of(load_file(path, "pretrained weights"), path, "pretrained weights")
    elif accepts(name, "pretrained"):
        state = create_model(name, num_classes=1000, pretrained=pretrained).state_dict()
    else:
        raise UserError(f"--pretrained {pretrained}: no such file (weights by name exist for the "
                        "ImageNet models, timm:NAME and torchvision:NAME only)")
    own = model.state_dict()
    classifier = {k for k, m in model.named_modules() if m is model.get_classifier()}
    for key in list(state):
        if key.rsplit(".", 1)[0] in classifier and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    load_weights(model, state, f"pretrained weights {pretrained}")
    return model

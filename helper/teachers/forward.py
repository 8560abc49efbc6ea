"""The frozen teacher's forward pass at its limit (issue 18, part 1): ``--teacher_forward``.

A distillation teacher only ever runs in eval mode, where a BatchNorm is an affine map per
channel with fixed statistics; when it directly follows a convolution it folds into that
convolution's weight and bias exactly (up to float rounding):

    W' = W * g / sqrt(var + eps)        b' = (b - mean) * g / sqrt(var + eps) + beta

``FastTeacher`` wraps the loaded teacher: a copy of it with every such Conv->BN pair folded
(the BN replaced by ``nn.Identity``; unchanged tensors are shared with the original, not
copied), in channels-last memory format where that is faster, run under
``torch.inference_mode`` and optionally compiled (``--teacher_compile``, the folded copy
alone). Everything else a method asks of the teacher (``feature_shapes``,
``get_bn_before_relu`` for OFD/MGD margins, ``get_classifier`` for SimKD/SRRL, ``model_name``)
is answered by the original, unchanged model, which also runs whenever the teacher is put in
training mode (a method whose teacher uses batch statistics).

Which pairs fold is found by running the model once per feature call with hooks and a
``TorchFunctionMode``: a BN folds into a conv when the BN's input *is* the conv's output
tensor, each module is called once per forward pass, and nothing else reads that output (no
other torch call outside the BN, no second BN, not the model's own output: WRN's stem conv is
both its first feature and the input of the first block's BN, so that pair stays unfolded).
The folded copy is then checked against the original on a random batch when it is built, for
the logits (``model(x)``) and every feature list (``is_feat=True`` with ``preact`` False and
True), each within ``TOLERANCE`` of the largest magnitude of the original's output. Should a
check fail (a use the pass cannot see; none of the zoo's models), each pair is tried alone
and only the exact ones are folded, and a path whose check still fails runs the original:
features alone (``logits only`` in ``describe()``) or both. Features therefore stay equal to
the eager model's and methods that read them get the folded teacher too.

Outputs are returned as ordinary tensors in the default (contiguous) memory format: inference
tensors cannot be saved for backward, and feature losses ``view`` their inputs.

``--teacher_forward``: ``auto`` (the default) folds, and uses channels-last on the CPU, where
scripts/benchmark.py measured it faster (README, speed table); on CUDA ``auto`` folds without
channels-last (fp32 channels-last was not measured on a GPU here). ``fold`` and ``fold_cl``
choose explicitly; ``eager`` runs the teacher as loaded, under ``torch.no_grad`` as before.
"""
import copy
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option
from models.base import fit_to_data

MODES = ("auto", "eager", "fold", "fold_cl")
TOLERANCE = 1e-4  # relative to the largest magnitude of the eager output (the bound)


# ---- finding and folding the pairs ----------------------------------------------------------
def _calls(model, x, kwargs):
    """The forward call ``model(x, **kwargs)`` without a graph."""
    with torch.no_grad():
        return model(x, **kwargs)


class _Uses(TorchFunctionMode):
    """Counts, for each conv output in ``produced`` (``{id: (conv name, tensor)}``), the torch
    calls that read it outside a BatchNorm's own forward (where the BN reads its input)."""

    def __init__(self, produced: dict):
        super().__init__()
        self.produced, self.uses, self.inside_bn = produced, Counter(), 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if not self.inside_bn:
            for t in _tensors((args, kwargs or {})):
                found = self.produced.get(id(t))
                if found is not None and found[1] is t:
                    self.uses[id(t)] += 1
        return func(*args, **(kwargs or {}))


def conv_bn_pairs(model: nn.Module, probes: List[dict], x: torch.Tensor) -> Dict[str, str]:
    """``{bn name: conv name}`` of the BNs whose input is a conv's output, in every forward
    call of ``probes`` (keyword arguments of ``model(x, **kw)``), each called once per call,
    where nothing else reads that output: no other torch call (a shortcut, a feature
    computed from it) and not the model's own output (WRN's stem is its first feature)."""
    convs = {m: n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    bns = {m: n for n, m in model.named_modules()
           if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None}
    agreed: Optional[Dict[str, str]] = None
    for kwargs in probes:
        produced, counts, candidates = {}, {}, {}  # id(conv output) -> (conv name, output)
        uses = _Uses(produced)

        def after_conv(module, inputs, output):
            counts[module] = counts.get(module, 0) + 1
            produced[id(output)] = (convs[module], output)

        def before_bn(module, inputs):
            counts[module] = counts.get(module, 0) + 1
            uses.inside_bn += 1
            found = produced.get(id(inputs[0]))
            if found is not None and found[1] is inputs[0]:
                candidates[bns[module]] = (found[0], id(inputs[0]))

        def after_bn(module, inputs, output):
            uses.inside_bn -= 1

        handles = [m.register_forward_hook(after_conv) for m in convs]
        handles += [m.register_forward_pre_hook(before_bn) for m in bns]
        handles += [m.register_forward_hook(after_bn) for m in bns]
        try:
            with uses:
                out = _calls(model, x, kwargs)
        finally:
            for h in handles:
                h.remove()
        returned = {id(t) for t in _tensors(out)}
        names = {**convs, **bns}
        once = {names[m] for m, c in counts.items() if c == 1}
        bn_inputs = Counter(out_id for _, out_id in candidates.values())
        pairs = {b: conv for b, (conv, out_id) in candidates.items()
                 if b in once and conv in once and out_id not in returned
                 and not uses.uses.get(out_id) and bn_inputs[out_id] == 1}
        agreed = pairs if agreed is None else {b: c for b, c in agreed.items()
                                               if pairs.get(b) == c}
    return agreed or {}


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing ``bn(conv(x))`` of the eval-mode BN (folded in float64)."""
    ones = torch.ones_like(bn.running_var)
    gamma = (bn.weight if bn.weight is not None else ones).double()
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() if bn.bias is not None else torch.zeros_like(scale)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    folded = copy.copy(conv)  # same hyper-parameters; new parameter dict below
    folded._parameters = dict(conv._parameters)
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    folded.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    folded.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(dtype),
                               requires_grad=False)
    return folded


def _set(model: nn.Module, name: str, module: nn.Module):
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def folded_copy(model: nn.Module, pairs: Dict[str, str], channels_last: bool = False) -> nn.Module:
    """A copy of ``model`` with each pair folded, in channels-last format if asked; every
    tensor neither folded nor converted is shared with ``model``."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())
            if not (channels_last and t.dim() == 4)}
    fast = copy.deepcopy(model, memo)
    for bn_name, conv_name in pairs.items():
        _set(fast, conv_name, fold_conv_bn(fast.get_submodule(conv_name),
                                           fast.get_submodule(bn_name)))
        _set(fast, bn_name, nn.Identity())
    if channels_last:
        fast.to(memory_format=torch.channels_last)
    return fast.eval()


# ---- checking ------------------------------------------------------------------------------
def _tensors(obj) -> list:
    """The tensors in ``obj``, a tensor or nested lists, tuples and dicts (others skipped)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    return []


def max_relative_error(fast_out, eager_out) -> float:
    """The largest ``|fast - eager|`` over all outputs, each relative to the largest magnitude
    of its eager tensor (a mismatch of structure or shape is ``inf``)."""
    a, b = _tensors(fast_out), _tensors(eager_out)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        x, y = x.double(), y.double()
        scale = y.abs().max().item() or 1.0
        worst = max(worst, (x - y).abs().max().item() / scale)
    return worst


# ---- the wrapper ---------------------------------------------------------------------------
def _plain(out):
    """Inference tensors as ordinary ones, in the default memory format."""
    if isinstance(out, torch.Tensor):
        return out.clone(memory_format=torch.contiguous_format)
    return type(out)(_plain(item) for item in out)


class FastTeacher(nn.Module):
    """The teacher with folded BNs, channels-last and inference mode (see the module doc).

    ``original`` is the loaded model, unchanged; ``fast`` the folded copy. ``logits_fast`` and
    ``feats_fast`` say which of the two paths run the folded copy (each passed its check).
    """

    def __init__(self, original: nn.Module, channels_last: bool, example: torch.Tensor):
        super().__init__()
        original.eval()
        probes = [{}, *_feature_probes(original, example)]
        has_feats = len(probes) > 1
        pairs = conv_bn_pairs(original, probes, example)
        self.original = original
        self.channels_last = bool(channels_last)
        self._fold(pairs, probes, example)
        if max(self.errors.values()) > TOLERANCE:
            # a conv whose raw output is used beside its BN (WRN's stem is also its first
            # feature): keep the pairs that are exact each on their own
            self._fold({b: c for b, c in pairs.items() if self._exact({b: c}, probes, example)},
                       probes, example)
        self.logits_fast = self.errors["logits"] <= TOLERANCE
        self.feats_fast = has_feats and self.logits_fast and all(
            e <= TOLERANCE for k, e in self.errors.items() if k != "logits")
        self.train(False)

    def _fold(self, pairs, probes, example):
        """Fold ``pairs`` into ``self.fast`` and measure its error on each probe."""
        self.fast = folded_copy(self.original, pairs, self.channels_last)
        self.folded_pairs = len(pairs)
        self.errors = {}
        for kwargs in probes:
            key = "logits" if not kwargs else f"feats(preact={kwargs['preact']})"
            self.errors[key] = max_relative_error(self._fast_call(example, kwargs),
                                                  _calls(self.original, example, kwargs))

    def _exact(self, pairs, probes, example) -> bool:
        fast = folded_copy(self.original, pairs)
        return all(max_relative_error(_calls(fast, example, kw),
                                      _calls(self.original, example, kw)) <= TOLERANCE
                   for kw in probes)

    def _fast_call(self, x, kwargs):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            out = self.fast(x, **kwargs)
        return _plain(out)

    def forward(self, x, is_feat=False, preact=False):
        kwargs = {"is_feat": True, "preact": preact} if is_feat else {}
        if not self.training and (self.feats_fast if is_feat else self.logits_fast):
            return self._fast_call(x, kwargs)
        with torch.no_grad():
            return self.original(x, **kwargs)

    def train(self, mode: bool = True):
        """Training mode (``--teacher_train``: the teacher's BNs use batch statistics) runs
        the original, eager; the folded copy stays in eval."""
        super().train(mode)
        self.fast.eval()
        return self

    def compile(self, *args, **kwargs):
        """``torch.compile`` the folded copy (``--compile``, ``--teacher_compile``), frozen:
        Inductor treats its weights as constants (it only ever runs without a graph), folds
        and, on the CPU, pre-packs them for oneDNN (the teacher forward about 3% faster than
        unfrozen, measured once on an AMD EPYC). The original stays eager for training mode."""
        options = {"freezing": True, **kwargs.pop("options", {})}
        self.fast.compile(*args, options=options, **kwargs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["original"], name)

    def describe(self) -> str:
        where = ("logits and features" if self.feats_fast else
                 "logits only (features run eager)" if self.logits_fast else "nothing (eager)")
        worst = max(self.errors.values())
        return (f"{self.folded_pairs} BatchNorms folded into their convolutions"
                f"{', channels-last' if self.channels_last else ''}, inference mode; folded "
                f"path: {where}; largest relative difference to eager {worst:.1e}")


def _feature_probes(model, example) -> List[dict]:
    """The feature calls ``model`` answers (``preact`` False and True): none for a plain module
    (logits only), no ``preact=True`` for a timm/torchvision model, which refuses it."""
    probes = []
    for preact in (False, True):
        kwargs = {"is_feat": True, "preact": preact}
        try:
            out = _calls(model, example, kwargs)
        except (TypeError, UserError):
            continue
        if isinstance(out, (tuple, list)) and len(out) == 2:
            probes.append(kwargs)
    return probes


def channels_last_for(mode: str, device) -> bool:
    if mode == "auto":
        return torch.device(device).type == "cpu"
    return mode == "fold_cl"


def wrap_teacher(teacher: nn.Module, mode: str, input_size, device, compile: bool = False,
                 log=None):
    """The teacher as ``--teacher_forward mode`` runs it: ``teacher`` itself for ``eager``,
    else a ``FastTeacher`` checked on a random batch of two at ``input_size`` on ``device``
    (``log`` gets one line saying what was folded)."""
    if mode not in MODES:
        raise UserError(f"--teacher_forward {mode!r} is not one of {', '.join(MODES)}")
    if compile and torch.device(device).type == "cpu":
        from helper.run.precision import has_cpu_compiler
        if not has_cpu_compiler():
            raise UserError("--teacher_compile on the CPU needs a C++ compiler (g++ or clang++ "
                            "not found); install one, set CXX, or drop --teacher_compile")
    if mode == "eager":
        if compile:
            teacher.compile()
        return teacher
    example = torch.randn(2, *input_size, generator=torch.Generator().manual_seed(0)).to(device)
    fast = FastTeacher(teacher, channels_last_for(mode, device), example)
    if fast.folded_pairs == 0:  # nothing to fold (an MLP): the copy would only cost memory
        what, fast = "no BatchNorm follows a convolution; the teacher runs as loaded", teacher
    else:
        what = fast.describe()
    if compile:
        fast.compile()
    if log is not None:
        log(f"teacher forward: {what}{', compiled' if compile else ''}")
    return fast


def prepare_teacher(model: nn.Module, input_size, device, mode: str = "auto",
                    compile: bool = False, log=None) -> nn.Module:
    """A loaded teacher as a run uses it: on ``device``, checked with one sample of the data's
    ``input_size`` (C, H, W) and made to take it (``models.base.fit_to_data``; a teacher that
    cannot is one line), then run as ``--teacher_forward mode`` and ``--teacher_compile``
    (``wrap_teacher``). train_student.py prepares each ``--path_t`` so, scripts/benchmark.py its
    teachers; several are then queried together by ``models.teachers.ensemble_of``."""
    fit_to_data(model.to(device), input_size, "teacher")
    return wrap_teacher(model, mode, input_size, device, compile, log=log)


# --teacher_train: the spellings of the per-method switches it replaced are aliases of it
TEACHER_TRAIN_ALIASES = ("--reviewkd_teacher_train", "--reviewkd-teacher-train",
                         "--ofd_teacher_train", "--ofd-teacher-train")


@dataclass(frozen=True)
class ForwardOptions(OptionGroup):
    """How the teacher's forward runs."""
    title = "teacher speed"
    teacher_forward: str = option("auto", "auto (BN folded into convs; channels-last on the "
                                  "CPU), fold, fold_cl, or eager (the teacher as loaded)",
                                  "--teacher-forward", choices=MODES)
    teacher_compile: bool = option(False, "torch.compile the teacher alone (its folded copy)",
                                   "--teacher-compile")


@dataclass(frozen=True)
class TeacherModeOptions(OptionGroup):
    """The teacher's BatchNorm mode while the student trains."""
    title = "teacher mode (distillers/base.py)"
    teacher_train: bool = option(
        False, "keep the teacher in training mode during training epochs: its BatchNorms "
        "normalise with each batch's statistics (and update their running ones); it still gets "
        "no gradient and never learns. The setting of references that never call "
        "teacher.eval() (ReviewKD's CIFAR train.py, OFD's code, hankyul2/KnowledgeDistillation); "
        "--reviewkd_teacher_train and --ofd_teacher_train are its old names", "--teacher-train",
        *TEACHER_TRAIN_ALIASES)


"""The speed flags: mixed precision (``--amp``: bf16 autocast on CPU; fp16 with a gradient scaler,
or bf16, on CUDA; one ``Precision`` object carries the choice through the loop and into
checkpoints), ``--channels_last``, ``--compile``, and the fused SGD of ``--optimizer sgd``."""
import functools
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option, require


@functools.lru_cache(maxsize=None)
def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm), read
    from /proc/cpuinfo's flags; True where that cannot be read (no way to tell: not refused)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = {word for line in f if line.lower().startswith(("flags", "features"))
                     for word in line.split(":", 1)[1].split()}
    except OSError:
        return True
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


class Precision:
    def __init__(self, amp=False, dtype=None, device=torch.device("cpu")):
        self.device_type = torch.device(device).type
        self.dtype = None
        if amp:
            name = dtype or ("fp16" if self.device_type == "cuda" else "bf16")
            if name == "fp16" and self.device_type != "cuda":
                raise UserError("--amp_dtype fp16 needs CUDA; use --amp_dtype bf16 on the CPU")
            if self.device_type == "cpu" and not native_cpu_bf16():
                # measured on an AVX2-only AMD EPYC: a resnet32x4 -> resnet8x4 KD step 21x
                # slower under bf16 autocast than in fp32 (issue 18)
                raise UserError("--amp on this CPU runs bf16 without hardware support (no AVX-512 "
                                "BF16 or AMX), about 20x slower than fp32; drop --amp here")
            self.dtype = torch.float16 if name == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    @classmethod
    def from_options(cls, options, device):
        return cls(options.amp, options.amp_dtype, device)

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def step(self, loss, optimizer):
        """Backward and optimizer step (through the scaler for fp16)."""
        if self.scaler is None:
            loss.backward()
            optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self):
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state):
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


def make_sgd(params, *, lr, momentum, weight_decay, nesterov=False):
    """SGD with momentum (Nesterov's with ``nesterov``), fused into one kernel per step where
    PyTorch has one for the device (the CPU and CUDA): the same update as the default for-loop
    SGD, fewer passes over memory."""
    params = list(params)
    fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                                 for p in params)
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay,
                           nesterov=nesterov, fused=fused or None)


def has_cpu_compiler() -> bool:
    """Whether Inductor can build CPU kernels: ``$CXX`` (default g++) or clang++ is on PATH."""
    return bool(shutil.which(os.environ.get("CXX") or "g++") or shutil.which("clang++"))


def compile_models(distiller):
    """``--compile``: ``torch.compile`` the student and the teacher in place (``Module.compile``,
    so state-dict keys and checkpoints are unchanged). The method's own losses and extras stay
    eager: several keep Python-side state (memory banks, re-matching) that would break graphs.
    The first iterations of each mode (train, eval, last smaller batch) are slow while Inductor
    compiles."""
    device = next(distiller.student.parameters()).device
    if device.type == "cpu" and not has_cpu_compiler():
        compiler = os.environ.get("CXX") or "g++"
        raise UserError(f"--compile on the CPU needs a C++ compiler ({compiler} or clang++ "
                        "not found); install one (apt-get install g++), set CXX, or drop "
                        "--compile")
    distiller.student.compile()
    if distiller.teacher is not None:
        distiller.teacher.compile()


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def use_channels_last(options, model: torch.nn.Module, device) -> bool:
    """Whether the run trains (or scores) in channels-last format: ``--channels_last`` or
    ``--memory_format channels_last``; under ``auto``, on the CPU for a model with 2-D
    convolutions. There oneDNN runs them faster in channels-last: a student's training step
    took 0.57x (MobileNetV2) to 0.95x (ShuffleV2) of its contiguous time, resnet8x4 0.84x,
    and every method's iteration 0.67-0.95x of its contiguous time with the same teacher
    (AMD EPYC, scripts/benchmark.py; README, Speed). Not measured on a GPU here, where fp32
    convolutions are usually fastest contiguous."""
    setting = "channels_last" if options.channels_last else options.memory_format
    if setting == "auto":
        return (torch.device(device).type == "cpu"
                and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()))
    return setting == "channels_last"


@dataclass(frozen=True)
class PrecisionOptions(OptionGroup):
    """The speed flags of a run."""
    title = "speed"
    amp: bool = option(False, "mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA")
    amp_dtype: Optional[str] = option(None, "override the --amp data type", "--amp-dtype",
                                      choices=["bf16", "fp16"])
    memory_format: str = option(
        "auto", "memory format of the models and images: auto (the default) is channels_last on "
        "the CPU for convolutional models, where every student measured trained faster "
        "(results/benchmark), and contiguous on CUDA", "--memory-format", choices=MEMORY_FORMATS)
    channels_last: bool = option(False, "--memory_format channels_last (also faster "
                                 "convolutions on recent GPUs under --amp)", "--channels-last")
    compile: bool = option(False, "torch.compile the student and teacher (Inductor; on the CPU "
                           "it needs a C++ compiler); the first iterations are slow while it "
                           "compiles")

    def check(self):
        require(not (self.channels_last and self.memory_format == "contiguous"),
                "--channels_last and --memory_format contiguous contradict each other; drop one")
        require(self.amp_dtype is None or self.amp,
                f"--amp_dtype needs --amp; add --amp, or drop --amp_dtype {self.amp_dtype}")
        require(not (self.amp and self.amp_dtype == "fp16" and not torch.cuda.is_available()),
                "--amp_dtype fp16 needs CUDA; use --amp_dtype bf16 on the CPU")

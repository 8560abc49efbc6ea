"""The speed flags: mixed precision (``--amp``: bf16 autocast on CPU; fp16 with a gradient scaler,
or bf16, on CUDA; one ``Precision`` object carries the choice through the loop and into
checkpoints), ``--channels_last``, ``--compile``, and the fused SGD of ``--optimizer sgd``."""
import functools
import os
import shutil
from contextlib import nullcontext

import torch

from helper.errors import UserError


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
    def from_args(cls, args, device):
        return cls(args.amp, args.amp_dtype, device)

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


def use_channels_last(args, model: torch.nn.Module, device) -> bool:
    """Whether the run trains (or scores) in channels-last format: ``--channels_last`` or
    ``--memory_format channels_last``; under ``auto``, on the CPU for a model with 2-D
    convolutions. There oneDNN runs them faster in channels-last: a student's training step
    took 0.57x (MobileNetV2) to 0.95x (ShuffleV2) of its contiguous time, resnet8x4 0.84x,
    and every method's iteration 0.67-0.95x of its contiguous time with the same teacher
    (AMD EPYC, scripts/benchmark.py; README, Speed). Not measured on a GPU here, where fp32
    convolutions are usually fastest contiguous."""
    setting = "channels_last" if args.channels_last else args.memory_format
    if setting == "auto":
        return (torch.device(device).type == "cpu"
                and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()))
    return setting == "channels_last"


def add_arguments(parser):
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA")
    g.add_argument("--amp_dtype", "--amp-dtype", choices=["bf16", "fp16"], default=None,
                   help="override the --amp data type")
    g.add_argument("--memory_format", "--memory-format", choices=MEMORY_FORMATS, default="auto",
                   help="memory format of the models and images: auto (the default) is "
                        "channels_last on the CPU for convolutional models, where every student "
                        "measured trained faster (README, Speed), and contiguous on CUDA")
    g.add_argument("--channels_last", "--channels-last", action="store_true",
                   help="--memory_format channels_last (also faster convolutions on recent GPUs "
                        "under --amp)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the student and teacher (Inductor; on the CPU it needs a "
                        "C++ compiler); the first iterations are slow while it compiles")


def check_arguments(parser, args):
    """The speed flags' combinations, at parse time."""
    if args.channels_last and args.memory_format == "contiguous":
        parser.error("--channels_last and --memory_format contiguous contradict each other; "
                     "drop one")
    if args.amp_dtype is not None and not args.amp:
        parser.error(f"--amp_dtype needs --amp; add --amp, or drop --amp_dtype {args.amp_dtype}")
    if args.amp and args.amp_dtype == "fp16" and not torch.cuda.is_available():
        parser.error("--amp_dtype fp16 needs CUDA; use --amp_dtype bf16 on the CPU")

"""Mixed precision (``--amp``): bf16 autocast on CPU; fp16 (with a gradient scaler) or bf16 on
CUDA. One object carries the choice through the loop and into checkpoints."""
from contextlib import nullcontext

import torch

from helper.errors import UserError


class Precision:
    def __init__(self, amp=False, dtype=None, device=torch.device("cpu")):
        self.device_type = torch.device(device).type
        self.dtype = None
        if amp:
            name = dtype or ("fp16" if self.device_type == "cuda" else "bf16")
            if name == "fp16" and self.device_type != "cuda":
                raise UserError("--amp_dtype fp16 needs CUDA; use --amp_dtype bf16 on the CPU")
            self.dtype = torch.float16 if name == "fp16" else torch.bfloat16
        self.scaler = torch.amp.GradScaler(self.device_type) if self.dtype == torch.float16 else None

    @classmethod
    def from_args(cls, args, device):
        return cls(getattr(args, "amp", False), getattr(args, "amp_dtype", None), device)

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


def add_arguments(parser):
    g = parser.add_argument_group("speed")
    g.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 on CPU, fp16 with a gradient scaler on CUDA")
    g.add_argument("--amp_dtype", "--amp-dtype", choices=["bf16", "fp16"], default=None,
                   help="override the --amp data type")
    g.add_argument("--channels_last", "--channels-last", action="store_true",
                   help="channels-last memory format for models and images (faster convolutions on recent GPUs)")

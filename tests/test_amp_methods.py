"""Every method trains under --amp (bf16 autocast on the CPU): one step of the toolbox's loop
per method and stage on random batches, with finite losses and weights. Catches
loss code that mixes dtypes (hand-written backwards, in-place updates of fp32 buffers)."""
from types import SimpleNamespace

import pytest
import torch

from distillers import distiller_classes
from helper.run.loop import train_one_epoch
from helper.run.precision import Precision, native_cpu_bf16
from helper.run.trainer import stage_optimizer


# --amp is refused on CPUs without native bf16 (emulated, ~20x slower): nothing to run there
pytestmark = pytest.mark.skipif(not native_cpu_bf16(),
                                reason="this CPU has no native bf16 (AVX-512 BF16 or AMX)")


@pytest.mark.parametrize("method", sorted(cls.name for cls in distiller_classes()))
def test_one_amp_step(bench, method):
    opts = SimpleNamespace(teacher="resnet14", student="resnet8", batch_size=16, amp=True,
                           compile=False, train_size=20000, teacher_forward="auto",
                           teacher_compile=False, memory_format="auto", channels_last=False)  # > CRD's 16,384 negatives
    device = torch.device("cpu")
    model, _, args, _ = bench.build(method, opts, device)  # set up for the main stage
    config = bench.method_config(method, opts)
    batch = next(bench.synthetic_batches(model.batch_requests(), opts, device))
    batch["images"] = batch["images"].clamp(-2, 2)  # image-like range: no overflow at random init
    for stage in model.stages():
        model.stage = stage.name
        torch.manual_seed(0)
        stats = train_one_epoch(model, [batch], stage_optimizer(config, model, stage), 1,
                                print_freq=10**9, log=lambda *a: None,
                                precision=Precision.from_options(args, device))
        assert stats["terms"], stage.name
        assert all(torch.isfinite(p).all() and p.dtype == torch.float32
                   for p in model.parameters()), stage.name

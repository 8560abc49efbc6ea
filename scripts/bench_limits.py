"""How close the teacher forward is to what this machine's convolutions can do, and what the
student's memory format costs (issue 18; the README's Speed section quotes both).

  python scripts/bench_limits.py [--teacher resnet32x4] [--students resnet8x4,wrn_16_2,...]
                                 [--batch_size 64] [--reps 10] [--threads 2] [--compile]

1. Teacher: the multiply-accumulates of one forward pass at ``--batch_size`` (counted with
   hooks on every Conv2d and Linear), its time eager, folded and channels-last
   (``--teacher_forward auto`` on the CPU) and, with ``--compile``, compiled and frozen
   (``--teacher_compile``), as GMAC/s; against the best GMAC/s a single convolution of each of
   the teacher's own 3x3 shapes reaches in either memory format. The ratio says how much any
   exact float32 teacher forward could still gain.
2. Students: one training step (forward, cross-entropy, backward, fused SGD) contiguous and
   channels-last (``--memory_format``), timed in alternation in this process; the median of the
   per-pair ratios and its quartiles.
"""
import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from helper.run.precision import make_sgd  # noqa: E402
from helper.teachers.forward import wrap_teacher  # noqa: E402
from models import create_model  # noqa: E402

CL = torch.channels_last


def macs_and_conv_shapes(model, x):
    """Multiply-accumulates of ``model(x)`` and the set of its 3x3 conv shapes
    ``(in, out, stride, input height)``."""
    total, shapes = [0], set()

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += output.numel() * module.in_channels // module.groups * k
            if module.kernel_size == (3, 3) and module.groups == 1:
                shapes.add((module.in_channels, module.out_channels, module.stride[0],
                            inputs[0].shape[-1]))
        elif isinstance(module, nn.Linear):
            total[0] += output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total[0], shapes


def median_seconds(fn, reps):
    fn()
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_conv_rate(shapes, batch, reps):
    """The best GMAC/s of one 3x3 convolution (with bias, inference) over ``shapes`` and both
    memory formats."""
    best = 0.0
    for cin, cout, stride, size in sorted(shapes):
        conv = nn.Conv2d(cin, cout, 3, stride, 1).eval()
        x = torch.randn(batch, cin, size, size)
        out = size // stride
        macs = batch * cout * out * out * cin * 9
        for fmt in (torch.contiguous_format, CL):
            c, xi = copy.deepcopy(conv).to(memory_format=fmt), x.contiguous(memory_format=fmt)
            with torch.inference_mode():
                best = max(best, macs / median_seconds(lambda: c(xi), reps) / 1e9)
    return best


def teacher_report(opts):
    model = create_model(opts.teacher, 100).eval()
    x = torch.randn(opts.batch_size, *model.input_size)
    macs, shapes = macs_and_conv_shapes(model, x)
    paths = {"eager": model, "folded, channels-last (--teacher_forward auto)":
             wrap_teacher(model, "auto", model.input_size, "cpu")}
    if opts.compile:
        paths["compiled and frozen (--teacher_compile)"] = wrap_teacher(
            copy.deepcopy(model), "auto", model.input_size, "cpu", compile=True)
    best = best_conv_rate(shapes, opts.batch_size, opts.reps)
    print(f"teacher {opts.teacher}, batch {opts.batch_size}: {macs / 1e9:.1f} GMAC per forward; "
          f"best single 3x3 convolution of its shapes: {best:.0f} GMAC/s")
    forwards = {name: _no_grad(teacher, x) for name, teacher in paths.items()}
    seconds = {name: statistics.median(t) for name, t in alternating(forwards, opts.reps).items()}
    print("| teacher forward | ms | GMAC/s | of the best convolution | of eager time |")
    print("|---|---:|---:|---:|---:|")
    for name, s in seconds.items():
        rate = macs / s / 1e9
        print(f"| {name} | {1000 * s:.0f} | {rate:.0f} | {rate / best:.2f} | "
              f"{s / seconds['eager']:.2f} |")


def _no_grad(model, x):
    def forward():
        with torch.no_grad():
            model(x)
    return forward


def alternating(fns, reps):
    """``{name: [seconds, ...]}`` of each function, run in turns (after two warm-up turns) so
    that all see the same minutes of a machine whose speed drifts."""
    for _ in range(2):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def student_report(opts):
    print("\n| student | contiguous ms | channels-last ms | ratio (quartiles) |")
    print("|---|---:|---:|---|")
    for name in opts.students.split(","):
        torch.manual_seed(0)
        plain = create_model(name, 100)
        last = copy.deepcopy(plain).to(memory_format=CL)
        x = torch.randn(opts.batch_size, *plain.input_size)
        y = torch.randint(0, 100, (opts.batch_size,))
        runs = [(plain, make_sgd(plain.parameters(), lr=0.01, momentum=0.9, weight_decay=0), x),
                (last, make_sgd(last.parameters(), lr=0.01, momentum=0.9, weight_decay=0),
                 x.contiguous(memory_format=CL))]

        def step(model, optimizer, images):
            loss = F.cross_entropy(model(images), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        times = list(alternating({k: (lambda run=run: step(*run)) for k, run in
                                  enumerate(runs)}, opts.reps).values())
        ratios = sorted(b / a for a, b in zip(*times))
        q = len(ratios) // 4
        print(f"| {name} | {1000 * statistics.median(times[0]):.0f} | "
              f"{1000 * statistics.median(times[1]):.0f} | {statistics.median(ratios):.2f} "
              f"({ratios[q]:.2f}-{ratios[-1 - q]:.2f}) |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", default="resnet32x4")
    p.add_argument("--students", default="resnet8x4,resnet20,wrn_16_2,vgg8,MobileNetV2,"
                                         "ShuffleV1,ShuffleV2")
    p.add_argument("--batch_size", "--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also the compiled, frozen teacher")
    opts = p.parse_args(argv)
    torch.set_num_threads(opts.threads)
    teacher_report(opts)
    student_report(opts)


if __name__ == "__main__":
    main()

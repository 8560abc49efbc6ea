"""--compile and the fused SGD every run uses."""
import copy
import json

import pytest
import torch

import train_student
import train_teacher
from helper.run import precision
from helper.run.precision import has_cpu_compiler, make_sgd
from models import create_model


def _params(seed):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s)) for s in ((7, 3), (5,), (2, 2, 3))]


def test_fused_sgd_makes_the_same_updates_as_the_for_loop_sgd():
    fused_params, loop_params = _params(0), _params(0)
    fused = make_sgd(fused_params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    loop = torch.optim.SGD(loop_params, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False)
    assert fused.defaults["fused"]
    for step in range(4):
        torch.manual_seed(100 + step)
        grads = [torch.randn_like(p) for p in fused_params]
        for params, opt in ((fused_params, fused), (loop_params, loop)):
            for p, g in zip(params, grads):
                p.grad = g.clone()
            opt.step()
    # The fused kernel may contract the update into FMAs where the for-loop rounds each op:
    # the two differ by roundings of half an ulp, of p once a step (<= 1.2e-7 at |p| < 4) and
    # of the momentum buffer (|buf| < 14: 4.8e-7), which carry into p times lr. Over 4 steps
    # < 4 x 1.2e-7 + 0.1 x (1+2+3+4) x 4.8e-7 = 1e-6 <= 1e-6 + 1e-6 |p|, on any CPU (1 ulp seen).
    for a, b in zip(fused_params, loop_params):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # resume: the fused optimizer's state loads into a fresh one
    again = make_sgd(_params(0), lr=0.1, momentum=0.9, weight_decay=5e-4)
    again.load_state_dict(fused.state_dict())


def _mnist_args(data, save):
    return ["--dataset", "mnist", "--data_folder", str(data), "--save_folder", str(save),
            "--batch_size", "100", "--epochs", "1", "--print_freq", "1000"]


@pytest.mark.skipif(not torch.cuda.is_available() and not has_cpu_compiler(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compile_trains_a_kd_student_as_eager_mode_does(mnist_small, tmp_path):
    teachers = tmp_path / "t"
    train_teacher.main(["--model", "mlp_800", "--learning_rate", "0.1", *_mnist_args(mnist_small, teachers)])
    teacher = teachers / "teachers" / "mlp_800_vanilla_mnist_trial_0" / "best.pth"
    runs = {}
    for mode, extra in (("eager", []), ("compiled", ["--compile"])):
        train_student.main(["--path_t", str(teacher), "--model_s", "mlp_800", "--distill", "kd",
                            "--learning_rate", "0.1", *extra, *_mnist_args(mnist_small, tmp_path / mode)])
        runs[mode] = tmp_path / mode / "students" / "S:mlp_800_T:mlp_800_mnist_kd_r:1_a:1_b:0_0"
    summaries = {m: json.loads((p / "summary.json").read_text()) for m, p in runs.items()}
    assert summaries["compiled"]["finished"] and summaries["compiled"]["args"]["compile"]
    weights = {m: torch.load(p / "last.pth", weights_only=True)["model"] for m, p in runs.items()}
    assert list(weights["compiled"]) == list(weights["eager"])  # no "_orig_mod.": interchangeable
    # Compiled and eager kernels round differently (by CPU kind too); after 20 SGD steps at lr
    # 0.1 those differences have grown chaotically in the weights (up to 1e-2 seen on an AMD
    # EPYC), so the weights are not compared. What holds: the same function, so the epoch's
    # mean training loss agrees far below its step-to-step spread (1e-5 relative seen; 1e-3
    # allowed), and so does the test accuracy (same on both kinds of CPU; half a point allowed).
    loss = {m: s["last_train_loss"] for m, s in summaries.items()}
    assert abs(loss["compiled"] - loss["eager"]) <= 1e-3 * loss["eager"]
    assert abs(summaries["compiled"]["last_acc"] - summaries["eager"]["last_acc"]) < 0.5


@pytest.mark.skipif(not torch.cuda.is_available() and not has_cpu_compiler(),
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_a_compiled_model_computes_the_eager_gradients():
    """One forward and backward from the same weights: compiled and eager agree to float32
    rounding of the reductions (a few ulps of the largest term: 1e-5 relative to each
    tensor's largest magnitude), whatever the CPU's instruction set."""
    torch.manual_seed(0)
    eager = create_model("mlp_800", 10)
    compiled = copy.deepcopy(eager)
    compiled.compile()  # as --compile does (compile_models)
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    losses = {}
    for name, model in (("eager", eager), ("compiled", compiled)):
        losses[name] = torch.nn.functional.cross_entropy(model(x), y)
        losses[name].backward()
    torch.testing.assert_close(losses["compiled"], losses["eager"], rtol=1e-5, atol=0)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        scale = p.grad.abs().max().item()
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=1e-5 * scale, msg=name)


def test_compile_without_a_cpu_compiler_is_one_line(mnist_small, tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("the C++ compiler check applies to CPU runs")
    monkeypatch.setattr(precision.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", "mlp_800", "--compile", *_mnist_args(mnist_small, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "--compile on the CPU needs a C++ compiler" in err
    assert not list((tmp_path / "teachers").rglob("*.pth"))


def test_amp_without_native_bf16_is_refused_in_one_line(mnist_small, tmp_path, monkeypatch, capsys):
    """bf16 autocast emulated in software (an AVX2-only CPU) made a KD step 21x slower."""
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: False)
    with pytest.raises(SystemExit) as e:
        train_teacher.main(["--model", "mlp_800", "--amp", *_mnist_args(mnist_small, tmp_path)])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1
    assert "no AVX-512 BF16 or AMX" in err and "drop --amp" in err
    assert not (tmp_path / "teachers").exists()


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch):
    real_open = open

    def fake(flags):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(
            cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))
        precision.native_cpu_bf16.cache_clear()
        return precision.native_cpu_bf16()

    try:
        assert fake("fpu avx2 avx512f avx512_bf16") and fake("fpu avx2 amx_bf16 amx_tile")
        assert not fake("fpu sse4_2 avx2 fma")
    finally:
        monkeypatch.undo()
        precision.native_cpu_bf16.cache_clear()


def test_memory_format_auto_is_channels_last_on_the_cpu_for_conv_models():
    from argparse import Namespace
    conv, mlp = create_model("resnet8", 10), create_model("mlp_800", 10)

    def use(model, device="cpu", memory_format="auto", channels_last=False):
        args = Namespace(memory_format=memory_format, channels_last=channels_last)
        return precision.use_channels_last(args, model, device)
    assert use(conv) and not use(mlp)  # an MLP has nothing to gain
    assert not use(conv, device="cuda")  # not measured on a GPU: contiguous there
    assert not use(conv, memory_format="contiguous")
    assert use(mlp, memory_format="channels_last") and use(conv, "cuda", channels_last=True)


def test_a_default_cpu_run_trains_channels_last_like_a_contiguous_one(cifar100_tiny, tmp_path,
                                                                      teacher_ckpt):
    """Same batches, other float32 summation order in the convolutions: the epoch's loss
    within 1e-4 relative (measured 5e-8 on an AMD EPYC)."""
    from helpers import read_summary, run_student
    runs = {fmt: read_summary(run_student("kd", "resnet8", cifar100_tiny, tmp_path / fmt,
                                          "--memory_format", fmt, "--deterministic",
                                          teacher=teacher_ckpt("resnet14")))
            for fmt in ("auto", "contiguous")}
    a, b = runs["auto"]["last_train_loss"], runs["contiguous"]["last_train_loss"]
    assert abs(a - b) <= 1e-4 * abs(b), (a, b)


def test_channels_last_and_contiguous_together_is_one_line(capsys):
    with pytest.raises(SystemExit) as e:
        train_student.main(["--distill", "vanilla", "--channels_last", "--memory_format",
                            "contiguous"])
    assert e.value.code == 2
    assert "--channels_last and --memory_format contiguous contradict" in capsys.readouterr().err

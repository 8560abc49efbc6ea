"""Distributed training on CPU with Gloo: same results as one process, multi-node launches,
failures that end the whole job."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(script, *args):
    return [sys.executable, os.path.join(REPO, script), *map(str, args)]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}


def _teacher_args(data, save, *extra):
    return ["--model", "mlp_800", "--dataset", "mnist", "--data_folder", data, "--save_folder", save,
            "--epochs", "2", "--lr_decay_epochs", "1", "--batch_size", "64", "--print_freq", "1000",
            "--deterministic", *extra]


def _summary(save):
    return json.loads((save / "teachers" / "mlp_800_vanilla_mnist_trial_0" / "summary.json").read_text())


def test_two_gloo_processes_match_one_process(mnist_small, tmp_path):
    one = tmp_path / "one"
    subprocess.run(_cmd("train_teacher.py", *_teacher_args(mnist_small, one)), check=True,
                   env=_env(), timeout=300, capture_output=True)
    two = tmp_path / "two"
    url = f"tcp://127.0.0.1:{_free_port()}"
    subprocess.run(_cmd("train_teacher.py", *_teacher_args(mnist_small, two),
                        "--multiprocessing-distributed", "--nproc", "2", "--dist-url", url),
                   check=True, env=_env(), timeout=300, capture_output=True)
    a, b = _summary(one), _summary(two)
    # Same total batch and data order, so the same training up to float32 summation order:
    # two processes of 32 run other matmul shapes than one of 64 and all-reduce the gradients,
    # and how those roundings grow over 63 steps depends on each CPU's kernels. So no weights
    # are compared (6e-8 apart seen), only what they compute: the epoch's mean training loss,
    # 2e-7 relative apart at most (AVX-512 and AVX2 kernels), 1e-4 allowed; and the accuracy,
    # where a flip of one test image of 500 (0.2 points) needs a margin within ~1e-7 of a tie.
    assert abs(a["last_train_loss"] - b["last_train_loss"]) <= 1e-4 * a["last_train_loss"], (a, b)
    assert abs(a["best_acc"] - b["best_acc"]) < 0.3, (a, b)


def test_two_separate_node_launches_form_one_job(mnist_small, tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    save = tmp_path / "nodes"
    procs = [subprocess.Popen(_cmd("train_teacher.py", *_teacher_args(mnist_small, save),
                                   "--multiprocessing-distributed", "--world-size", "2",
                                   "--rank", str(r), "--dist-url", url),
                              env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for r in (0, 1)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert _summary(save)["finished"]
    assert b"Epoch 2:" in outputs[0][0] and b"Epoch" not in outputs[1][0]  # only rank 0 prints


def _children(pid):
    """Worker processes spawned by ``pid`` (the resource tracker is left out)."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        kids = [int(k) for k in f.read().split()]
    def cmdline(k):
        with open(f"/proc/{k}/cmdline", "rb") as f:
            return f.read()
    return [k for k in kids if b"spawn_main" in cmdline(k) and b"resource_tracker" not in cmdline(k)]


def test_a_killed_process_ends_the_job(mnist_small, tmp_path):
    url = f"tcp://127.0.0.1:{_free_port()}"
    proc = subprocess.Popen(_cmd("train_teacher.py", *_teacher_args(mnist_small, tmp_path),
                                 "--epochs", "1000", "--multiprocessing-distributed", "--nproc", "2",
                                 "--dist-url", url, "--dist-timeout", "1"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (tmp_path / "teachers").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        workers = _children(proc.pid)
        assert len(workers) == 2
        os.kill(workers[-1], signal.SIGKILL)
        # A hang detector, not a speed test: with --dist-timeout 1 the job ends in seconds;
        # 120 s is only the point where waiting stops (communicate raises past it).
        proc.communicate(timeout=120)
        assert proc.returncode != 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_flag_errors(capsys):
    import train_teacher
    for argv, message in ((["--sync-bn"], "--sync-bn needs CUDA"),
                          (["--world-size", "2", "--rank", "2"], "must be in 0..1"),
                          (["--world-size", "2"], "needs --multiprocessing-distributed")):
        if "--sync-bn" in argv and torch.cuda.is_available():
            continue
        with pytest.raises(SystemExit) as e:
            train_teacher.main(argv)
        assert e.value.code == 2
        assert message in capsys.readouterr().err


def _student_args(data, save, teacher, method, *extra):
    return ["--model_s", "mlp_800", "--path_t", teacher, "--distill", method, "--dataset", "mnist",
            "--data_folder", data, "--save_folder", save, "--epochs", "1", "--batch_size", "64",
            "--print_freq", "1000", "--deterministic", *extra]


@pytest.mark.parametrize("method,extra,tolerance", [
    # Same batches, the float32 sums in another order (see the teacher test above): the mean
    # loss 2e-8 relative apart (AVX-512 and AVX2 kernels), 1e-4 allowed; the accuracy equal,
    # at most one test image (0.2 points) may flip.
    ("kd", [], 1e-4),
    # CRD draws its negatives per process, so the two runs see different negatives: two samples
    # of the training noise, not one computation. The loss (a mean over 2000 x 257 NCE terms)
    # was 4e-4 relative apart, 5e-2 allowed. The accuracies were 0.2 and 2.0 points apart; if
    # the two students disagree on a tenth of the 500 test images the difference has an sd of
    # sqrt(0.1 / 500) = 1.4 points, and 5 points is 3.5 sd.
    ("crd", ["--nce_k", "256"], 0.05),
])
def test_two_processes_distil_like_one(mnist_small, tmp_path, method, extra, tolerance):
    from models import create_model
    teacher = tmp_path / "teacher.pth"
    torch.save({"model": create_model("mlp_1200", 10).state_dict(), "model_name": "mlp_1200"}, teacher)
    summaries = []
    for name, flags in (("one", []), ("two", ["--multiprocessing-distributed", "--nproc", "2",
                                              "--dist-url", f"tcp://127.0.0.1:{_free_port()}"])):
        save = tmp_path / name
        subprocess.run(_cmd("train_student.py", *_student_args(mnist_small, save, teacher, method,
                                                               *extra), *flags),
                       check=True, env=_env(), timeout=300, capture_output=True)
        run = next((save / "students").iterdir())
        summaries.append(json.loads((run / "summary.json").read_text()))
    one, two = summaries
    assert abs(one["last_train_loss"] - two["last_train_loss"]) <= tolerance * one["last_train_loss"]
    assert abs(one["last_acc"] - two["last_acc"]) <= max(100 * tolerance, 0.3), (one, two)


def _crd_worker(rank, port, results):
    import torch.distributed as dist
    from distillers.crd import ContrastMemory
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    memory = ContrastMemory(feat_dim=8, n_data=20, nce_t=0.07, nce_m=0.5)
    torch.manual_seed(1 + rank)  # each process sees other samples and embeddings
    v_s = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    v_t = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    index = torch.arange(4) + 4 * rank
    contrast = torch.cat([index[:, None], torch.randint(0, 20, (4, 5))], dim=1)
    memory(v_s, v_t, index, contrast)
    banks = [torch.empty_like(memory.memory_s) for _ in range(2)]
    dist.all_gather(banks, memory.memory_s)
    zs = [torch.empty_like(memory.z) for _ in range(2)]
    dist.all_gather(zs, memory.z)
    results[rank] = torch.equal(banks[0], banks[1]) and torch.equal(zs[0], zs[1])
    dist.destroy_process_group()


def test_crd_memory_banks_stay_identical_across_processes():
    import torch.multiprocessing as mp
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_crd_worker, args=(_free_port(), results), nprocs=2, join=True)
    assert results[0] and results[1]


def test_torchrun_launch(mnist_small, tmp_path):
    save = tmp_path / "torchrun"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), os.path.join(REPO, "train_teacher.py"),
           *_teacher_args(mnist_small, save)]
    result = subprocess.run(cmd, env=_env(), timeout=300, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = _summary(save)
    assert summary["finished"] and summary["best_acc"] > 50  # 87 seen; chance is 10

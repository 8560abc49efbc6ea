"""Process groups: ``--multiprocessing-distributed`` (PyTorch's ImageNet example: one process
per GPU, or ``--nproc`` CPU processes, on each of ``--world-size`` nodes) and ``torchrun``
(``env://``). NCCL on GPU, Gloo on CPU. Only rank 0 writes files and prints."""
import logging
import math
import os
import re
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helper.core.argtypes import non_negative
from helper.core.errors import UserError
from helper.core.option_groups import OptionGroup, option, require


@dataclass(frozen=True)
class Context:
    rank: int = 0
    world_size: int = 1
    local_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self):
        return self.world_size > 1

    @property
    def is_main(self):
        return self.rank == 0

    def log(self, *args, **kwargs):
        if self.is_main:
            print(*args, **kwargs, flush=True)


@dataclass(frozen=True)
class DistributedOptions(OptionGroup):
    """Where a run's processes run: nodes, processes per node, their rendezvous."""
    title = "distributed"
    multiprocessing_distributed: bool = option(
        False, "spawn one process per GPU (or --nproc CPU processes) on this node",
        "--multiprocessing_distributed", flag="--multiprocessing-distributed")
    world_size: int = option(1, "number of nodes taking part", "--world_size",
                             flag="--world-size")
    rank: int = option(0, "rank of this node")
    dist_url: str = option("tcp://127.0.0.1:23451", None, "--dist_url", flag="--dist-url")
    dist_backend: Optional[str] = option(None, "default: nccl with CUDA, gloo on CPU",
                                         "--dist_backend", flag="--dist-backend",
                                         choices=["nccl", "gloo"])
    nproc: Optional[int] = option(None, "processes per node (default: the GPU count, or 1 on "
                                  "CPU)", type=int)
    dist_timeout: float = option(30.0, "minutes a collective may wait for a missing process "
                                 "before failing", "--dist_timeout", flag="--dist-timeout")
    sync_bn: bool = option(False, "synchronised BatchNorm in the student (GPU only)",
                           "--sync_bn", flag="--sync-bn")
    adjust_lr: bool = option(False, "scale the learning rate by total batch / --batch_size "
                             "(torchdistill)", "--adjust-lr")
    gpu_id: int = option(0, "CUDA device used when CUDA is present", "--gpu-id",
                         type=non_negative(int))

    def check(self):
        require(self.world_size >= 1 and 0 <= self.rank < self.world_size,
                f"--rank {self.rank} must be in 0..{self.world_size - 1} for --world-size "
                f"{self.world_size}")
        require(self.nproc is None or self.nproc >= 1,
                f"--nproc must be positive, got {self.nproc}")
        require(not self.sync_bn or torch.cuda.is_available(),
                "--sync-bn needs CUDA (BatchNorm statistics are synchronised by NCCL); drop it "
                "on CPU")
        require(self.world_size == 1 or self.multiprocessing_distributed,
                "--world-size > 1 needs --multiprocessing-distributed (or launch with torchrun)")
        require(math.isfinite(self.dist_timeout) and self.dist_timeout > 0,
                f"--dist-timeout must be a positive number of minutes, got {self.dist_timeout:g}")

    def procs_per_node(self) -> int:
        """Processes on this node: ``--nproc``, else the GPU count, else 1."""
        if self.nproc is not None:
            if torch.cuda.is_available() and self.nproc > torch.cuda.device_count():
                raise UserError(f"--nproc {self.nproc} exceeds the {torch.cuda.device_count()} "
                                "GPUs here")
            return self.nproc
        return torch.cuda.device_count() if torch.cuda.is_available() else 1


def check_dist_url(url):
    """A ``file://`` rendezvous needs an existing, writable folder: torch's FileStore retries
    opening a file in a missing folder for 5 minutes, silently, whatever ``--dist-timeout``."""
    if not url or not url.startswith("file://"):
        return
    path = urlparse(url).path
    folder = os.path.dirname(path) or "."
    if not path or path.endswith("/"):
        raise UserError(f"--dist-url {url} names no file; use file:///SHARED/FOLDER/NAME")
    if not os.path.isdir(folder):
        raise UserError(f"--dist-url {url}: folder {folder} does not exist; create it (on a file "
                        f"system every node shares) or use --dist-url tcp://HOST:PORT")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"--dist-url {url}: folder {folder} is not writable; pick a folder you "
                        f"can write to or use --dist-url tcp://HOST:PORT")


def launch(worker, config):
    """Run ``worker(config, ctx)`` in one process, in spawned processes, or under torchrun
    (``config.dist`` holds the distributed flags)."""
    flags = config.dist
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            _run(local_rank, worker, config, "env://", int(os.environ["RANK"]),
                 int(os.environ["WORLD_SIZE"]), local_size)
            return
        if not flags.multiprocessing_distributed:
            _run(0, worker, config, None, 0, 1, 1)
            return
        nprocs = flags.procs_per_node()
        world = nprocs * flags.world_size
        if nprocs == 1 and world == 1:
            _run(0, worker, config, None, 0, 1, 1)
            return
        check_dist_url(flags.dist_url)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    # When one worker fails, the others are stopped: not news beside that worker's own line.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        # a method of the user's own is loaded again in each process before its config
        from distillers.sources import portable
        mp.spawn(_spawned, args=(worker, portable(config), nprocs, world, os.getpid()),
                 nprocs=nprocs, join=True)
    except mp.ProcessExitedException as e:
        sys.exit(e.exit_code if e.exit_code and e.exit_code > 0 else 1)
    except mp.ProcessRaisedException as e:
        print(f"error: a training process failed:\n{e}", file=sys.stderr)
        sys.exit(1)


def _die_with_parent(parent_pid):
    """End this spawned worker when the launching process dies, even by SIGKILL (which
    ``mp.spawn`` cannot pass on), instead of leaving it to train on as an orphan: the kernel's
    parent-death signal on Linux, else a thread that watches the parent's pid."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(1)
        os._exit(1)
    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _spawned(local_rank, worker, config, nprocs, world, parent_pid):
    _die_with_parent(parent_pid)
    flags = config.dist
    _run(local_rank, worker, config, flags.dist_url, flags.rank * nprocs + local_rank, world, nprocs)


# What torch's C++ layer prints while a TCP store client retries: one warning (with a C++
# backtrace) per try, hundreds of lines before the exception that says the same in one line.
_RETRY_NOISE = re.compile(r"^\[[WE]\d{4} [^\]]*(socket|TCPStore|TCPStoreBackend)\.cpp:\d+\]")
_TRACE = re.compile(r"^(Exception raised from |frame #\d+: |<omitting python frames>|\s*$)")


def _without_retry_noise(text):
    kept, in_noise = [], False
    for line in text.splitlines(keepends=True):
        if _RETRY_NOISE.match(line):
            in_noise = True
        elif not (in_noise and _TRACE.match(line)):
            in_noise = False
            kept.append(line)
    return "".join(kept)


@contextmanager
def _quiet_rendezvous():
    """Hold what torch's C++ layer writes to stderr (file descriptor 2) while joining the group;
    afterwards pass on all but the connection retries. ``TORCH_CPP_LOG_LEVEL`` set by the user
    turns this off."""
    if "TORCH_CPP_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            rest = _without_retry_noise(held.read().decode(errors="replace"))
            if rest:
                sys.stderr.write(rest)
                sys.stderr.flush()


def _join_error(init_method, rank, world_size, minutes, error):
    text = " ".join(str(error).split("\n")[0].split()) or type(error).__name__
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        return (f"cannot start the process group at {init_method}: port in use (by another job?); "
                f"pick a free one with --dist-url: {text}")
    return (f"cannot join the process group at {init_method} as rank {rank} of {world_size} "
            f"within {minutes:g} minutes (--dist-timeout): {text}; start every node with the "
            f"same --dist-url and --world-size and check that the address is reachable")


def _run(local_rank, worker, config, init_method, rank, world_size, local_size):
    flags = config.dist
    if torch.cuda.is_available():
        gpu = local_rank if world_size > 1 else flags.gpu_id
        if gpu >= torch.cuda.device_count():
            print(f"error: --gpu_id {gpu} does not exist: this machine has "
                  f"{torch.cuda.device_count()} CUDA devices", file=sys.stderr)
            sys.exit(2)
        torch.cuda.set_device(gpu)
        device = torch.device("cuda", gpu)
    else:
        device = torch.device("cpu")
    ctx = Context(rank, world_size, local_size, device)
    if world_size > 1:
        backend = flags.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        error = None
        try:
            check_dist_url(init_method)
            # tcp:// and env:// stores take the timeout for connecting, file:// for waiting on
            # the other processes (its folder is checked above: a missing one would hang).
            with _quiet_rendezvous():
                dist.init_process_group(backend, init_method=init_method, world_size=world_size,
                                        rank=rank, timeout=timedelta(minutes=flags.dist_timeout))
        except UserError as e:
            error = str(e)
        except (RuntimeError, ValueError) as e:  # torch's DistError and DistStoreError included
            error = _join_error(init_method, rank, world_size, flags.dist_timeout, e)
        if error:  # out of the except block, the failed store is freed: the last process
            # to free a FileStore removes its file; one left behind would spoil the next try
            path = urlparse(init_method).path if init_method.startswith("file://") else None
            if path and os.path.exists(path) and not error.startswith("--dist-url"):
                error += f"; delete {path} before the next try"
            print(f"error: {error}", file=sys.stderr, flush=True)
            sys.exit(2)
    try:
        worker(config, ctx)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def wrap(distiller, ctx, find_unused_parameters):
    """DistributedDataParallel over the student and extras; the teacher lives outside the
    distiller's module tree and is never wrapped. Buffers are not broadcast on every forward
    (CRD's memory banks would be copied each step); BN statistics are averaged before each
    validation instead (``sync_buffers``)."""
    if not ctx.distributed:
        return distiller
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        distiller, device_ids=ids, broadcast_buffers=False,
        find_unused_parameters=find_unused_parameters)


def sync_buffers(module):
    """Average BatchNorm running statistics over processes, so that validation and the saved
    checkpoint describe one model."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    world = dist.get_world_size()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            for buf in (m.running_mean, m.running_var):
                if buf is not None:
                    dist.all_reduce(buf)
                    buf.div_(world)

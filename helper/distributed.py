"""Process groups: ``--multiprocessing-distributed`` (PyTorch's ImageNet example: one process
per GPU, or ``--nproc`` CPU processes, on each of ``--world-size`` nodes) and ``torchrun``
(``env://``). NCCL on GPU, Gloo on CPU. Only rank 0 writes files and prints."""
import logging
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
from urllib.parse import urlparse

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from helper.errors import UserError


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


def add_arguments(parser):
    g = parser.add_argument_group("distributed")
    g.add_argument("--multiprocessing-distributed", "--multiprocessing_distributed",
                   dest="multiprocessing_distributed", action="store_true",
                   help="spawn one process per GPU (or --nproc CPU processes) on this node")
    g.add_argument("--world-size", "--world_size", dest="world_size", type=int, default=1,
                   help="number of nodes taking part")
    g.add_argument("--rank", type=int, default=0, help="rank of this node")
    g.add_argument("--dist-url", "--dist_url", dest="dist_url", default="tcp://127.0.0.1:23451")
    g.add_argument("--dist-backend", "--dist_backend", dest="dist_backend", default=None,
                   choices=["nccl", "gloo"], help="default: nccl with CUDA, gloo on CPU")
    g.add_argument("--nproc", type=int, default=None,
                   help="processes per node (default: the GPU count, or 1 on CPU)")
    g.add_argument("--dist-timeout", "--dist_timeout", dest="dist_timeout", type=float, default=30,
                   help="minutes a collective may wait for a missing process before failing")
    g.add_argument("--sync-bn", "--sync_bn", dest="sync_bn", action="store_true",
                   help="synchronised BatchNorm in the student (GPU only)")
    g.add_argument("--adjust_lr", "--adjust-lr", action="store_true",
                   help="scale the learning rate by total batch / --batch_size (torchdistill)")


def check_arguments(parser, args):
    if args.world_size < 1 or not 0 <= args.rank < args.world_size:
        parser.error(f"--rank {args.rank} must be in 0..{args.world_size - 1} for --world-size {args.world_size}")
    if args.nproc is not None and args.nproc < 1:
        parser.error(f"--nproc must be positive, got {args.nproc}")
    if args.sync_bn and not torch.cuda.is_available():
        parser.error("--sync-bn needs CUDA (BatchNorm statistics are synchronised by NCCL); drop it on CPU")
    if args.world_size > 1 and not args.multiprocessing_distributed:
        parser.error("--world-size > 1 needs --multiprocessing-distributed (or launch with torchrun)")


def _procs_per_node(args):
    if args.nproc is not None:
        if torch.cuda.is_available() and args.nproc > torch.cuda.device_count():
            raise UserError(f"--nproc {args.nproc} exceeds the {torch.cuda.device_count()} GPUs here")
        return args.nproc
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
    (``config.args`` holds the distributed flags)."""
    args = config.args
    try:
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
            local_size = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
            _run(local_rank, worker, config, "env://", int(os.environ["RANK"]),
                 int(os.environ["WORLD_SIZE"]), local_size)
            return
        if not args.multiprocessing_distributed:
            _run(0, worker, config, None, 0, 1, 1)
            return
        nprocs = _procs_per_node(args)
        world = nprocs * args.world_size
        if nprocs == 1 and world == 1:
            _run(0, worker, config, None, 0, 1, 1)
            return
        check_dist_url(args.dist_url)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    # When one worker fails, the others are stopped: not news beside that worker's own line.
    logging.getLogger("torch.multiprocessing.spawn").setLevel(logging.ERROR)
    try:
        mp.spawn(_spawned, args=(worker, config, nprocs, world, os.getpid()), nprocs=nprocs, join=True)
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
    args = config.args
    _run(local_rank, worker, config, args.dist_url, args.rank * nprocs + local_rank, world, nprocs)


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
    args = config.args
    if torch.cuda.is_available():
        gpu = local_rank if world_size > 1 else args.gpu_id
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
        backend = args.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        error = None
        try:
            check_dist_url(init_method)
            # tcp:// and env:// stores take the timeout for connecting, file:// for waiting on
            # the other processes (its folder is checked above: a missing one would hang).
            with _quiet_rendezvous():
                dist.init_process_group(backend, init_method=init_method, world_size=world_size,
                                        rank=rank, timeout=timedelta(minutes=args.dist_timeout))
        except UserError as e:
            error = str(e)
        except (RuntimeError, ValueError) as e:  # torch's DistError and DistStoreError included
            error = _join_error(init_method, rank, world_size, args.dist_timeout, e)
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

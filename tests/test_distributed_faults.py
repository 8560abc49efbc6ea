"""Faults a new user met (issue 21): a rendezvous that cannot happen ends within
--dist-timeout in one line, spawned workers do not outlive a killed launcher, and an unreadable
MNIST folder is one line naming it."""
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from test_distributed import _cmd, _env, _free_port, _teacher_args


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.strip()]


def test_file_url_in_a_missing_folder_is_one_line(mnist_small, tmp_path):
    url = f"file://{tmp_path}/missing/store"
    start = time.time()
    result = subprocess.run(_cmd("train_teacher.py", *_teacher_args(mnist_small, tmp_path),
                                 "--multiprocessing-distributed", "--nproc", "2",
                                 "--dist-url", url, "--dist-timeout", "0.5"),
                            env=_env(), timeout=180, capture_output=True, text=True)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _error_lines(result.stderr) == [
        f"error: --dist-url {url}: folder {tmp_path}/missing does not exist; create it (on a "
        f"file system every node shares) or use --dist-url tcp://HOST:PORT"]
    assert time.time() - start < 120  # before: 5 minutes of silence, whatever --dist-timeout


@pytest.mark.parametrize("scheme", ["tcp", "file"])
def test_a_missing_node_ends_the_rendezvous_within_dist_timeout(mnist_small, tmp_path, scheme):
    """Rank 1 of 2 waits for a rank 0 that never comes: as a TCP client of a loopback port where
    nothing listens (torch's C++ layer retries, printing hundreds of lines), or on a file."""
    url = (f"tcp://127.0.0.1:{_free_port()}" if scheme == "tcp" else f"file://{tmp_path}/store")
    start = time.time()
    result = subprocess.run(_cmd("train_teacher.py", *_teacher_args(mnist_small, tmp_path),
                                 "--multiprocessing-distributed", "--world-size", "2", "--rank", "1",
                                 "--nproc", "1", "--dist-url", url, "--dist-timeout", "0.05"),
                            env=_env(), timeout=180, capture_output=True, text=True)
    lines = _error_lines(result.stderr)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot join the process group at {url} as rank 1 of 2 "
                               f"within 0.05 minutes (--dist-timeout): ")
    if scheme == "file":  # a file left behind would spoil the next try: the line says so
        store = tmp_path / "store"
        assert lines[0].endswith(f"; delete {store} before the next try") == store.exists()
    assert time.time() - start < 120


def test_port_in_use_is_one_line(mnist_small, tmp_path):
    """Rank 0 cannot listen; the worker stopped beside it adds nothing (torch's spawn logs it)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        url = f"tcp://127.0.0.1:{busy.getsockname()[1]}"
        result = subprocess.run(_cmd("train_teacher.py", *_teacher_args(mnist_small, tmp_path),
                                     "--multiprocessing-distributed", "--nproc", "2",
                                     "--dist-url", url, "--dist-timeout", "0.5"),
                                env=_env(), timeout=180, capture_output=True, text=True)
    lines = _error_lines(result.stderr)
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert lines[0].startswith(f"error: cannot start the process group at {url}: port in use")


def _state(pid):
    """The process state letter, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def _alive_with(marker):
    """Living (not zombie) processes whose environment holds ``marker``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker not in f.read():
                    continue
        except OSError:
            continue
        if _state(entry) not in (None, "Z"):
            found.append(int(entry))
    return found


def _spawned_workers(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        return []
    workers = []
    for kid in kids:
        try:
            with open(f"/proc/{kid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{kid}/maps") as f:
                torch_loaded = "libtorch_python" in f.read()
        except OSError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline and torch_loaded:
            workers.append(kid)
    return workers


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux's /proc")
def test_spawned_workers_die_with_a_killed_launcher(mnist_small, tmp_path):
    """SIGKILL cannot be passed on by mp.spawn: the workers (here waiting for a rank 0 that never
    comes, for minutes) must end by themselves instead of running on as orphans."""
    marker = f"KD_TEST_MARKER={uuid.uuid4().hex}"
    env = {**_env(), marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.Popen(_cmd("train_teacher.py", *_teacher_args(mnist_small, tmp_path),
                                 "--multiprocessing-distributed", "--world-size", "2", "--rank", "1",
                                 "--nproc", "2", "--dist-url", f"tcp://127.0.0.1:{_free_port()}",
                                 "--dist-timeout", "3"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = marker.encode()
    try:
        deadline = time.time() + 120
        while len(_spawned_workers(proc.pid)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(_spawned_workers(proc.pid)) == 2
        time.sleep(3)  # past unpickling their arguments: in the rendezvous
        assert proc.poll() is None and len(_alive_with(marker)) >= 3
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 10
        while _alive_with(marker) and time.time() < deadline:
            time.sleep(0.2)
        assert _alive_with(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _alive_with(marker):  # only the processes this test started
            os.kill(pid, signal.SIGKILL)


# --- an unreadable MNIST folder -------------------------------------------------------------

@pytest.fixture
def deny(monkeypatch):
    """``deny(path)``: make ``path`` unreadable: mode 000 where permission bits count, else (as
    root, whom they do not stop) by making os.stat/os.access/open act as for such a path."""
    from dataset import mnist
    denied, modes = [], {}
    real_stat, real_access = os.stat, os.access

    def inside(p, strictly):
        p = os.path.abspath(os.fspath(p))
        return any(p.startswith(d + os.sep) or (not strictly and p == d) for d in denied)

    def error(p):
        return PermissionError(13, "Permission denied", os.fspath(p))

    def stat(p, *args, **kwargs):
        if isinstance(p, (str, os.PathLike)) and inside(p, strictly=True):
            raise error(p)
        return real_stat(p, *args, **kwargs)

    def access(p, mode, *args, **kwargs):
        if inside(p, strictly=False) and mode & (os.R_OK | os.X_OK):
            return False
        return real_access(p, mode, *args, **kwargs)

    def fake_open(p, *args, **kwargs):
        if inside(p, strictly=False):
            raise error(p)
        return open(p, *args, **kwargs)

    def add(path):
        path = os.path.abspath(path)
        if os.geteuid() != 0:
            modes[path] = os.stat(path).st_mode
            os.chmod(path, 0)
        else:
            monkeypatch.setattr(os, "stat", stat)
            monkeypatch.setattr(os, "access", access)
            monkeypatch.setattr(mnist, "open", fake_open, raising=False)
        denied.append(path)
    yield add
    for path, mode in modes.items():
        os.chmod(path, mode)


def _make_mnist(root):
    from test_dataset import make_mnist
    make_mnist(root)
    return root / "MNIST" / "raw"


def test_unreadable_mnist_folder_is_one_line_naming_it(tmp_path, deny):
    from dataset import mnist
    from helper.core.errors import UserError
    raw = _make_mnist(tmp_path)
    deny(raw)
    with pytest.raises(UserError) as e:
        mnist.load_mnist("mnist", tmp_path, download=False)
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot read the folder {raw} (PermissionError: ")
    assert f"chmod -R u+rX {raw}" in message and "--data_folder" in message


def test_unreadable_mnist_file_is_not_called_corrupt(tmp_path, deny):
    from dataset import mnist
    from helper.core.errors import UserError
    raw = _make_mnist(tmp_path)
    deny(raw / "train-labels-idx1-ubyte")
    with pytest.raises(UserError) as e:
        mnist.load_mnist("mnist", tmp_path, download=False)
    message = str(e.value)
    assert message.startswith(f"cannot read the file {raw / 'train-labels-idx1-ubyte'} "
                              f"(PermissionError: ")
    assert "chmod u+r" in message and "corrupt" not in message

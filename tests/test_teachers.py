"""python -m helper.teachers: fetch from an HTTP server on 127.0.0.1 (started here) serving an
archive generated in the release's layout, resume or restart after a cut connection, and one
line with exit code 2 for a corrupt archive, a wrong layout, a refused connection; nothing left
behind. ``register`` converts a local archive or folder offline."""
import hashlib
import io
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from helper import teachers
from helper.checkpoint import FORMAT, load_teacher
from models import create_model

MODEL = "resnet56"  # the release's smallest teacher
MEMBER = f"cifar_teachers/{MODEL}_vanilla/ckpt_epoch_240.pth"


def _repdistiller_checkpoint():
    """A RepDistiller teacher file as its train_teacher.py saves at epoch 240 (legacy format)."""
    torch.manual_seed(0)
    model = create_model(MODEL, 100)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    buffer = io.BytesIO()
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": torch.tensor(72.34),
                "optimizer": optimizer.state_dict()}, buffer, _use_new_zipfile_serialization=False)
    return model.eval(), buffer.getvalue()


def _tar(files):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def release():
    model, data = _repdistiller_checkpoint()
    return model, _tar({MEMBER: data})


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        server = self.server
        server.requests.append(self.headers.get("Range"))
        if self.path != "/cifar_teachers.tar":
            self.send_error(404)
            return
        payload, start = server.payload, 0
        rng = self.headers.get("Range")
        if rng and server.ranges:
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(payload) - 1}/{len(payload)}")
        else:
            self.send_response(200)
        body = payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if server.cut_after is not None and len(server.requests) == 1:
            self.wfile.write(body[:server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-transfer (the interrupted download) is expected


@pytest.fixture
def serve():
    servers = []

    def start(payload, ranges=True, cut_after=None):
        server = _Server(("127.0.0.1", 0), _Handler)
        server.payload, server.ranges, server.cut_after = payload, ranges, cut_after
        server.requests = []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/cifar_teachers.tar"
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    """The temporary download goes into a folder of this test, to see that nothing is left."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _fetch(url, save, *extra):
    teachers.main(["fetch", MODEL, "--url", url, "--save_folder", str(save), *extra])


def _one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as e:
        teachers.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def _check_installed(save, reference):
    path = save / "teachers" / f"{MODEL}_vanilla_cifar100_trial_0" / "best.pth"
    stored = torch.load(path, weights_only=True)
    assert stored["format"] == FORMAT and stored["model_name"] == MODEL
    assert stored["num_classes"] == 100 and stored["dataset"] == "cifar100"
    assert stored["distill"] == "vanilla" and stored["accuracy"] == pytest.approx(72.34)
    assert stored["published_acc"] == 72.34 and stored["epoch"] == 240
    teacher, _ = load_teacher(path, 100)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference(x))
    return path


def test_fetch_converts_and_keeps_what_is_there(release, serve, tmp_path, capsys, private_tmp):
    reference, payload = release
    _, url = serve(payload)
    save = tmp_path / "save"
    _fetch(url, save)
    _check_installed(save, reference)
    out = capsys.readouterr().out
    assert "downloading" in out and "--evaluate" in out and "published top-1 72.34" in out
    assert not list(private_tmp.iterdir())
    _fetch(url, save)
    assert "exists; kept" in capsys.readouterr().out
    teachers.main(["list", "--save_folder", str(save)])
    listed = capsys.readouterr().out.splitlines()
    assert any(MODEL in line and "installed" in line for line in listed)


@pytest.mark.parametrize("ranges", [True, False])
def test_cut_connection_resumes_or_restarts(release, serve, tmp_path, capsys, private_tmp, ranges):
    reference, payload = release
    server, url = serve(payload, ranges=ranges, cut_after=len(payload) // 3)
    _fetch(url, tmp_path / "save")
    _check_installed(tmp_path / "save", reference)
    assert len(server.requests) == 2 and server.requests[1] == f"bytes={len(payload) // 3}-"
    out = capsys.readouterr().out
    assert ("restarting" in out) != ranges
    assert not list(private_tmp.iterdir())


def test_sha256_is_checked(release, serve, tmp_path, capsys):
    _, payload = release
    _, url = serve(payload)
    good = hashlib.sha256(payload).hexdigest()
    _fetch(url, tmp_path / "save", "--sha256", good)
    bad = "0" * 64
    err = _one_line_error(capsys, ["fetch", MODEL, "--url", url, "--save_folder",
                                   str(tmp_path / "other"), "--sha256", bad])
    assert "SHA-256" in err
    assert not (tmp_path / "other").exists()


@pytest.mark.parametrize("kind", ["garbage", "truncated", "wrong_layout", "not_a_checkpoint",
                                  "wrong_model"])
def test_bad_archives_are_one_line_and_leave_nothing(release, serve, tmp_path, capsys,
                                                     private_tmp, kind):
    _, payload = release
    payload = {
        "garbage": b"<html>not found</html>" * 100,
        "truncated": payload[:len(payload) // 2],
        "wrong_layout": _tar({f"teachers/{MODEL}.pth": b"x"}),
        "not_a_checkpoint": _tar({MEMBER: b"not torch"}),
        "wrong_model": _tar({MEMBER: _state_bytes(create_model("resnet20", 100))}),
    }[kind]
    _, url = serve(payload)
    save = tmp_path / "save"
    err = _one_line_error(capsys, ["fetch", MODEL, "--url", url, "--save_folder", str(save)])
    expected = {"garbage": "not a readable tar archive", "truncated": "corrupt",
                "wrong_layout": "not laid out", "not_a_checkpoint": "not a readable PyTorch",
                "wrong_model": "does not fit resnet56"}[kind]
    assert expected in err
    assert not save.exists() and not list(private_tmp.iterdir())


def _state_bytes(model):
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict()}, buffer)
    return buffer.getvalue()


def test_offline_and_http_errors(serve, tmp_path, capsys, private_tmp):
    import socket
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    save = tmp_path / "save"
    err = _one_line_error(capsys, ["fetch", MODEL, "--url", f"http://127.0.0.1:{port}/x.tar",
                                   "--save_folder", str(save)])
    assert "cannot download" in err and "refused" in err.lower() and "register" in err
    _, url = serve(b"")
    err = _one_line_error(capsys, ["fetch", MODEL, "--url", url + ".missing",
                                   "--save_folder", str(save)])
    assert "HTTP 404" in err
    err = _one_line_error(capsys, ["fetch", "resnet8", "--save_folder", str(save)])
    assert "no teacher 'resnet8'" in err
    assert not save.exists() and not list(private_tmp.iterdir())


def test_interrupted_download_leaves_nothing(release, serve, tmp_path, capsys, private_tmp,
                                             monkeypatch):
    _, payload = release
    _, url = serve(payload)

    def interrupt(self, done):
        raise KeyboardInterrupt
    monkeypatch.setattr(teachers._Progress, "__call__", interrupt)
    with pytest.raises(SystemExit) as e:
        _fetch(url, tmp_path / "save")
    assert e.value.code == 130
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "save").exists() and not list(private_tmp.iterdir())


def test_register_archive_and_folder(release, tmp_path, capsys):
    reference, payload = release
    archive = tmp_path / "cifar_teachers.tar"
    archive.write_bytes(payload)
    teachers.main(["register", str(archive), MODEL, "--save_folder", str(tmp_path / "a")])
    _check_installed(tmp_path / "a", reference)
    folder = tmp_path / "extracted"
    with tarfile.open(archive) as tar:
        tar.extractall(folder, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    for source in (folder, folder / "cifar_teachers"):
        save = tmp_path / f"s{len(str(source))}"
        teachers.main(["register", str(source), MODEL, "--save_folder", str(save)])
        _check_installed(save, reference)
    err = _one_line_error(capsys, ["register", str(tmp_path / "nothing.tar"), MODEL,
                                   "--save_folder", str(tmp_path / "b")])
    assert "does not exist" in err
    err = _one_line_error(capsys, ["register", str(tmp_path / "a"), MODEL,
                                   "--save_folder", str(tmp_path / "b")])
    assert "not laid out" in err
    assert not (tmp_path / "b").exists()


def test_torchvision_imagenet_teacher_from_the_hub_cache(tmp_path, capsys):
    """--release torchvision: the weights torch.hub has cached (no download here) become a
    toolbox teacher with torchvision's published top-1."""
    import os
    import torchvision
    name = "shufflenet_v2_x1_0"
    weights = torchvision.models.get_model_weights(name)["IMAGENET1K_V1"]
    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x1_0(num_classes=1000).eval()
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        cache = tmp_path / "hub" / "checkpoints"
        cache.mkdir(parents=True)
        torch.save(reference.state_dict(), cache / os.path.basename(weights.url))
        teachers.main(["fetch", name, "--release", "torchvision", "--weights", "IMAGENET1K_V1",
                       "--save_folder", str(tmp_path / "save")])
    finally:
        torch.hub.set_dir(old)
    path = tmp_path / "save" / "teachers" / f"{name}_vanilla_imagenet_trial_0" / "best.pth"
    teacher, checkpoint = load_teacher(path, 1000)
    assert checkpoint["published_acc"] == pytest.approx(69.362)
    assert checkpoint["source"] == weights.url
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(teacher(x), reference(x))
    assert "published top-1 69.36" in capsys.readouterr().out
    err = _one_line_error(capsys, ["fetch", name, "--release", "torchvision", "--weights", "V9",
                                   "--save_folder", str(tmp_path / "x")])
    assert "IMAGENET1K_V1" in err and not (tmp_path / "x").exists()


def test_install_undoes_itself_and_leaves_training_runs_alone(tmp_path, monkeypatch):
    release = teachers.RELEASES["mdistiller"]
    converted = {"resnet56": {"model": {}}, "resnet110": {"model": {}}}
    calls = []
    real_save = teachers.atomic_save

    def save(obj, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_save(obj, path)
    monkeypatch.setattr(teachers, "atomic_save", save)
    with pytest.raises(KeyboardInterrupt):
        teachers.install(converted, release, tmp_path / "save")
    assert len(calls) == 2 and not (tmp_path / "save").exists()
    monkeypatch.setattr(teachers, "atomic_save", real_save)

    run = teachers.run_folder(tmp_path / "save", "resnet56", "cifar100")
    run.mkdir(parents=True)
    (run / "last.pth").write_bytes(b"a run trained here")
    lines = []
    written = teachers.install(converted, release, tmp_path / "save", force=True, log=lines.append)
    assert [p.parent.name for p in written] == ["resnet110_vanilla_cifar100_trial_0"]
    assert not (run / "best.pth").exists() and "not touched" in lines[0]

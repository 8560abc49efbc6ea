"""python -m helper.teachers: fetch from an HTTP server on 127.0.0.1 (started here) serving an
archive generated in the release's layout, resume or restart after a cut connection, and one
line with exit code 2 for a corrupt archive, a wrong layout, a refused connection; nothing left
behind. ``register`` converts a local archive or folder offline."""
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from helper.teachers import download, zoo as teachers
from helper.run.checkpoint import FORMAT, load_teacher
from models import create_model

MODEL = "resnet56"  # the release's smallest teacher
MEMBER = f"cifar_teachers/{MODEL}_vanilla/ckpt_epoch_240.pth"


def _repdistiller_checkpoint(name=MODEL):
    """A RepDistiller teacher file as its train_teacher.py saves at epoch 240 (legacy format)."""
    torch.manual_seed(0)
    model = create_model(name, 100)
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
        files = server.payload if isinstance(server.payload, dict) else {
            "/cifar_teachers.tar": server.payload}
        if self.path not in files:
            self.send_error(404)
            return
        payload, start = files[self.path], 0
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
    monkeypatch.setattr(download.Progress, "__call__", interrupt)
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


# ---- scoring against the published accuracy -------------------------------------------------
def _with_published(monkeypatch, name, published):
    import dataclasses
    release = dataclasses.replace(teachers.RELEASES[name], published=published)
    monkeypatch.setitem(teachers.RELEASES, name, release)
    return release


def test_fetched_teachers_are_scored_against_the_published_accuracy(serve, tmp_path, capsys,
                                                                     monkeypatch, cifar100_tiny):
    """Two teachers of one archive, scored once on the (tiny) CIFAR-100 test split: the one
    whose published top-1 is within 0.5 points agrees, the other is reported; both are kept."""
    from test_evaluate import by_hand
    cifar = ([0.5071, 0.4867, 0.4408], [0.2675, 0.2565, 0.2761])
    models, files = {}, {}
    for name in ("resnet56", "resnet110"):
        models[name], files[f"cifar_teachers/{name}_vanilla/ckpt_epoch_240.pth"] = \
            _repdistiller_checkpoint(name)
    acc = {name: by_hand(m, cifar100_tiny, *cifar)[0] for name, m in models.items()}
    _with_published(monkeypatch, "mdistiller", {"resnet56": acc["resnet56"] + 0.3,
                                                "resnet110": acc["resnet110"] + 1.5})
    _, url = serve(_tar(files))
    save = tmp_path / "save"
    capsys.readouterr()
    teachers.main(["fetch", "--url", url, "--save_folder", str(save),
                   "--data_folder", str(cifar100_tiny)])
    out = capsys.readouterr().out.splitlines()
    scored = [line for line in out if line.startswith("evaluate ")]
    assert len(scored) == 2
    agrees = [line for line in out if "agrees with the published" in line]
    assert len(agrees) == 1 and agrees[0].startswith("resnet56: ") and "(-0.30)" in agrees[0]
    off = [line for line in out if line.startswith("warning: ")]
    assert len(off) == 1 and "resnet110" in off[0] and "1.50 points below" in off[0]
    for name in models:
        best = teachers.run_folder(save, name, "cifar100") / "best.pth"
        result = json.loads(best.with_name("best.pth.eval.json").read_text())
        assert result["acc"] == pytest.approx(acc[name], abs=1e-9)
    # no data set there: nothing scored, one line says why; --no_check: not even that
    teachers.main(["fetch", "resnet56", "--url", url, "--save_folder", str(tmp_path / "b"),
                   "--data_folder", str(tmp_path / "none")])
    out = capsys.readouterr().out.splitlines()
    assert sum("not scored against the published accuracy" in line for line in out) == 1
    assert not any(line.startswith("evaluate ") for line in out)
    teachers.main(["fetch", "resnet56", "--url", url, "--save_folder", str(tmp_path / "c"),
                   "--data_folder", str(cifar100_tiny), "--no_check"])
    out = capsys.readouterr().out.splitlines()
    assert not any("scored" in line or line.startswith("evaluate ") for line in out)


def write_cifar10(root, n_test=40, seed=0):
    """A CIFAR-10 in torchvision's pickle layout (one image per training batch: only the test
    split is read here)."""
    import pickle
    import numpy as np
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 1) for i in range(1, 6)] + [("test_batch", n_test)]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return Path(root)


def test_akamaster_release_fetches_single_files_with_their_normalisation(serve, tmp_path,
                                                                         capsys, monkeypatch):
    """--release akamaster: one .th file per teacher; the teacher records ImageNet's mean and
    std (akamaster's trainer.py), and is scored on CIFAR-10 through them: --evaluate's top-1 is
    the by-hand one on inputs normalised akamaster's way."""
    from test_akamaster import _reference, _write_akamaster_file
    from test_evaluate import by_hand
    reference = _reference(3)
    path = _write_akamaster_file(reference, tmp_path / "r.th")
    data = write_cifar10(tmp_path / "data")
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    acc, loss = by_hand(reference, data, *imagenet, dataset="cifar10")
    _with_published(monkeypatch, "akamaster", {"resnet20_akamaster": acc + 0.25})
    _, url = serve({"/pretrained_models/resnet20-12fca82f.th": path.read_bytes()})
    save = tmp_path / "save"
    teachers.main(["fetch", "resnet20_akamaster", "--release", "akamaster", "--url",
                   url.rsplit("/", 1)[0] + "/pretrained_models/", "--save_folder", str(save),
                   "--data_folder", str(data)])
    best = teachers.run_folder(save, "resnet20_akamaster", "cifar10") / "best.pth"
    stored = torch.load(best, weights_only=True)
    assert stored["normalization"] == {"mean": imagenet[0], "std": imagenet[1]}
    assert stored["published_acc"] == pytest.approx(acc + 0.25)
    assert stored["best_acc"] == pytest.approx(91.73)  # what the file records (best_prec1)
    result = json.loads(best.with_name("best.pth.eval.json").read_text())
    assert result["acc"] == pytest.approx(acc, abs=1e-9)
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    out = capsys.readouterr().out
    assert "re-normalised" in out and "agrees with the published" in out
    err = _one_line_error(capsys, ["fetch", "resnet20_akamaster", "--release", "akamaster",
                                   "--url", url + "/nothing", "--save_folder", str(tmp_path / "x")])
    assert "HTTP 404" in err and not (tmp_path / "x").exists()
    err = _one_line_error(capsys, ["fetch", "resnet20_akamaster", "--release", "akamaster",
                                   "--sha256", "0" * 64, "--save_folder", str(tmp_path / "x")])
    assert "drop --sha256" in err and not (tmp_path / "x").exists()


# ---- the table scripts' teacher step (scripts/common.sh) -----------------------------------
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
FAKE_PYTHON = r'''
python() {  # records the command; the zoo lists two teachers, fetching resnet110 fails
  echo "python $*" >> "$LOG"
  case "$*" in
    "-m helper.teachers list --plain")
      printf 'mdistiller resnet56 cifar100 72.34\nmdistiller resnet110 cifar100 74.31\n' ;;
    "-m helper.teachers fetch resnet56 "*)
      mkdir -p "$SAVE/teachers/resnet56_vanilla_cifar100_trial_0"
      : > "$SAVE/teachers/resnet56_vanilla_cifar100_trial_0/best.pth" ;;
    "-m helper.teachers fetch resnet110 "*) return 2 ;;
  esac
}
'''


def _run_folder(save, name, trial, files):
    folder = save / "teachers" / f"{name}_vanilla_cifar100_trial_{trial}"
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)


def test_teacher_step_finds_fetches_or_trains(tmp_path):
    """Each teacher of a table script is found, fetched or trained, one '# teacher' line each,
    and one '# teachers:' line at the end; a student baseline (numbered trial) just trains."""
    import subprocess
    save, log = tmp_path / "save", tmp_path / "log"
    _run_folder(save, "vgg8", 0, {"best.pth": "", "last.pth": "",
                                  "summary.json": '{\n  "finished": true\n}'})
    _run_folder(save, "wrn_16_2", "reviewkd", {"best.pth": "", "last.pth": "",
                                               "summary.json": '{\n  "finished": false\n}'})
    script = f'''source "{SCRIPTS / 'common.sh'}"
{FAKE_PYTHON}
job python train_teacher.py --model resnet56 --epochs 1
job python train_teacher.py --model resnet110
job python train_teacher.py --model vgg8 --dataset cifar100
job python train_teacher.py --model=vgg13
job python train_teacher.py --model wrn_16_2 --trial reviewkd
job python train_teacher.py --model resnet8 --trial 1
echo "PATH_T $(teacher_path resnet56 cifar100 last) $(teacher_path vgg8 cifar100 last)"
'''
    env = {**os.environ, "SAVE": str(save), "LOG": str(log), "GPUS": "0", "DRY_RUN": "0",
           "DATA": "./data", "TRIALS": "1"}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout.splitlines()
    t = "# teacher "
    assert [line for line in out if line.startswith(t)] == [
        t + "resnet56 cifar100 trial 0: fetched from mdistiller",
        t + "resnet110 cifar100 trial 0: the fetch from mdistiller failed; training it",
        t + "resnet110 cifar100 trial 0: trained",
        t + f"vgg8 cifar100 trial 0: found in {save}/teachers/vgg8_vanilla_cifar100_trial_0",
        t + "vgg13 cifar100 trial 0: trained",
        t + f"wrn_16_2 cifar100 trial reviewkd: trained (continuing the unfinished run in "
            f"{save}/teachers/wrn_16_2_vanilla_cifar100_trial_reviewkd)"]
    assert out[-1] == ("# teachers: 1 fetched (resnet56 cifar100 trial 0); 1 found (vgg8 "
                       "cifar100 trial 0); 3 trained (resnet110 cifar100 trial 0, vgg13 cifar100 "
                       "trial 0, wrn_16_2 cifar100 trial reviewkd)")
    teacher_dir = save / "teachers"
    assert (f"PATH_T {teacher_dir}/resnet56_vanilla_cifar100_trial_0/best.pth "
            f"{teacher_dir}/vgg8_vanilla_cifar100_trial_0/last.pth") in out
    ran = log.read_text().splitlines()
    assert ran.count("python -m helper.teachers list --plain") == 1
    fetches = [r for r in ran if r.startswith("python -m helper.teachers fetch")]
    assert fetches == [f"python -m helper.teachers fetch {m} --release mdistiller --save_folder "
                       f"{save} --data_folder ./data" for m in ("resnet56", "resnet110")]
    trained = [re.search(r"--model[= ](\S+)", r).group(1) for r in ran
               if r.startswith("python train_teacher.py")]
    assert trained == ["resnet110", "vgg13", "wrn_16_2", "resnet8"]
    resumed = [r for r in ran if "wrn_16_2" in r]
    assert len(resumed) == 1 and "--trial reviewkd --resume --save_folder" in resumed[0]
    assert sum("--resume" in r for r in ran) == 1


def test_dry_run_prints_the_fetches_and_the_students_use_them(tmp_path):
    """A table script in a dry run with the real zoo list: the teachers a release publishes
    are fetched (their commands parse), the students read their best.pth (the release's final
    weights, for RepDistiller's last.pth), and the summary names them."""
    import shlex
    import subprocess
    env = {**os.environ, "DRY_RUN": "1", "TRIALS": "1", "GPUS": "0", "SAVE": str(tmp_path)}
    out = subprocess.run(["bash", str(SCRIPTS / "repdistiller_cifar100.sh")], env=env,
                         capture_output=True, text=True, check=True, timeout=300).stdout
    lines = out.splitlines()
    fetches = [shlex.split(line) for line in lines if line.startswith("python -m helper.teachers")]
    names = [argv[4] for argv in fetches]
    assert names == ["wrn_40_2", "resnet56", "resnet110", "resnet32x4", "vgg13"]
    for argv in fetches:
        args = teachers.parser().parse_args(argv[3:])
        assert args.release == "mdistiller" and args.save_folder == str(tmp_path)
    assert not any(line.startswith("python train_teacher.py") and "--trial" not in line
                   for line in lines)
    students = [shlex.split(line) for line in lines if line.startswith("python train_student.py")]
    paths = {argv[argv.index("--path_t") + 1] for argv in students}
    assert paths == {f"{tmp_path}/teachers/{m}_vanilla_cifar100_trial_0/best.pth" for m in names}
    assert lines[-1] == "# teachers: 5 fetched (" + ", ".join(
        f"{m} cifar100 trial 0" for m in names) + ")"


def test_register_an_archive_lacking_some_teachers_names_them_and_those_present(release,
                                                                               tmp_path, capsys):
    archive = tmp_path / "cifar_teachers.tar"
    archive.write_bytes(release[1])  # resnet56 only
    err = _one_line_error(capsys, ["register", str(archive), "--save_folder", str(tmp_path / "s")])
    assert "lacks 5 of the teachers asked for (wrn_40_2, resnet110" in err
    assert f"it holds resnet56: register those by name, e.g. python -m helper.teachers register {archive} resnet56" in err
    assert not (tmp_path / "s").exists()
    teachers.main(["register", str(archive), "resnet56", "--save_folder", str(tmp_path / "s")])
    assert (tmp_path / "s" / "teachers" / "resnet56_vanilla_cifar100_trial_0" / "best.pth").is_file()

"""helper/teacher_cache.py: the views, the cached logits against the teacher on crops made by
hand, cached batches and losses against on-the-fly ones, an interrupted build resumed, ranks
sharing the build, float16's error, real runs, and each refusal."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dataset import RandomCropFlip, TensorLoader, cifar
from helper import teacher_cache as tc
from helper.errors import UserError
from helper.teacher_forward import wrap_teacher
from helpers import (assert_resume_is_exact, build, one_line_user_error, read_summary,
                     run_student, save_teacher)
from models import create_model

N = 12


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, 32, 32), dtype=torch.uint8, generator=g)
    return images, torch.randint(0, 100, (N,), generator=g)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return save_teacher("resnet8", tmp_path_factory.mktemp("t") / "resnet8.pth")


def loader_of(data, batch_size=5, seed=3):
    return TensorLoader(*data, batch_size, "cpu", cifar.MEAN, cifar.STD, shuffle=True,
                        transform=RandomCropFlip(cifar.PADDING, flip=True), seed=seed)


def teacher_of(path, mode="auto"):
    model = create_model("resnet8", 100)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return wrap_teacher(model.eval(), mode, (3, 32, 32), "cpu")


def built(folder, data, teacher_file, dtype="float32", **kw):
    loader = loader_of(data)
    manifest = tc.manifest_for(loader, teacher_file=teacher_file, dataset="cifar100",
                               num_classes=100, dtype=dtype)
    cache = tc.open_cache(folder, manifest)
    tc.build(cache, teacher_of(teacher_file), loader, log=lambda *a: None, **kw)
    return cache.open("r"), loader


def test_views_round_trip():
    t = RandomCropFlip(4, flip=True)
    assert tc.view_count(t) == 162 and tc.view_count(RandomCropFlip(2, flip=False)) == 25
    assert tc.view_count(None) == 1
    params = torch.cat([tc.view_params(t, v) for v in range(162)])
    assert torch.equal(tc.view_ids(t, params), torch.arange(162))
    assert params[:, :2].min() == 0 and params[:, :2].max() == 8
    assert set(params[:, 2].tolist()) == {0, 1}


def _crop_by_hand(image, row, col, flip):
    """The view of one uint8 (C, H, W) image: zero-pad by 4, crop 32x32 at (row, col), flip."""
    padded = np.zeros((3, 40, 40), dtype=np.uint8)
    padded[:, 4:36, 4:36] = image.numpy()
    out = padded[:, row:row + 32, col:col + 32]
    return torch.from_numpy(np.ascontiguousarray(out[:, :, ::-1] if flip else out))


def test_cached_logits_are_the_teacher_on_each_view(tmp_path, data, teacher_file):
    cache, _ = built(tmp_path / "c", data, teacher_file)
    assert cache.done().all() and cache.data.shape == (162, N, 100)
    eager = teacher_of(teacher_file, "eager")
    mean, std = torch.tensor(cifar.MEAN).view(3, 1, 1), torch.tensor(cifar.STD).view(3, 1, 1)
    for view, i in [(0, 0), (161, 3), (40, 7), (81, 11), (17, 5)]:
        row, col, flip = tc.view_params(RandomCropFlip(4, True), view)[0].tolist()
        x = (_crop_by_hand(data[0][i], row, col, flip).float() / 255 - mean) / std
        with torch.no_grad():
            want = eager(x[None])[0]
        got = torch.from_numpy(np.array(cache.data[view, i]))
        # folded vs eager teacher, float32: a few 1e-6 of the largest logit
        assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (view, i)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["views"] == 162 and manifest["dtype"] == "float32"
    assert manifest["transform"] == {"padding": 4, "flip": True}


def test_cached_batches_and_kd_losses_equal_on_the_fly(tmp_path, data, teacher_file):
    cache, loader = built(tmp_path / "c", data, teacher_file)
    teacher = teacher_of(teacher_file)
    student = create_model("resnet8", 100)
    args = SimpleNamespace(cls=1.0, div=1.0, beta=0.0, kd_T=4.0)
    kd = build("kd", student, teacher, args, num_classes=100)
    kd.train()
    cached = tc.CachedTeacherLoader(loader, cache)
    for epoch in (1, 2):
        cached.set_epoch(epoch)
        batches = list(cached)
        assert len(batches) == len(loader) == 3
        for batch in batches:
            with torch.no_grad():
                want = teacher(batch["images"])
            got = batch["teacher_logits"]
            assert (got - want).abs().max() <= 1e-4 * want.abs().max()
            with torch.no_grad():
                _, with_cache = kd.forward_train(batch["images"], batch["targets"],
                                                 teacher_logits=got)
                _, on_the_fly = kd.forward_train(batch["images"], batch["targets"])
            for term in ("cls", "kd"):
                assert torch.allclose(with_cache[term], on_the_fly[term], rtol=1e-4, atol=1e-7)
    # the batches are the loader's own, in its order
    loader.set_epoch(2)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(loader, batches))


class Interrupting(torch.nn.Module):
    """A teacher that raises KeyboardInterrupt at its ``stop``-th call; counts its calls."""

    def __init__(self, teacher, stop=None):
        super().__init__()
        self.teacher, self.stop, self.calls = teacher, stop, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.stop:
            raise KeyboardInterrupt
        return self.teacher(x)


def test_interrupted_build_continues_where_it_stopped(tmp_path, data, teacher_file):
    loader = loader_of(data)
    manifest = tc.manifest_for(loader, teacher_file=teacher_file, dataset="cifar100",
                               num_classes=100)
    cache = tc.open_cache(tmp_path / "c", manifest)
    # batches of 5 over 12 images: 3 teacher calls per view; stop in view 4's second batch
    first = Interrupting(teacher_of(teacher_file), stop=3 * 4 + 2)
    with pytest.raises(KeyboardInterrupt, match="4 of 162 views done; run the same command"):
        tc.build(cache, first, loader, batch_size=5, log=lambda *a: None)
    assert cache.done()[:4].all() and not cache.done()[4:].any()
    again = Interrupting(teacher_of(teacher_file))
    tc.build(tc.open_cache(tmp_path / "c", manifest), again, loader, batch_size=5,
             log=lambda *a: None)
    assert again.calls == 3 * 158 and cache.done().all()
    straight, _ = built(tmp_path / "d", data, teacher_file, batch_size=5)  # same batches
    assert np.array_equal(np.array(cache.open("r").data), np.array(straight.data))


def test_ranks_share_one_build(tmp_path, data, teacher_file):
    loader = loader_of(data)
    manifest = tc.manifest_for(loader, teacher_file=teacher_file, dataset="cifar100",
                               num_classes=100)
    rank1 = tc.open_cache(tmp_path / "c", manifest, rank=1)  # before rank 0 created it
    rank0 = tc.open_cache(tmp_path / "c", manifest, rank=0)
    counted = [Interrupting(teacher_of(teacher_file)) for _ in range(2)]
    for rank, cache in ((0, rank0), (1, rank1)):
        tc.build(cache, counted[rank], loader, rank=rank, world_size=2, log=lambda *a: None)
        assert cache.done()[rank::2].all()
    assert [c.calls for c in counted] == [81, 81]  # one batch of 12 per view, half the views each
    assert rank0.done().all()


def test_float16_storage_error(tmp_path, data, teacher_file):
    full, _ = built(tmp_path / "a", data, teacher_file)
    half, _ = built(tmp_path / "b", data, teacher_file, dtype="float16")
    a, b = np.array(full.data, dtype=np.float64), np.array(half.data, dtype=np.float64)
    assert half.data.dtype == np.float16
    assert (tmp_path / "b" / "logits.bin").stat().st_size == a.size * 2
    # float16 rounds to 11 significant bits: within 2^-11 of each value, relative
    assert np.abs(a - b).max() <= 2 ** -11 * np.abs(a).max()
    s = torch.randn(a.shape[1], 100, dtype=torch.float64)
    from distillers import kd_loss
    for view in (0, 100):
        exact = kd_loss(s, torch.from_numpy(a[view]), 4.0)
        rounded = kd_loss(s, torch.from_numpy(b[view]), 4.0)
        assert abs(rounded - exact) <= 1e-3 * exact


def test_refusals(tmp_path, data, teacher_file):
    cache, loader = built(tmp_path / "c", data, teacher_file)
    other = tc.manifest_for(loader, teacher_file=teacher_file, dataset="cifar100",
                            num_classes=100, dtype="float16")
    with pytest.raises(UserError, match=r"holds another cache \(dtype: 'float32', this run: "):
        tc.open_cache(tmp_path / "c", other)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "stray").write_text("")
    with pytest.raises(UserError, match="holds files but no manifest.json"):
        tc.open_cache(tmp_path / "x", other)
    kd = SimpleNamespace(name="kd", teacher=object(), div_weight=1.0, cacheable="logits",
                         uses_teacher_output=lambda: False)
    ctx = SimpleNamespace(rank=0, world_size=1, log=print)
    args = SimpleNamespace(teacher_cache=str(tmp_path / "y"), aug="standard", mixup=0.0)
    with pytest.raises(UserError, match="needs an in-memory data set"):
        tc.attach(iter([]), kd, args, ctx, "imagenet", 1000)
    args = SimpleNamespace(teacher_cache=str(tmp_path / "y"), aug="standard", mixup=0.2)
    with pytest.raises(UserError, match="drop --mixup or --teacher_cache"):
        tc.attach(loader, kd, args, ctx, "cifar100", 100)


def test_one_epoch_cached_equals_on_the_fly(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    path = teacher_ckpt("resnet8")  # the build is 162 teacher passes over the 72 images
    flags = ["--deterministic", "--epochs", "1"]
    plain = run_student("kd", "resnet8", cifar100_tiny, tmp_path / "a", *flags, teacher=path)
    cached = run_student("kd", "resnet8", cifar100_tiny, tmp_path / "b", *flags,
                         "--teacher_cache", str(tmp_path / "cache"), teacher=path)
    out = capsys.readouterr().out
    assert "teacher cache: computing 162 of 162 views of 72 images" in out
    a, b = read_summary(plain), read_summary(cached)
    assert b["last_train_loss"] == pytest.approx(a["last_train_loss"], rel=1e-5)
    wa, wb = (torch.load(r / "last.pth", weights_only=True)["model"] for r in (plain, cached))
    for key in wa:
        assert torch.allclose(wa[key].float(), wb[key].float(), rtol=1e-4, atol=1e-5), key
    # a second run reads the cache as built
    run_student("kd", "resnet8", cifar100_tiny, tmp_path / "c", *flags,
                "--teacher_cache", str(tmp_path / "cache"), teacher=path)
    assert "computing" not in capsys.readouterr().out
    # a method that reads features runs its teacher on the fly, and says so
    run_student("fitnet", "resnet8", cifar100_tiny, tmp_path / "d", *flags,
                "--teacher_cache", str(tmp_path / "cache"), teacher=path)
    out = capsys.readouterr().out
    assert "reads more of the teacher than its logits; the cache is not used" in out


def test_user_errors(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    path = teacher_ckpt("resnet8")
    folder = tmp_path / "cache"
    folder.mkdir()
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "teacher_sha256": "0"}))
    line = one_line_user_error(capsys, "kd", "resnet8", cifar100_tiny, tmp_path / "s",
                               "--teacher_cache", str(folder), teacher=path)
    assert "holds another cache" in line and "delete it to rebuild" in line
    line = one_line_user_error(capsys, "kd", "resnet8", cifar100_tiny, tmp_path / "s",
                               "--teacher_cache_dtype", "float16", teacher=path)
    assert "--teacher_cache_dtype needs --teacher_cache DIR" in line


def test_benchmark_rows(bench):
    """scripts/benchmark.py's kd_cached iteration (lookups in a real memory-mapped cache) and
    cache_build row, in this process on tiny sizes; the notes that estimate the script's rows."""
    opts = bench.parser().parse_args(["--teacher", "resnet8", "--student", "resnet8", "--iters",
                                      "1", "--warmup", "0", "--chunk", "1", "--batch_size", "4",
                                      "--train_size", "8", "--data", "both", "--cache_images",
                                      "8", "--cache_views", "1", "--device", "cpu"])
    cached = bench.measure(bench.KD_CACHED, opts)
    assert cached["status"] == "ok" and cached["loss_terms"] == ["cls", "kd"]
    assert cached["synthetic_ms"] > 0 and cached["e2e_ms"] > 0 and cached["floor_ms"] > 0
    built = bench.measure_cache_build(opts)
    assert built["build_ms_per_image_view"] > 0 and built["cache_views"] == 162
    assert built["build_estimate_s"] == pytest.approx(
        built["build_ms_per_image_view"] / 1000 * 162 * 8)
    kd = {"method": "kd", "status": "ok", "e2e_ms": 2 * cached["e2e_ms"]}
    lines = bench.teacher_notes([kd, cached, built], opts)
    assert any(line.startswith("simkd_cifar100.sh kd rows (9 runs of 240 epochs") for line in lines)
    assert any(line.startswith("Teacher cache build (resnet8") for line in lines)


def test_resume_with_the_cache_is_exact(cifar100_tiny, tmp_path, teacher_ckpt):
    path = teacher_ckpt("resnet8")

    def run(folder, *flags):
        return run_student("kd", "resnet8", cifar100_tiny, tmp_path / folder, "--deterministic",
                           "--teacher_cache", str(tmp_path / "cache"), *flags, teacher=path)
    assert_resume_is_exact(run)


def test_two_ranks_share_one_cache(cifar100_tiny, tmp_path, teacher_ckpt):
    """Two gloo processes build the cache together and train from it: the same epoch as two
    processes running their teacher on the fly (each rank's views looked up right)."""
    import os
    import socket
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    common = ["--distill", "kd", "--model_s", "resnet8", "--path_t", str(teacher_ckpt("resnet8")),
              "--dataset", "cifar100", "--data_folder", str(cifar100_tiny), "--epochs", "1",
              "--batch_size", "64", "--print_freq", "1000", "--deterministic",
              "--multiprocessing-distributed", "--nproc", "2"]
    for name, extra in (("cached", ["--teacher_cache", str(tmp_path / "c")]), ("plain", [])):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        subprocess.run([sys.executable, os.path.join(repo, "train_student.py"), *common, *extra,
                        "--save_folder", str(tmp_path / name),
                        "--dist-url", f"tcp://127.0.0.1:{port}"],
                       check=True, timeout=300, capture_output=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo})
    assert np.fromfile(tmp_path / "c" / "progress.bin", dtype=np.uint8).all()
    a, b = (read_summary(next((tmp_path / n / "students").iterdir())) for n in ("plain", "cached"))
    assert a["last_train_loss"] == pytest.approx(b["last_train_loss"], rel=1e-5)

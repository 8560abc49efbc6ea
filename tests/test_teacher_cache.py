"""helper/teachers/cache.py: the views, the cached logits (and pooled features) against the
teacher on crops made by hand, cached batches and losses against on-the-fly ones, an
interrupted build resumed, ranks sharing the build, float16's error, real runs (kd; crd, rkd
and pkt on a pooled cache, whose teacher never runs), the kinds of cache and which serves
which, and each refusal."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dataset import RandomCropFlip, TensorLoader, cifar
from distillers import RunInfo
from helper.teachers import cache as tc
from helper.core.errors import UserError
from helper.teachers.forward import wrap_teacher
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


def built(folder, data, teacher_file, dtype="float32", kind="logits", **kw):
    loader = loader_of(data)
    manifest = manifest_of(loader, teacher_file, dtype, kind)
    cache = tc.open_cache(folder, manifest)
    tc.build(cache, teacher_of(teacher_file), loader, log=lambda *a: None, **kw)
    return cache.open("r"), loader


def manifest_of(loader, teacher_file, dtype="float32", kind="logits"):
    """The manifest of a cache of ``kind`` ("logits" or "pooled"; resnet8's pooled width 64)."""
    return tc.manifest_for(loader, teacher_file=teacher_file, dataset="cifar100",
                           num_classes=100, dtype=dtype, outputs=tc.OUTPUTS[kind],
                           pooled_dim=64 if kind == "pooled" else None)


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


def test_build_progress_every_ten_seconds_and_one_line_on_ctrl_c(monkeypatch):
    """helper.teachers.store.building, the clock of both builds (this cache's and FKD's soft labels'):
    a progress line when ten seconds have passed since the last one and at the last piece;
    Ctrl-C becomes the build's own message, without the traceback of where it struck."""
    from helper.teachers import store
    now = [100.0]
    monkeypatch.setattr(store, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    lines = []
    with store.building(4, lines.append, lambda: "unused") as progress:
        for done, t in zip(range(1, 5), (105.0, 111.0, 115.0, 116.0)):
            now[0] = t
            progress.step(done, lambda spent, left: f"{done}: {spent:.0f}s, {left:.0f}s left")
    assert lines == ["2: 11s, 11s left", "4: 16s, 0s left"] and progress.spent() == 16.0
    with pytest.raises(KeyboardInterrupt, match="^3 of 4 kept; run it again$") as e:
        with store.building(4, lines.append, lambda: "3 of 4 kept; run it again"):
            raise KeyboardInterrupt
    assert e.value.__cause__ is None and e.value.__suppress_context__


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
    config = _run_config("imagenet", 1000, teacher_cache=str(tmp_path / "y"))
    with pytest.raises(UserError, match="needs an in-memory data set"):
        tc.attach(iter([]), kd, config, ctx)
    config = _run_config("cifar100", 100, {"mixup": 0.2}, teacher_cache=str(tmp_path / "y"))
    with pytest.raises(UserError, match="drop --mixup or --teacher_cache"):
        tc.attach(loader, kd, config, ctx)


def _run_config(dataset, num_classes, augment=None, **teacher):
    """A student run's configuration built in code, with the data's sizes."""
    from helper.run.options import RunConfig
    return RunConfig.create("resnet8", teacher=teacher, data={"dataset": dataset},
                            augment=augment or {}).with_data({"num_classes": num_classes})


def test_one_epoch_cached_equals_on_the_fly(cifar100_tiny, tmp_path, teacher_ckpt, capsys):
    path = teacher_ckpt("resnet8")  # the build is 162 teacher passes over the 72 images
    # the default teacher (folded, channels-last) both builds the cache and runs on the fly;
    # an eager teacher builds contiguous and trains channels-last (--memory_format auto on the
    # CPU): logits equal to float rounding only, which one epoch grows beyond rtol 1e-4
    flags = ["--deterministic", "--epochs", "1", "--teacher_forward", "auto"]
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
    assert "reads more of the teacher than its logits and pooled feature; the cache is not " \
        "used" in out


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


def test_benchmark_rows_of_pooled_methods(bench):
    """``<method>_cached`` of any cacheable method: pkt's reads the logits and the pooled
    feature from a real memory-mapped cache (tiny sizes); a method that reads more has none."""
    assert bench.parse_methods("crd_cached,kd_cached,pkt") == [
        "floor", "crd_cached", "kd_cached", "pkt"]
    with pytest.raises(UserError, match="at reads more of the teacher than a teacher cache "):
        bench.parse_methods("at_cached")
    opts = bench.parser().parse_args(["--teacher", "resnet8", "--student", "resnet8", "--iters",
                                      "1", "--warmup", "0", "--chunk", "1", "--batch_size", "4",
                                      "--train_size", "8", "--data", "both", "--device", "cpu"])
    cached = bench.measure("pkt_cached", opts)
    assert cached["status"] == "ok" and cached["loss_terms"] == ["cls", "pkt"]
    assert cached["synthetic_ms"] > 0 and cached["e2e_ms"] > 0
    assert bench.table([cached], opts)[-1].startswith("| pkt, teacher cache (e) |")
    assert any(line.startswith("(e) the teacher's outputs read from a memory-mapped teacher "
                               "cache (pkt its logits and pooled;")
               for line in bench.teacher_notes([cached], opts))


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


# ---- the pooled cache: crd, rkd, pkt, cc, l2 (cacheable = "pooled") ---------------------------
def _view_of(data, i, view):
    """View ``view`` of image ``i``, normalised, made by hand: (1, 3, 32, 32)."""
    row, col, flip = tc.view_params(RandomCropFlip(4, True), view)[0].tolist()
    mean, std = torch.tensor(cifar.MEAN).view(3, 1, 1), torch.tensor(cifar.STD).view(3, 1, 1)
    return ((_crop_by_hand(data[0][i], row, col, flip).float() / 255 - mean) / std)[None]


def _forbidden(*args, **kwargs):
    raise AssertionError("the teacher ran in a cached run")


def test_pooled_cache_holds_the_teachers_pooled_feature(tmp_path, data, teacher_file):
    cache, _ = built(tmp_path / "c", data, teacher_file, kind="pooled")
    assert cache.outputs == ("logits", "pooled") and cache.arrays["pooled"].shape == (162, N, 64)
    eager = teacher_of(teacher_file, "eager")
    for view, i in [(0, 0), (161, 3), (40, 7), (81, 11)]:
        with torch.no_grad():
            feats, logits = eager(_view_of(data, i, view), is_feat=True)
        for name, want in (("logits", logits[0]), ("pooled", feats[-1][0])):
            got = torch.from_numpy(np.array(cache.arrays[name][view, i]))
            assert (got - want).abs().max() <= 1e-4 * want.abs().max(), (name, view, i)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["format"] == 2 and manifest["outputs"] == ["logits", "pooled"]
    assert manifest["pooled_dim"] == 64
    assert (tmp_path / "c" / "pooled.bin").stat().st_size == 162 * N * 64 * 4


def test_the_pooled_feature_does_not_depend_on_preact():
    """The cache stores feats[-1] of ``is_feat=True`` (preact False, as the pooled methods read
    it); with preact True it is the same on every family of the zoo."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    for name in ("resnet8", "resnet8x4", "wrn_16_2", "vgg8", "ShuffleV2", "MobileNetV2"):
        model = create_model(name, 100).eval()
        with torch.no_grad():
            after, _ = model(x, is_feat=True, preact=False)
            before, _ = model(x, is_feat=True, preact=True)
        assert torch.equal(after[-1], before[-1]), name


def test_cached_pooled_losses_equal_on_the_fly_without_the_teacher(tmp_path, data, teacher_file):
    cache, loader = built(tmp_path / "c", data, teacher_file, kind="pooled")
    teacher = teacher_of(teacher_file)
    torch.manual_seed(0)
    pkt = build("pkt", create_model("resnet8", 100), teacher,
                SimpleNamespace(cls=1.0, div=1.0, beta=30000.0, kd_T=4.0), num_classes=100)
    pkt.train()
    cached = tc.CachedTeacherLoader(loader, cache, tc.OUTPUTS["pooled"])
    cached.set_epoch(1)
    batches = list(cached)
    with torch.no_grad():
        on_the_fly = [pkt.forward_train(b["images"], b["targets"])[1] for b in batches]
        teacher.forward = _forbidden  # from here on, calling the teacher fails the test
        with_cache = [pkt.forward_train(b["images"], b["targets"],
                                        **{key: b[key] for key in tc.KEYS.values()})[1]
                      for b in batches]
    # The cache was built in other batches than these, and a CPU's convolutions round by batch
    # shape: its logits differ from these by a few ulps. KD = T^2 KL(softmax(t/T) || ...) moves
    # by at most T^2 * 2 max|dt| / T per sample under such a change (the KL's gradient in t/T
    # is bounded by 2 in the l1 norm); the pooled-feature term reads the cache alone.
    fresh = teacher_of(teacher_file)
    with torch.no_grad():
        drift = max((b["teacher_logits"] - fresh(b["images"])).abs().max().item() for b in batches)
    for want, got in zip(on_the_fly, with_cache):
        assert set(want) == set(got) == {"cls", "kd", "pkt"}
        for term in want:
            atol = 1e-7 + (2 * 4.0 * drift if term == "kd" else 0.0)
            assert torch.allclose(got[term], want[term], rtol=1e-4, atol=atol), term


def test_which_cache_serves_which_run(tmp_path, data, teacher_file):
    loader = loader_of(data)
    logits, pooled = (manifest_of(loader, teacher_file, kind=k) for k in ("logits", "pooled"))
    tc.open_cache(tmp_path / "p", pooled)
    # a pooled cache serves a logits-only run; it holds (and builds) both
    assert tc.open_cache(tmp_path / "p", logits).outputs == ("logits", "pooled")
    # a logits-only cache, here in format 1 (before "outputs"), serves logits and refuses pooled
    tc.open_cache(tmp_path / "l", logits)
    path = tmp_path / "l" / "manifest.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in tc.HELD}
    path.write_text(json.dumps({**old, "format": 1, "kind": "logits"}))
    assert tc.open_cache(tmp_path / "l", logits).outputs == ("logits",)
    with pytest.raises(UserError, match=r"holds the teacher's logits only and this run reads its "
                                        r"pooled feature too: give another folder, or delete it"):
        tc.open_cache(tmp_path / "l", pooled)


def test_a_combination_uses_the_cache_when_every_method_can(tmp_path, data, teacher_file, capsys):
    from distillers.combine import configure, merged_cacheable
    assert merged_cacheable(["logits", "logits"]) == "logits"
    assert merged_cacheable(["logits", "pooled"]) == merged_cacheable(["pooled"]) == "pooled"
    assert merged_cacheable(["pooled", None]) is merged_cacheable(["logits", None]) is None
    loader, teacher = loader_of(data), teacher_of(teacher_file)
    config = _run_config("cifar100", 100, teacher_cache=str(tmp_path / "c"),
                         path_t=str(teacher_file))
    ctx = SimpleNamespace(rank=0, world_size=1, log=print)

    def combined(spec, beta):
        flags = SimpleNamespace(cls=1.0, div=1.0, beta=beta, kd_T=4.0, nce_k=8)
        return configure(spec, flags).build(create_model("resnet8", 100), teacher,
                                            RunInfo(train_size=N))
    kd_crd = combined("kd+crd", {"crd": 0.8})
    assert kd_crd.cacheable == "pooled"
    batch = next(iter(tc.attach(loader, kd_crd, config, ctx)))
    assert batch["teacher_logits"].shape == (5, 100) and batch["teacher_pooled"].shape == (5, 64)
    crd_at = combined("crd+at", {"crd": 0.8, "at": 1000.0})
    assert crd_at.cacheable is None
    assert tc.attach(loader, crd_at, config, ctx) is loader
    assert ("--teacher_cache: --distill crd+at reads more of the teacher than its logits and "
            "pooled feature; the cache is not used") in capsys.readouterr().out


def test_float16_pooled_storage_error(tmp_path, data, teacher_file):
    full, _ = built(tmp_path / "a", data, teacher_file, kind="pooled")
    half, _ = built(tmp_path / "b", data, teacher_file, dtype="float16", kind="pooled")
    a, b = (np.array(c.arrays["pooled"], dtype=np.float64) for c in (full, half))
    assert half.arrays["pooled"].dtype == np.float16
    assert (tmp_path / "b" / "pooled.bin").stat().st_size == a.size * 2
    # 11 significant bits: within 2^-11 of each value, relative; below float16's smallest
    # normal number (6.1e-5) within half its subnormal step, 2^-25
    assert (np.abs(a - b) <= 2 ** -11 * np.abs(a) + 2 ** -25).all()
    # the losses against a random student feature, over every view: PKT's moves by about
    # 1e-5 (measured 9.7e-6), RKD's by up to 1.4e-3 (the distances between similar pooled
    # features amplify the rounding)
    from distillers.pkt import pkt_loss
    from distillers.rkd import rkd_angle_loss, rkd_distance_loss
    s = torch.randn(a.shape[1], a.shape[2], dtype=torch.float64,
                    generator=torch.Generator().manual_seed(0))
    for loss, bound in ((pkt_loss, 1e-4), (rkd_distance_loss, 3e-3), (rkd_angle_loss, 3e-3)):
        for view in range(len(a)):
            exact = loss(s, torch.from_numpy(a[view]))
            assert abs(loss(s, torch.from_numpy(b[view])) - exact) <= bound * exact, (loss, view)


def _forbid_the_teacher_when_cached(monkeypatch):
    """The student run's cache attach (helper/teachers/setup.py), after which the teacher of a
    cached run fails when called but for its start-up score on the test split (the cache's
    build comes before); the loaders attached, listed."""
    import train_student
    from helper.teachers import setup as teacher_setup
    attached = []
    score = teacher_setup.score_teachers

    def score_allowed(loaded, *args):
        forbidden = [(t, t.__dict__.pop("forward")) for _, t in loaded if "forward" in t.__dict__]
        try:
            return score(loaded, *args)
        finally:
            for teacher, forward in forbidden:
                teacher.forward = forward

    def attach(loader, distiller, *args):
        loader = tc.attach(loader, distiller, *args)
        if isinstance(loader, tc.CachedTeacherLoader):
            distiller.teacher.forward = _forbidden
            attached.append(loader.outputs)
        return loader
    monkeypatch.setattr(teacher_setup, "attach_teacher_cache", attach)
    monkeypatch.setattr(train_student, "score_teachers", score_allowed)
    return attached


ONE_EPOCH = ("--deterministic", "--epochs", "1")
CRD_FLAGS = ("--nce_k", "16")  # negatives that 72 images have


@pytest.fixture(scope="module")
def crd_runs(cifar100_tiny, teacher_ckpt, tmp_path_factory):
    """A one-epoch crd run on the fly and one with a pooled cache that it builds (162 teacher
    passes over the 72 images), whose teacher never runs once the cache is attached."""
    root, path = tmp_path_factory.mktemp("pooled"), teacher_ckpt("resnet8")
    with pytest.MonkeyPatch.context() as mp:
        attached = _forbid_the_teacher_when_cached(mp)
        plain = run_student("crd", "resnet8", cifar100_tiny, root / "plain", *ONE_EPOCH,
                            *CRD_FLAGS, teacher=path)
        cached = run_student("crd", "resnet8", cifar100_tiny, root / "cached", *ONE_EPOCH,
                             *CRD_FLAGS, "--teacher_cache", str(root / "cache"), teacher=path)
    assert attached == [("logits", "pooled")]
    return {"plain": plain, "cached": cached, "cache": root / "cache", "teacher": path}


def _assert_same_run(plain, cached):
    a, b = read_summary(plain), read_summary(cached)
    assert b["last_train_loss"] == pytest.approx(a["last_train_loss"], rel=1e-5)
    wa, wb = (torch.load(r / "last.pth", weights_only=True) for r in (plain, cached))
    for part in ("model", "extras"):
        for key in wa[part]:
            assert torch.allclose(wa[part][key].float(), wb[part][key].float(), rtol=1e-4,
                                  atol=1e-5), (part, key)


def test_one_epoch_crd_with_a_pooled_cache_equals_on_the_fly(crd_runs):
    # crd's -d 1 reads the cached logits too; its memory banks and embeddings are as trained
    _assert_same_run(crd_runs["plain"], crd_runs["cached"])
    manifest = json.loads((crd_runs["cache"] / "manifest.json").read_text())
    assert manifest["outputs"] == ["logits", "pooled"] and manifest["pooled_dim"] == 64


def test_rkd_reads_the_pooled_cache(crd_runs, cifar100_tiny, tmp_path, monkeypatch, capsys):
    attached = _forbid_the_teacher_when_cached(monkeypatch)
    plain = run_student("rkd", "resnet8", cifar100_tiny, tmp_path / "a", *ONE_EPOCH,
                        teacher=crd_runs["teacher"])
    cached = run_student("rkd", "resnet8", cifar100_tiny, tmp_path / "b", *ONE_EPOCH,
                         "--teacher_cache", str(crd_runs["cache"]), teacher=crd_runs["teacher"])
    assert "computing" not in capsys.readouterr().out and attached == [("logits", "pooled")]
    _assert_same_run(plain, cached)


def test_a_logits_only_cache_serves_kd_and_refuses_crd(crd_runs, cifar100_tiny, tmp_path,
                                                        capsys):
    folder = tmp_path / "logits_only"  # crd's cache without its pooled feature, in format 1
    folder.mkdir()
    for name in ("logits.bin", "progress.bin"):
        (folder / name).write_bytes((crd_runs["cache"] / name).read_bytes())
    manifest = json.loads((crd_runs["cache"] / "manifest.json").read_text())
    manifest = {k: v for k, v in manifest.items() if k not in tc.HELD}
    (folder / "manifest.json").write_text(json.dumps({**manifest, "format": 1, "kind": "logits"}))
    run_student("kd", "resnet8", cifar100_tiny, tmp_path / "kd", *ONE_EPOCH,
                "--teacher_cache", str(folder), teacher=crd_runs["teacher"])
    assert "computing" not in capsys.readouterr().out
    line = one_line_user_error(capsys, "crd", "resnet8", cifar100_tiny, tmp_path / "crd",
                               *ONE_EPOCH, *CRD_FLAGS, "--teacher_cache", str(folder),
                               teacher=crd_runs["teacher"])
    assert "holds the teacher's logits only and this run reads its pooled feature too" in line
    assert "give another folder, or delete it to rebuild" in line
    assert not (tmp_path / "crd").exists()


def test_resume_with_a_pooled_cache_is_exact(crd_runs, cifar100_tiny, tmp_path):
    def run(folder, *flags):
        return run_student("crd", "resnet8", cifar100_tiny, tmp_path / folder, "--deterministic",
                           *CRD_FLAGS, "--teacher_cache", str(crd_runs["cache"]), *flags,
                           teacher=crd_runs["teacher"])
    assert_resume_is_exact(run)

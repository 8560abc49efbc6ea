"""FKD soft labels (helper/fkd_labels.py, dataset/fkd.py) on real CIFAR-10 JPEGs: the crops
against the standard folder transform, the stored outputs against the teacher on the replayed
crops, the top-k rebuild and float16 by hand, real runs whose loss terms are the stored
labels', an interrupted build resumed, --resume, and each refusal."""
import math
import shutil

import numpy as np
import pytest
import torch

import train_student
from conftest import SHARED_DATA
from dataset.fkd import FKDLoader, crop_seed, draw_crops, replay
from dataset.folder import build_folder_loaders, extract_image_archive
from dataset.imagenet_transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform
from distillers import base
from helper import fkd_labels as fl
from helper.core.errors import UserError
from helpers import assert_resume_is_exact, kd_by_hand, save_teacher
from models import create_model

ARCHIVE = SHARED_DATA / "cifar10-jpeg.tar.gz"
CLASSES = ("airplane", "automobile", "bird", "cat")
SIZE, EPOCHS, CROPS = 32, 2, 2


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """4 classes x 4 real CIFAR-10 JPEGs in train/ and test/ (16 images each)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"{ARCHIVE} not found")
    return extract_image_archive(ARCHIVE, tmp_path_factory.mktemp("jpegs"), per_class=4,
                                 classes=CLASSES, splits=("train", "test"))


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_teacher("resnet8", tmp_path_factory.mktemp("t") / "resnet8.pth", num_classes=4,
                        input_size=(3, SIZE, SIZE))


def build_store(jpegs, teacher, out, *extra, log=lambda *a: None):
    return fl.main(["--path_t", str(teacher), "--dataset", "folder", "--data_folder", str(jpegs),
                    "--epochs", str(EPOCHS), "--crops", str(CROPS), "--input_size", str(SIZE),
                    "--num_workers", "0", "--batch_size", "8", "--chunk", "5", "--out", str(out),
                    *extra], log=log)


@pytest.fixture(scope="module")
def full(jpegs, teacher, tmp_path_factory):
    return build_store(jpegs, teacher, tmp_path_factory.mktemp("full") / "store", "--topk", "0")


def teacher_model(path):
    model = create_model("resnet8", 4)
    model.load_state_dict(torch.load(path, weights_only=True)["model"])
    return model.eval()


def fkd_loader(jpegs, store, batch_size=8, seed=3, soft_ce=False, num_workers=0):
    train, _, _ = build_folder_loaders("folder", jpegs, batch_size, "cpu", seed=seed,
                                       num_workers=num_workers)
    return FKDLoader(train, fl.SoftLabelStore(store.folder, store.manifest), soft_ce=soft_ce)


def test_crops_are_the_standard_transforms_draws(jpegs, full):
    train, _, _ = build_folder_loaders("folder", jpegs, 8, "cpu", num_workers=0)
    folder, standard = train.dataset, train_transform(SIZE)
    for e in range(EPOCHS):
        for i in (0, 7, 15):
            image = folder.loader(folder.samples[i][0])
            boxes, flips = full.crops_of(e, i)
            assert torch.equal(boxes, draw_crops(image, CROPS, 12345, e, i)[0])
            assert boxes.shape == (CROPS, 4) and set(flips.tolist()) <= {0, 1}
            top, left, h, w = boxes.tolist()[0]
            assert 0 <= top and top + h <= image.size[1] and 0 <= left and left + w <= image.size[0]
            with torch.random.fork_rng(devices=[]):  # crop 0: the first draws of that seed
                torch.manual_seed(crop_seed(12345, e, i))
                assert torch.equal(replay(image, boxes, flips, SIZE)[0], standard(image))
    assert not torch.equal(full.crops_of(0, 0)[0], full.crops_of(1, 0)[0])


def test_stored_logits_are_the_teachers_on_the_replayed_crops(jpegs, teacher, full):
    model, loader = teacher_model(teacher), fkd_loader(jpegs, full)
    assert len(loader) == 4 and loader.num_samples == 32
    for epoch in (1, 2):
        loader.set_epoch(epoch)
        seen = []
        for batch in loader:
            assert batch["images"].shape == (8, 3, SIZE, SIZE)
            index = batch["index"]
            assert torch.equal(index[:4], index[4:])  # each image's 2 crops, crop-major
            with torch.no_grad():
                again = model(batch["images"])
            torch.testing.assert_close(batch["teacher_logits"], again, rtol=0, atol=1e-5)
            seen += index[:4].tolist()
        assert sorted(seen) == list(range(16))
    loader.set_epoch(3)  # beyond the 2 stored epochs: epoch 1's crops again, in a new order
    assert loader.sampler.slot == 0 and full.slot_of(5) == 0 and full.slot_of(2) == 1
    third = list(loader)
    loader.set_epoch(1)
    first = list(loader)
    assert not torch.equal(first[0]["index"], third[0]["index"])
    a, c = by_crop(first), by_crop(third)
    assert a.keys() == c.keys() and all(torch.equal(a[k][0], c[k][0]) for k in a)
    workers = fkd_loader(jpegs, full, num_workers=1)  # the store opens again in the worker
    workers.set_epoch(1)
    for x, y in zip(first, workers):
        assert all(torch.equal(x[k], y[k]) for k in x)


def by_crop(batches):
    """``{(image, crop): (its image tensor, its teacher logits)}`` over an epoch's batches of
    4 images x 2 crops (crop-major)."""
    return {(i, n // 4): (b["images"][n], b["teacher_logits"][n])
            for b in batches for n, i in enumerate(b["index"].tolist())}


def by_hand_topk(logits, k):
    """FKD's marginal smoothing of softmax(logits) in float64 loops: log-probabilities."""
    out = []
    for row in logits.double().tolist():
        z = sum(math.exp(v) for v in row)
        p = [math.exp(v) / z for v in row]
        top = sorted(range(len(p)), key=lambda c: -p[c])[:k]
        rest = (1 - sum(p[c] for c in top)) / (len(p) - k)
        out.append([math.log(p[c] if c in top else rest) for c in range(len(p))])
    return torch.tensor(out, dtype=torch.float64)


def test_topk_store_and_float16(jpegs, teacher, full, tmp_path):
    top2 = build_store(jpegs, teacher, tmp_path / "top2", "--topk", "2")
    half = build_store(jpegs, teacher, tmp_path / "half", "--topk", "0", "--dtype", "float16")
    assert (tmp_path / "top2" / "classes.bin").stat().st_size == 2 * 16 * 2 * 2 * 2  # int16
    index, epoch = torch.arange(16), torch.ones(16, dtype=torch.int64)
    exact = full.teacher_logits(epoch, index)                       # (16, K, 4)
    rebuilt = top2.teacher_logits(epoch, index)
    want = by_hand_topk(exact.reshape(-1, 4), 2).reshape(16, CROPS, 4)
    torch.testing.assert_close(rebuilt.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(rebuilt.exp().sum(-1), torch.ones(16, CROPS))
    assert torch.equal(top2.crops_of(1, 5)[0], full.crops_of(1, 5)[0])
    h = half.teacher_logits(epoch, index)
    assert ((h - exact).abs() <= exact.abs() * 2 ** -11 + 1e-7).all()
    s = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
    move = abs(kd_by_hand(s.tolist(), h.reshape(32, 4).tolist(), 4)
               - kd_by_hand(s.tolist(), exact.reshape(32, 4).tolist(), 4))
    assert move < 1e-4


def test_rebuild_by_hand():
    values = torch.tensor([[0.7, 0.2], [1.0, 0.0]])
    classes = torch.tensor([[2, 0], [1, 3]])
    got = fl.rebuild_logits(values, classes, 5).exp()
    want = torch.tensor([[0.2, 0.1 / 3, 0.7, 0.1 / 3, 0.1 / 3], [1e-12, 1.0, 1e-12, 1e-12, 1e-12]])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)


def run(jpegs, teacher, save, *extra, distill="kd"):
    """One epoch of train_student.main on the JPEG folder (``teacher`` None: no --path_t)."""
    path_t = [] if teacher is None else ["--path_t", str(teacher)]
    train_student.main(["--distill", distill, "--model_s", "resnet8", *path_t,
                        "--dataset", "folder", "--data_folder", str(jpegs), "--input_size",
                        str(SIZE), "--num_workers", "0", "--save_folder", str(save),
                        "--epochs", "1", "--batch_size", "8", "--print_freq", "1000", *extra])
    return next((save / "students").iterdir())


@pytest.fixture
def recorded(monkeypatch):
    """Every forward_train's batch, student logits and loss terms (detached)."""
    calls, original = [], base.Distiller.forward_train

    def record(self, images, targets, **batch):
        kept = {k: v.detach().clone() for k, v in batch.items()}
        logits, losses = original(self, images, targets, **batch)
        calls.append((kept, logits.detach(), {k: v.item() for k, v in losses.items()}))
        return logits, losses
    monkeypatch.setattr(base.Distiller, "forward_train", record)
    return calls


def stored_logits_from_files(store, slot, index, crop):
    arr = np.fromfile(store.folder / "logits.bin", dtype=np.float32).reshape(EPOCHS, 16, CROPS, 4)
    return torch.from_numpy(arr[slot, index.numpy(), crop.numpy()].copy())


def test_runs_take_their_terms_from_the_store(jpegs, teacher, full, tmp_path, recorded):
    folder = run(jpegs, teacher, tmp_path / "kd", "--fkd", str(full.folder))
    assert (folder / "last.pth").is_file() and "resnet8_folder_kd" in folder.name
    assert len(recorded) == 4
    for batch, logits, losses in recorded:
        crop = torch.arange(CROPS).repeat_interleave(4)
        t = stored_logits_from_files(full, 0, batch["index"], crop)
        assert torch.equal(batch["teacher_logits"], t)
        # float32 KL of near-equal distributions: each of its terms (~1.4) rounded to 1e-7,
        # times T^2 = 16, against a value of ~0.014
        assert losses["kd"] == pytest.approx(kd_by_hand(logits.tolist(), t.tolist(), 4),
                                             rel=1e-5, abs=1e-5)
    recorded.clear()
    # FKD's own loss: the soft cross-entropy alone, with no teacher file at all
    run(jpegs, None, tmp_path / "sce", "--fkd", str(full.folder), "--fkd_soft_ce",
        distill="vanilla")
    assert len(recorded) == 4
    for batch, logits, losses in recorded:
        assert set(losses) == {"cls"}
        p, s = batch["teacher_logits"].softmax(1).double(), logits.double().log_softmax(1)
        assert losses["cls"] == pytest.approx(-(p * s).sum(1).mean().item(), rel=1e-5)


def test_resume_is_exact(jpegs, teacher, full, tmp_path):
    def go(name, *flags):
        return run(jpegs, teacher, tmp_path / name, "--fkd", str(full.folder), "--deterministic",
                   *flags)
    assert_resume_is_exact(go)


def stopping_teacher(model, at_call):
    """``model``, stopped by a Ctrl-C at its ``at_call``-th batch."""
    calls = {"n": 0}

    def forward(x):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise KeyboardInterrupt
        return model(x)
    return forward


def test_interrupted_build_continues(jpegs, teacher, full, tmp_path, capsys):
    """Ctrl-C in the second chunk keeps the first; a run refuses the store until the same
    command completes it, byte for byte as an uninterrupted build."""
    folder, images = tmp_path / "store", fkd_folder(jpegs)
    wanted = fl.manifest_for(teacher_file=teacher, teacher_model="resnet8", num_classes=4,
                             dataset="folder", folder=images, input_size=SIZE, seed=12345,
                             epochs=EPOCHS, crops=CROPS, topk=0, dtype="float32", chunk=5,
                             mean=IMAGENET_MEAN, std=IMAGENET_STD)
    store = fl.open_for_build(folder, wanted)
    with pytest.raises(KeyboardInterrupt, match="7 of 8 chunks left; run the same command"):
        fl.build(store, stopping_teacher(teacher_model(teacher), 2), images, device="cpu",
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size=10, num_workers=0,
                 log=lambda *a: None)  # batches of 5 images: one chunk each
    assert store.done().tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]
    assert "incomplete (7 of 8 chunks missing)" in one_line(
        capsys, run, jpegs, teacher, tmp_path / "s", "--fkd", str(folder))
    assert not (tmp_path / "s").exists()
    lines = []
    build_store(jpegs, teacher, folder, "--topk", "0", log=lines.append)
    assert "1 of 8 chunks done before" in lines[0] and "27 image-epochs" in lines[0]
    assert store.done().all()
    for name in ("boxes", "flips", "logits"):
        a, b = ((f / f"{name}.bin").read_bytes() for f in (folder, full.folder))
        assert a == b, name
    build_store(jpegs, teacher, folder, "--topk", "0", log=lines.append)
    assert lines[-1].endswith("is complete already")


def fkd_folder(jpegs):
    from dataset.folder import scan_folder_dataset
    return scan_folder_dataset("folder", jpegs)[0]


def one_line(capsys, fn, *args, code=2, **kwargs):
    with pytest.raises(SystemExit) as e:
        fn(*args, **kwargs)
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    return err[0]


def test_mismatched_stores_and_bad_flags_are_refused(jpegs, teacher, full, tmp_path, capsys):
    other = save_teacher("resnet8", tmp_path / "other.pth", num_classes=4, batches=2,
                         input_size=(3, SIZE, SIZE))
    fewer = tmp_path / "fewer"
    shutil.copytree(jpegs, fewer)
    next((fewer / "train" / "cat").iterdir()).unlink()
    store = ["--fkd", str(full.folder)]
    save = tmp_path / "save"
    cases = [((jpegs, other, save, *store), "another file than its teacher"),
             ((fewer, teacher, save, *store), "train_size: 16, this run: 15"),
             ((jpegs, teacher, save, *store, "--input_size", "24"), "input_size: 32, this run: 24"),
             ((jpegs, teacher, save, "--fkd", str(tmp_path)), "holds no manifest.json"),
             ((jpegs, teacher, save, *store, "--batch_size", "7"), "not a multiple of the 2 crops")]
    for args, message in cases:
        assert message in one_line(capsys, run, *args)
    line = one_line(capsys, run, jpegs, teacher, save, *store, distill="at")
    assert "reads more of the teacher" in line and "only its logits (dist, dkd, kd," in line
    assert not save.exists()
    for flags, message in ((("--dali", "cpu"), "drop --dali or --fkd"),
                           (("--mixup", "0.2"), "drop --mixup or --fkd"),
                           (("--teacher_cache", str(tmp_path)), "drop --teacher_cache or --fkd")):
        assert message in one_line(capsys, run, jpegs, teacher, save, *store, *flags)
    assert "needs --fkd DIR" in one_line(capsys, run, jpegs, teacher, save, "--fkd_soft_ce")
    assert "--fkd is empty" in one_line(capsys, run, jpegs, teacher, save, "--fkd", "")
    assert "give the one --path_t it was built from" in one_line(
        capsys, run, jpegs, teacher, save, *store, "--path_t", str(teacher), str(other))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{")
    assert "cannot read manifest.json" in one_line(capsys, run, jpegs, teacher, save,
                                                   "--fkd", str(broken))
    assert not save.exists()
    assert "--topk 0 for the full logits" in one_line(
        capsys, build_store, jpegs, teacher, tmp_path / "k4", "--topk", "4")
    assert "holds another store (crops: 2, this build: 3)" in one_line(
        capsys, build_store, jpegs, teacher, full.folder, "--topk", "0", "--crops", "3")
    with pytest.raises(UserError, match="give a new or empty folder"):
        fl.open_for_build(tmp_path / "fewer", {})

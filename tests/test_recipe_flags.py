"""The flags that reproduce the table scripts' sources (issue 28): reflect padding, the CIFAR
normalisation presets, evaluation on full batches only, the teacher in training mode; and the
method-level fidelity switches (FSP's scale in hankyul2/KnowledgeDistillation, KD-SVD's signs).
Each shows the behaviour the flag gives, against values written down from the sources."""
import pickle
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dataset import AugmentConfig, build_loaders, cifar
from dataset.tensor_loader import RandomCropFlip, crop_flip
from distillers import MethodConfig, RunInfo
from distillers.fsp import fsp_loss
from distillers.kdsvd import kdsvd_loss
from helper.run.options import parse_student_args, parse_teacher_args
from helpers import make_distiller, run_student
from models import create_model


def write_cifar10(root, n_train=50, n_test=10000, seed=0):
    """A CIFAR-10 in torchvision's pickle layout (``cifar-10-batches-py``), random pixels."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    parts = [("data_batch_%d" % i, n_train // 5) for i in range(1, 6)] + [("test_batch", n_test)]
    for name, n in parts:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": rng.integers(0, 10, size=n).tolist()}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    return Path(root)


@pytest.fixture(scope="module")
def cifar10_full_test(tmp_path_factory):
    """CIFAR-10's layout with its 10,000 test images (random pixels) and 50 training ones."""
    return write_cifar10(tmp_path_factory.mktemp("cifar10_full_test"))


# ---- --cifar_normalization ----------------------------------------------------------------
# hankyul2/KnowledgeDistillation src/dataset.py lines 27-28 and 31-32 (22f39c5); ReviewKD
# CIFAR-100/train.py lines 96-97 (49015fb); RepDistiller's CIFAR-100 constants (the default).
SOURCES = {
    ("per_dataset", "cifar10"): ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ("per_dataset", "cifar100"): ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    ("reviewkd", "cifar100"): ((125.3 / 255, 123.0 / 255, 113.9 / 255),
                               (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    ("reviewkd", "cifar10"): ((125.3 / 255, 123.0 / 255, 113.9 / 255),
                              (63.0 / 255, 62.1 / 255, 66.7 / 255)),
    ("repdistiller", "cifar10"): ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    ("repdistiller", "cifar100"): ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


@pytest.mark.parametrize("preset, name", sorted(SOURCES))
def test_normalisation_constants_are_the_sources(preset, name, cifar100_micro, cifar10_full_test):
    data = cifar10_full_test if name == "cifar10" else cifar100_micro
    train, val, _ = build_loaders(name, data, 10, "cpu",
                                  augment=AugmentConfig(cifar_normalization=preset))
    mean, std = SOURCES[(preset, name)]
    for loader in (train, val):
        assert loader.mean.flatten().tolist() == pytest.approx(mean, abs=1e-7)
        assert loader.std.flatten().tolist() == pytest.approx(std, abs=1e-7)
    # the images are (x / 255 - mean) / std with those constants
    raw = val.images[:10].float() / 255
    got = next(iter(val))["images"]
    want = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(got, want, atol=1e-5)


def test_default_normalisation_is_unchanged():
    assert cifar.normalization("cifar10") == (cifar.MEAN, cifar.STD)
    assert parse_teacher_args([]).args.cifar_normalization == "repdistiller"


# ---- --padding_mode reflect ----------------------------------------------------------------
def test_reflect_padding_gives_the_mirrored_pixels():
    """torchvision's Pad(4, padding_mode='reflect') + a crop (hankyul2's src/dataset.py line 35)
    for given draws; the pixels outside the image are its reflection, not zeros."""
    from torchvision.transforms.v2 import functional as TF
    torch.manual_seed(0)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    params = torch.tensor([[0, 0, 0], [8, 8, 1], [2, 5, 0]])
    out = crop_flip(images, 4, params, "reflect")
    padded = TF.pad(images, [4, 4, 4, 4], padding_mode="reflect")
    for i, (r, c, flip) in enumerate(params.tolist()):
        want = padded[i, :, r:r + 32, c:c + 32]
        assert torch.equal(out[i], want.flip(-1) if flip else want)
    # the top-left corner of the first crop: pixel (4 - y, 4 - x) of the image, by hand
    assert torch.equal(out[0, :, 0, 0], images[0, :, 4, 4])
    assert torch.equal(out[0, :, 3, 1], images[0, :, 1, 3])
    # zeros there with the default padding
    assert (crop_flip(images, 4, params)[0, :, :4, :4] == 0).all()


def test_reflect_padding_through_the_loader(cifar100_micro):
    augment = parse_teacher_args(["--padding_mode", "reflect"]).augment
    assert augment.padding_mode == "reflect"
    train, _, _ = build_loaders("cifar100", cifar100_micro, 10, "cpu", augment=augment)
    assert train.transform.padding_mode == "reflect"
    train.set_epoch(3)
    indices, params = train.epoch_plan()
    batch = next(iter(train))["images"]
    want = crop_flip(train.images[indices], 4, params, "reflect")
    assert torch.allclose(batch, (want.float() / 255 - train.mean) / train.std)
    # the draws are those of the default padding: only the pixels outside the image differ
    plain, _, _ = build_loaders("cifar100", cifar100_micro, 10, "cpu")
    plain.set_epoch(3)
    assert torch.equal(plain.epoch_plan()[1], params)
    assert repr(RandomCropFlip(4, True)) == "RandomCropFlip(padding=4, flip=True)"


# ---- --eval_drop_last ------------------------------------------------------------------------
def test_eval_drop_last_counts_9984_of_10000(cifar10_full_test):
    """hankyul2's test DataLoader(batch 128, drop_last=True) (src/dataset.py line 8) scores 78
    full batches: its published FSP figure 91.95713 is 9181 / 9984."""
    assert round(100 * 9181 / 9984, 5) == 91.95713
    _, val, info = build_loaders("cifar10", cifar10_full_test, 128, "cpu", eval_drop_last=True)
    sizes = [len(b["targets"]) for b in val]
    assert sizes == [128] * 78 and sum(sizes) == 9984 == info["val_size"]
    assert torch.equal(torch.cat([b["index"] for b in val]), torch.arange(9984))
    # two processes of 64 drop the same images: the first 9984, each counted once
    shards = [build_loaders("cifar10", cifar10_full_test, 64, "cpu", rank=r, world_size=2,
                            eval_drop_last=True)[1] for r in (0, 1)]
    seen = torch.cat([b["index"] for loader in shards for b in loader])
    assert sorted(seen.tolist()) == list(range(9984))
    # the default evaluates every image
    _, val, info = build_loaders("cifar10", cifar10_full_test, 128, "cpu")
    assert sum(len(b["targets"]) for b in val) == 10000 == info["val_size"]


# ---- flags refused where they cannot apply -------------------------------------------------
@pytest.mark.parametrize("argv, words", [
    (["--dataset", "mnist", "--padding_mode", "reflect"], "--padding_mode"),
    (["--dataset", "mnist", "--cifar_normalization", "per_dataset"], "--cifar_normalization"),
    (["--dataset", "imagenet", "--eval_drop_last"], "--eval_drop_last"),
])
def test_data_flags_refused_elsewhere(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        parse_teacher_args(argv)
    assert e.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--teacher_train", "--teacher_cache", "c"],
                                  ["--padding_mode", "reflect", "--teacher_cache", "c"]])
def test_teacher_cache_refuses_what_it_cannot_hold(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse_student_args(["--distill", "kd", *argv])
    assert e.value.code == 2 and "--teacher_cache" in capsys.readouterr().err


# ---- --teacher_train -------------------------------------------------------------------------
@pytest.mark.parametrize("spelling", ["--teacher_train", "--teacher-train",
                                      "--reviewkd_teacher_train", "--reviewkd-teacher-train",
                                      "--ofd_teacher_train", "--ofd-teacher-train"])
def test_teacher_train_and_its_old_spellings(spelling):
    assert parse_student_args(["--distill", "kd", spelling]).args.teacher_train
    assert not parse_student_args(["--distill", "kd"]).args.teacher_train


def test_teacher_in_train_mode_uses_batch_statistics_and_never_learns():
    flags = Namespace(cls=1.0, div=1.0, beta=0.0, kd_T=4.0)
    _, teacher, d = make_distiller("kd", flags, student="resnet8", teacher="resnet14")
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    images, targets = torch.randn(8, 3, 32, 32), torch.randint(0, 100, (8,))
    d.train()
    assert not teacher.training and not d.teacher_train_mode  # the default: eval mode
    before = bn.running_mean.clone()
    d.forward_train(images, targets)
    assert torch.equal(bn.running_mean, before)  # running statistics

    _, teacher, d = make_distiller("kd", flags, student="resnet8", teacher="resnet14",
                                   teacher_train=True)  # RunInfo(teacher_train=True)
    bn = next(m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert torch.equal(bn.running_mean, before)  # the same fresh teacher (seed 0)
    d.train()
    assert teacher.training and d.teacher_train_mode
    seen = {}

    def keep(module, inputs, output):
        seen.setdefault("out", output.detach().clone())  # before the in-place ReLU
    hook = bn.register_forward_hook(keep)
    _, losses = d.forward_train(images, targets)
    hook.remove()
    x = seen["out"]
    # normalised with the batch's statistics (mean 0, var 1 per channel before the affine)
    z = (x - bn.bias.view(1, -1, 1, 1)) / bn.weight.view(1, -1, 1, 1)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(z.shape[1]), atol=1e-4)
    assert not torch.equal(bn.running_mean, before)  # and they update the running ones
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    d.eval()
    assert not teacher.training  # evaluation: eval mode either way


def test_teacher_train_reaches_the_run(cifar100_micro, tmp_path, teacher_ckpt, monkeypatch):
    from distillers.base import Distiller
    modes = []
    original = Distiller.forward_train

    def record(self, *args, **kw):
        modes.append(self.teacher.training)
        return original(self, *args, **kw)

    monkeypatch.setattr(Distiller, "forward_train", record)
    run_student("kd", "resnet8", cifar100_micro, tmp_path / "a", "--teacher_train",
                teacher=teacher_ckpt("resnet14"))
    assert modes and all(modes)
    modes.clear()
    run_student("kd", "resnet8", cifar100_micro, tmp_path / "b", teacher=teacher_ckpt("resnet14"))
    assert modes and not any(modes)


def test_teacher_train_arrives_with_the_run():
    """``RunInfo(teacher_train=True)`` (``--teacher_train``): the teacher in training mode after
    ``train()``, in eval mode after ``eval()``, and never a gradient."""
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("resnet14", 10)
    d = MethodConfig.create("kd").build(student, teacher, RunInfo(epochs=1, teacher_train=True))
    assert d.run_info.teacher_train and d.teacher_train_mode
    assert not teacher.training  # built in eval mode; train() switches it
    d.train()
    assert teacher.training and student.training
    _, losses = d.forward_train(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    assert set(losses) == {"cls", "kd"}
    sum(losses.values()).backward()
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())
    d.eval()
    assert not teacher.training
    d.train()
    assert teacher.training  # every training epoch
    plain = MethodConfig.create("kd").build(student, teacher, RunInfo(epochs=1))
    assert not plain.run_info.teacher_train and not plain.teacher_train_mode
    plain.train()
    assert not teacher.training


# ---- FSP at hankyul2/KnowledgeDistillation's scale ------------------------------------------
def _hankyul2_fsp(feats_s, feats_t, soft_factor=3.0, kd_lambda=1.0):
    """src/fsp.py at d0ed979 written out: pairs (stem, stage 1), (stage 1, stage 2), (stage 2,
    stage 3) (src/train_fsp.py line 32), the input map average-pooled to the output's size, the
    (C_in, C_out) Gram over H*W (line 25), mean over the pairs of MSE / soft_factor * kd_lambda
    (line 15)."""
    def grams(feats):
        out = []
        for f_in, f_out in zip(feats[:-1], feats[1:]):
            if f_in.shape[2] > f_out.shape[2]:
                f_in = F.adaptive_avg_pool2d(f_in, f_out.shape[2:])
            hw = f_in.shape[2] * f_in.shape[3]
            out.append(torch.einsum("bchw,bdhw->bcd", f_in, f_out) / hw)
        return out
    losses = [F.mse_loss(g_s, g_t) / soft_factor * kd_lambda
              for g_s, g_t in zip(grams(feats_s), grams(feats_t))]
    return torch.stack(losses).mean()


def test_fsp_beta_of_the_kd_zoo_script_is_the_sources_scale():
    torch.manual_seed(0)
    shapes = [(16, 32, 32), (16, 32, 32), (32, 16, 16), (64, 8, 8)]  # stem, stages of resnet20
    feats_s = [torch.randn(4, *s) for s in shapes]
    feats_t = [torch.randn(4, *s) for s in shapes]
    ours = fsp_loss(feats_s, feats_t)
    assert torch.allclose(ours / 9, _hankyul2_fsp(feats_s, feats_t), rtol=1e-5)
    config = parse_student_args(["--distill", "fsp", "-b", "0.1111111111111111", "--fsp_one_stage"])
    assert config.method.weights.beta == pytest.approx(1 / 9)


# ---- KD-SVD's singular-vector signs ---------------------------------------------------------
def _flip_svd(monkeypatch):
    """torch.linalg.svd with every singular vector's sign flipped (another valid SVD, as
    another LAPACK or device may return)."""
    svd = torch.linalg.svd

    def flipped(x, *args, **kw):
        u, s, vh = svd(x, *args, **kw)
        return u * -1, s, vh * -1
    monkeypatch.setattr(torch.linalg, "svd", flipped)


def test_kdsvd_signs(monkeypatch):
    """Default: the loss is a function of the maps alone (the same whatever signs the SVD
    returns). --kdsvd_signs lapack: the SVD's own signs, as RepDistiller's and mdistiller's
    torch.svd; with a stage's teacher vector flipped relative to the previous stage's, the loss
    changes."""
    torch.manual_seed(0)
    shapes = [(16, 16, 16), (32, 8, 8), (64, 4, 4)]
    feats_s = [torch.randn(4, *s) for s in shapes]
    feats_t = [torch.randn(4, *s) for s in shapes]
    fixed = kdsvd_loss(feats_s, feats_t)
    lapack = kdsvd_loss(feats_s, feats_t, signs="lapack")
    assert not torch.allclose(fixed, lapack)  # zero-mean maps: the signs matter
    # LAPACK's signs in the reference: every vector as the SVD returns it, the student's
    # aligned to the teacher's; flipping all vectors of one network keeps the RBF relations
    _flip_svd(monkeypatch)
    assert torch.allclose(kdsvd_loss(feats_s, feats_t), fixed)
    flipped_all = kdsvd_loss(feats_s, feats_t, signs="lapack")
    assert torch.allclose(flipped_all, lapack, rtol=1e-5)
    monkeypatch.undo()

    # flip only the second stage's vectors: the default does not change, lapack does
    svd, calls = torch.linalg.svd, []

    def second_flipped(x, *args, **kw):
        u, s, vh = svd(x, *args, **kw)
        calls.append(1)
        stage = (len(calls) - 1) // 2  # teacher then student, per stage
        return (u * -1, s, vh * -1) if stage == 1 else (u, s, vh)
    monkeypatch.setattr(torch.linalg, "svd", second_flipped)
    assert torch.allclose(kdsvd_loss(feats_s, feats_t), fixed, rtol=1e-5)
    calls.clear()
    assert not torch.allclose(kdsvd_loss(feats_s, feats_t, signs="lapack"), lapack)


def test_kdsvd_signs_flag():
    o = parse_student_args(["--distill", "kdsvd", "--kdsvd_signs", "lapack"]).method.options
    assert o.kdsvd_signs == "lapack"
    assert parse_student_args(["--distill", "kdsvd"]).method.options.kdsvd_signs == "largest_positive"

"""MLKD: its terms against a hand computation (both mask modes, with and without the strong
view), the confidence masks, the strong view (operations against PIL, the same samples,
reproducible per epoch), gradients, one real epoch, exact resume, the user errors."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

import dataset.strong_view as sv
from dataset.tensor_loader import RandomCropFlip, TensorLoader
from distillers.mlkd import confidence_masks, mlkd_terms
from helper.core.errors import UserError
from helpers import (PAIRS, assert_gradients, assert_no_extras, assert_resume_is_exact,
                     make_distiller, one_epoch, one_line_user_error, run_student)

TEMPS = (4.0, 3.0, 5.0, 2.0, 6.0)


# ---- the loss, by hand ---------------------------------------------------------------------
def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def _kd(rs, rt, T):
    ps, pt = _softmax(rs, T), _softmax(rt, T)
    return sum(q * math.log(q / p) for p, q in zip(ps, pt)) * T * T


def _gram_gap(s, t, T, by_class):
    """(G_t - G_s)^2 / size over the class (C x C) or batch (B x B) Gram matrix."""
    ps, pt = [_softmax(r, T) for r in s], [_softmax(r, T) for r in t]
    if by_class:  # transpose: rows are classes
        ps, pt = [list(c) for c in zip(*ps)], [list(c) for c in zip(*pt)]
    n = len(ps)

    def dot(p, i, j):
        return sum(a * b for a, b in zip(p[i], p[j]))
    return [[(dot(pt, i, j) - dot(ps, i, j)) ** 2 / n for j in range(n)] for i in range(n)]


def _mask_reduce(values, mask, how):
    """The code's ``(reduced * mask).mean()`` (scale) or ``(values * mask).mean()`` (sample);
    ``values`` per sample or a matrix whose columns the mask picks."""
    if isinstance(values[0], list):
        if how == "scale":
            return sum(map(sum, values)) * sum(mask) / len(mask)
        return sum(v * m for row in values for v, m in zip(row, mask)) / (len(values) * len(mask))
    if how == "scale":
        return sum(values) / len(values) * sum(mask) / len(mask)
    return sum(v * m for v, m in zip(values, mask)) / len(values)


def _mlkd_by_hand(s, t, how, s_strong=None, t_strong=None, strong_all=False):
    p_t = [_softmax(r, 1.0) for r in t]
    conf = [max(r) for r in p_t]
    per_class = [sum(c) for c in zip(*p_t)]
    mask = [float(c <= np.percentile(conf, 50)) for c in conf]  # the code's numpy medians
    cmask = [float(c <= np.percentile(per_class, 50)) for c in per_class]
    kd = cc = bc = 0.0
    for i, T in enumerate(TEMPS):
        kd += _mask_reduce([_kd(a, b, T) for a, b in zip(s, t)], mask, how)
        if s_strong is not None:
            a, b = (s_strong, t_strong) if strong_all or i < 3 else (s, t)
            kd += sum(_kd(x, y, T) for x, y in zip(a, b)) / len(a)
        cc += _mask_reduce(_gram_gap(s, t, T, True), cmask, how)
        bc += _mask_reduce(_gram_gap(s, t, T, False), mask, how)
    return kd, cc, bc


def _logits(seed, b=6, c=5):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, c)) * 3


@pytest.mark.parametrize("how", ["scale", "sample"])
@pytest.mark.parametrize("strong,strong_all", [(False, False), (True, False), (True, True)])
def test_terms_match_hand_computation(how, strong, strong_all):
    s, t, ss, ts = _logits(0), _logits(1), _logits(2), _logits(3)
    args = (torch.tensor(ss), torch.tensor(ts)) if strong else (None, None)
    got = mlkd_terms(torch.tensor(s), torch.tensor(t), TEMPS, how, *args, strong_all)
    expected = _mlkd_by_hand(s, t, how, *((ss, ts) if strong else (None, None)), strong_all)
    for g, e in zip(got, expected):
        assert abs(g.item() - e) < 1e-9 * max(1.0, abs(e))  # float64: a few ulps


def _zscore(rows):
    """Each row minus its mean, over (1e-7 + its sample standard deviation)."""
    out = []
    for r in rows:
        m = sum(r) / len(r)
        sd = math.sqrt(sum((v - m) ** 2 for v in r) / (len(r) - 1))
        out.append([(v - m) / (1e-7 + sd) for v in r])
    return out


def test_logit_standardization_applies_to_the_kd_terms_only():
    """As logit-standardization-KD's MLKD: z-scored logits in the KD terms; the masks (from
    the teacher's raw probabilities) and the class and batch levels as without."""
    s, t, ss, ts = (_logits(i) for i in range(4))
    z = lambda x: (x - x.mean(1, keepdim=True)) / (1e-7 + x.std(1, keepdim=True))  # noqa: E731
    kd, cc, bc = mlkd_terms(*(torch.tensor(a) for a in (s, t)), TEMPS, "scale",
                            torch.tensor(ss), torch.tensor(ts),
                            standardize=lambda a, b: (z(a), z(b)))
    _, cc_plain, bc_plain = _mlkd_by_hand(s, t, "scale", ss, ts)
    conf = torch.softmax(torch.tensor(t), 1).max(1).values.numpy()  # from the raw teacher
    mask = [float(c <= np.percentile(conf, 50)) for c in conf]
    expected = 0.0
    zs, zt, zss, zts = (_zscore(a.tolist()) for a in (s, t, ss, ts))
    for i, T in enumerate(TEMPS):
        expected += _mask_reduce([_kd(a, b, T) for a, b in zip(zs, zt)], mask, "scale")
        a, b = (zss, zts) if i < 3 else (zs, zt)
        expected += sum(_kd(x, y, T) for x, y in zip(a, b)) / len(a)
    assert abs(kd.item() - expected) < 1e-9 * expected  # float64: a few ulps
    assert abs(cc.item() - cc_plain) < 1e-12 and abs(bc.item() - bc_plain) < 1e-12


def test_masks_keep_the_lower_half_by_median():
    t = torch.tensor(_logits(4, b=7, c=6))
    sample, per_class = confidence_masks(t)
    p = torch.softmax(t, 1).numpy()
    conf = p.max(1)
    assert sample.tolist() == list(conf <= np.percentile(conf, 50))
    assert per_class.tolist() == list(p.sum(0) <= np.percentile(p.sum(0), 50))
    assert sample.sum() == 4 and per_class.sum() == 3  # odd batch: the median itself is kept


# ---- the strong view ---------------------------------------------------------------------
def _image(seed=0):
    return torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def _pil(x):
    return Image.fromarray(x.permute(1, 2, 0).numpy())


def _back(p):
    return torch.from_numpy(np.array(p)).permute(2, 0, 1)


PIL_OPS = {  # the reference's PIL functions at magnitude v
    "autocontrast": lambda im, v: ImageOps.autocontrast(im),
    "brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "equalize": lambda im, v: ImageOps.equalize(im),
    "posterize": lambda im, v: ImageOps.posterize(im, max(1, int(v))),
    "rotate": lambda im, v: im.rotate(v),
    "sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "shear_x": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "shear_y": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "solarize": lambda im, v: ImageOps.solarize(im, v),
    "translate_x": lambda im, v: im.transform(im.size, Image.AFFINE,
                                              (1, 0, v * im.size[0], 0, 1, 0)),
    "translate_y": lambda im, v: im.transform(im.size, Image.AFFINE,
                                              (1, 0, 0, 0, 1, v * im.size[1])),
}


@pytest.mark.parametrize("name", [n for n, _, _ in sv.OPS if n != "identity"])
def test_operations_match_pil(name):
    """Each operation on a batch, every sample at its own magnitude in the reference's range,
    against the reference's PIL function image by image."""
    low, high = next((lo, hi) for n, lo, hi in sv.OPS if n == name)
    v = torch.linspace(low, high, 7, dtype=torch.float64)[1:-1]
    if name == "solarize":
        v = torch.tensor([0.0, 100.5, 255.0, 255.5, 256.0], dtype=torch.float64)
    x = torch.stack([_image(i) for i in range(len(v))])
    got = sv.apply_op(x, name, v)
    for img, out, m in zip(x, got, v.tolist()):
        ref = _back(PIL_OPS[name](_pil(img), m)).int()
        if name in ("color", "contrast", "sharpness"):  # float vs PIL's integer arithmetic
            assert (out.int() - ref).abs().max() <= 1
        else:
            assert torch.equal(out.int(), ref), m


def test_identity_changes_nothing():
    x = torch.stack([_image(2), _image(3)])
    assert torch.equal(sv.apply_op(x, "identity", torch.tensor([0.3, 0.9])), x)


def test_cutout_by_hand():
    x = torch.stack([_image(3), _image(4)])
    out = sv.cutout(x, torch.tensor([6.4, 0.0]), torch.tensor([10.0, 10.0]),
                    torch.tensor([30.0, 10.0]))
    expected = x.clone()  # x0 = int(6.8) = 6, y0 = int(26.8) = 26, both ends in, clipped at 31
    expected[0, :, 26:32, 6:13] = torch.tensor(sv.CUTOUT_FILL, dtype=torch.uint8).view(3, 1, 1)
    assert torch.equal(out, expected)  # a side of 0 changes nothing


def _loader(transform=None, n=40):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    return TensorLoader(images, torch.arange(n) % 10, 16, "cpu", (0.5, 0.4, 0.3), (0.2, 0.25, 0.3),
                        shuffle=True, transform=transform, seed=3)


class _NoRawImages:
    """A loader without raw images (as the folder loaders): batches and normalisation only."""

    def __init__(self, loader):
        self.inner, self.mean, self.std = loader, loader.mean, loader.std
        self.seed, self.rank = 3, 0

    def set_epoch(self, epoch):
        self.inner.set_epoch(epoch)

    def __len__(self):
        return len(self.inner)

    def __iter__(self):
        return iter(self.inner)


@pytest.mark.parametrize("raw", [True, False])
def test_strong_view_holds_the_same_samples(raw, monkeypatch):
    """Without operations, Cutout or a crop, the strong view is the weak view exactly: the
    same samples (from the raw images, or un-normalised from the weak view)."""
    monkeypatch.setattr(sv, "CUTOUT_MAX", 0.0)
    inner = _loader()
    loader = sv.StrongViewLoader(inner if raw else _NoRawImages(inner), num_ops=0)
    assert (loader.raw is not None) == raw
    loader.set_epoch(2)
    for batch in loader:
        assert torch.equal(batch["strong_images"], batch["images"])


def test_strong_view_is_reproducible_per_epoch_and_its_own_crop():
    loader = sv.add_strong_images(_loader(RandomCropFlip(4, flip=True)), num_ops=2)

    def epoch(e):
        loader.set_epoch(e)
        return [(b["images"], b["strong_images"]) for b in loader]
    first, again, other = epoch(1), epoch(1), epoch(2)
    assert len(first) == 3 and first[-1][1].shape == (8, 3, 32, 32)
    assert all(torch.equal(a[1], b[1]) for a, b in zip(first, again))
    assert not any(torch.equal(a[1], b[1]) for a, b in zip(first, other))
    assert not any(torch.equal(w, s) for w, s in first)


# ---- the distiller -------------------------------------------------------------------------
def _args(**kw):
    return SimpleNamespace(**kw)


def test_forward_terms_gradients_and_no_extras():
    student, teacher, d = make_distiller("mlkd", _args())
    assert (d.cls_weight, d.div_weight, d.beta, d.temps) == (0.1, 0.0, 0.9, TEMPS)
    assert d.batch_requests() == {"strong_images": {"num_ops": 2}}
    d.train()
    torch.manual_seed(1)
    x, xs, y = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32), torch.randint(0, 100, (6,))
    _, losses = d.forward_train(x, y, strong_images=xs)
    assert set(losses) == {"cls", "cls_strong", "mlkd_kd", "mlkd_cc", "mlkd_bc"}
    with torch.no_grad():  # the same train-mode forwards, in the same order
        s, ss = student(x), student(xs)
        kd, cc, bc = mlkd_terms(s, teacher(x), TEMPS, "scale", ss, teacher(xs))
        ce_strong = torch.nn.functional.cross_entropy(ss, y)
    for name, value in (("mlkd_kd", kd), ("mlkd_cc", cc), ("mlkd_bc", bc)):
        assert losses[name].item() == pytest.approx(0.9 * value.item(), rel=1e-5), name
    assert losses["cls_strong"].item() == pytest.approx(0.1 * ce_strong.item(), rel=1e-5)
    sum(losses.values()).backward()
    assert_gradients(student, teacher, every_student_param=True)
    assert_no_extras(d, student)


def test_label_smoothing_reaches_both_views_ce_terms():
    """--label_smoothing 0.1 (with the weights): the weak view's CE and the strong view's (on
    the hard labels) are F.cross_entropy(..., label_smoothing=0.1), as before MLKD called
    cls_loss."""
    student, teacher, d = make_distiller("mlkd", _args(label_smoothing=0.1))
    assert d.label_smoothing == 0.1
    d.train()
    torch.manual_seed(1)
    x, xs, y = torch.randn(6, 3, 32, 32), torch.randn(6, 3, 32, 32), torch.randint(0, 100, (6,))
    _, losses = d.forward_train(x, y, strong_images=xs)
    with torch.no_grad():  # the same train-mode forwards, in the same order
        s, ss = student(x), student(xs)
    ce = torch.nn.functional.cross_entropy
    assert losses["cls"].item() == pytest.approx(0.1 * ce(s, y, label_smoothing=0.1).item(),
                                                 rel=1e-5)
    assert losses["cls_strong"].item() == pytest.approx(
        0.1 * ce(ss, y, label_smoothing=0.1).item(), rel=1e-5)
    assert losses["cls_strong"].item() != pytest.approx(0.1 * ce(ss, y).item(), rel=1e-4)


def test_weak_only_needs_no_strong_view_and_mixed_labels_are_refused():
    _, _, d = make_distiller("mlkd", _args(mlkd_weak_only=True))
    assert d.batch_requests() == {}
    d.train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 100, (4,))
    _, losses = d.forward_train(x, y)
    assert set(losses) == {"cls", "mlkd_kd", "mlkd_cc", "mlkd_bc"}
    _, _, d = make_distiller("mlkd", _args())
    d.train()
    soft = torch.nn.functional.one_hot(y, 100).float()
    with pytest.raises(UserError, match="drop --mixup/--cutmix"):
        d.forward_train(x, y, strong_images=x, soft_targets=soft)


def test_one_epoch(cifar100_tiny, tmp_path, teacher_ckpt):
    teacher, student = PAIRS[0]
    _, summary = one_epoch("mlkd", teacher_ckpt(teacher), student, cifar100_tiny, tmp_path)
    args = summary["args"]
    assert (args["cls"], args["div"], args["beta"]) == (0.1, 0, 0.9)
    assert summary["parameters"]["extras"] == 0


def test_resume_is_exact(cifar100_tiny, tmp_path, teacher_ckpt):
    """The strong views of an epoch are drawn from (seed, epoch): a resumed run trains on the
    same ones."""
    path_t = teacher_ckpt("resnet14")

    def run(name, *flags):
        return run_student("mlkd", "resnet8", cifar100_tiny, tmp_path / name, *flags,
                           teacher=path_t)
    assert_resume_is_exact(run)


def test_bad_temperatures_are_one_line(capsys, cifar100_tiny, tmp_path, teacher_ckpt):
    line = one_line_user_error(capsys, "mlkd", "resnet8x4", cifar100_tiny, tmp_path,
                               "--mlkd_temps", "4,0", teacher=teacher_ckpt("resnet14x4"))
    assert "--mlkd_temps needs one or more positive temperatures" in line

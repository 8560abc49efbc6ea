"""A second, strongly augmented view of every training sample, for the ``strong_images`` batch
key of MLKD (Jin et al. 2023), which registers ``add_strong_images`` as its provider
(``distillers/mlkd.py``): importing this module registers nothing.

The strong augmentation is the one of MLKD's code (``mdistiller/dataset/cifar100.py`` of
``Jin-Ying/Multi-Level-Logit-Distillation``, also in ``sunshangquan/logit-standardization-KD``):
``RandomCrop(32, padding=4)``, ``RandomHorizontalFlip()``, then its FixMatch-style
``RandAugment(2, 10)``: 2 operations drawn with replacement from the 14 of ``OPS``, each at a
magnitude uniform in its range (the ``10`` is unused), then Cutout of a square of side
``U(0, 0.5)`` x width at a uniform centre, filled with (125, 123, 114). Here the operations run
on whole uint8 batches with a magnitude per sample: autocontrast, equalize and the smoothing of
sharpness are torchvision.transforms.v2's functional ones, the blends (brightness, colour,
contrast, sharpness) torchvision's formulas with a per-sample factor, posterize, solarize and
the geometric ones (rotate, shear, translate: PIL's affine maps, nearest, black fill, with
PIL's fixed-point arithmetic) written out. Against the reference's PIL functions every
operation gives the same pixels, except colour, contrast and sharpness, within 1 of 255.

Two sources, decided by the loader:
- in-memory loaders (``TensorLoader``: CIFAR, MNIST), whose raw uint8 images and crop-and-flip
  are at hand: the strong view is made from the raw sample with its own crop and flip, drawn
  independently of the weak view's, as the reference's two transforms are;
- any other loader (the folder data sets): from the weak view itself, un-normalised to uint8, so it
  shares the weak view's crop and flip, then RandAugment and Cutout.
Every draw comes from one ``torch.Generator`` per epoch on the CPU, seeded from the loader's
``(seed, epoch, rank)``, so an epoch's strong views are reproducible and ``--resume`` is exact;
the reference draws from Python's global RNG in its worker processes.
Cost: on the CPU, about 30 ms per batch of 64 32x32 images on one (shared, loaded) core, some
20 s per CIFAR epoch (image by image with torchvision's functions: 52 ms); with 2 intra-op
threads on that busy 2-core machine, 0.5 s: such small tensors gain nothing from threads.
"""
import torch
import torchvision.transforms.v2.functional as TF

from helper.core.errors import UserError

from .loader_wrapper import LoaderWrapper
from .tensor_loader import normalize

_SALT = 0x5791  # keeps this stream apart from the loader's own (same seed and epoch)
CUTOUT_FILL = (125, 123, 114)
CUTOUT_MAX = 0.5  # of the width

# (name, low, high): the reference's ``augment_list``, in its order
OPS = (("autocontrast", 0, 1), ("brightness", 0.05, 0.95), ("color", 0.05, 0.95),
       ("contrast", 0.05, 0.95), ("equalize", 0, 1), ("identity", 0, 1), ("posterize", 4, 8),
       ("rotate", -30, 30), ("sharpness", 0.05, 0.95), ("shear_x", -0.3, 0.3),
       ("shear_y", -0.3, 0.3), ("solarize", 0, 256), ("translate_x", -0.3, 0.3),
       ("translate_y", -0.3, 0.3))


def _factor(v: torch.Tensor):
    """Per-sample blend factors ``(f, 1 - f)`` as float32 (B, 1, 1, 1); ``1 - f`` is taken in
    float64 first, as torchvision's ``_blend`` does with a Python float."""
    shape = (-1, 1, 1, 1)
    return v.to(torch.float32).view(shape), (1.0 - v).to(torch.float32).view(shape)


def _blend(img: torch.Tensor, other: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` with a factor per sample: ``img f + other (1 - f)``, clamped,
    truncated to uint8."""
    f, g = _factor(v)
    return img.float().mul_(f).add_(other * g).clamp_(0, 255).to(torch.uint8)


def _gray(img: torch.Tensor) -> torch.Tensor:
    """torchvision's grey level for colour and contrast on uint8: ``floor(0.2989 R + 0.587 G
    + 0.114 B)`` (B, 1, H, W), float32; a 1-channel image as it is."""
    if img.shape[1] != 3:
        return img.float()
    r, g, b = img.float().unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _sharpen(img: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` with a factor per sample: the interior blended
    with its 3x3 smoothing (``adjust_sharpness(img, 0)``), the border kept."""
    smooth = TF.adjust_sharpness(img, 0.0).float()
    _, g = _factor(v)
    x = img.float()
    return x.add_((smooth - x).mul_(g)).clamp_(0, 255).to(torch.uint8)


def _pil_affine(img: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """PIL's ``Image.transform(size, AFFINE, (a, b, c, d, e, f))`` with NEAREST and black fill,
    one coefficient row per sample (B, 6), float64: output pixel (x, y) takes the input pixel
    at ``(a (x + .5) + b (y + .5) + c, d (x + .5) + e (y + .5) + f)`` rounded down. As PIL
    (``Geometry.c``), a pure translation (``b = d = 0``) is computed in floating point, any
    other map in 16.16 fixed point (``affine_fixed``), which decides the pixels on a boundary."""
    n, c, h, w = img.shape
    a, b, tx, d, e, ty = (coeffs[:, i].view(n, 1, 1) for i in range(6))
    if bool(((b == 0) & (d == 0)).all()):
        xs = torch.arange(w, dtype=torch.float64).view(1, 1, w) + 0.5
        ys = torch.arange(h, dtype=torch.float64).view(1, h, 1) + 0.5
        col = (a * xs + b * ys + tx).floor_().long()
        row = (d * xs + e * ys + ty).floor_().long()
    else:
        def fix(v):
            return (v * 65536.0 + 0.5).floor_().long()
        xs, ys = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
        col = (fix(tx + a * 0.5 + b * 0.5) + ys * fix(b) + xs * fix(a)) >> 16
        row = (fix(ty + d * 0.5 + e * 0.5) + ys * fix(e) + xs * fix(d)) >> 16
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    flat = (row.clamp(0, h - 1) * w + col.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    out = img.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)
    return out * inside.unsqueeze(1)


def _rotation(v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """PIL's ``Image.rotate(v)`` coefficients (counter-clockwise degrees, about the centre)."""
    rad = -torch.deg2rad(v % 360.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cx, cy = w / 2.0, h / 2.0
    return torch.stack([cos, sin, cos * -cx + sin * -cy + cx,
                        -sin, cos, -sin * -cx + cos * -cy + cy], dim=1)


def _coefficients(name: str, v: torch.Tensor, h: int, w: int) -> torch.Tensor:
    one, zero = torch.ones_like(v), torch.zeros_like(v)
    rows = {"shear_x": (one, v, zero, zero, one, zero),           # PIL (1, v, 0, 0, 1, 0)
            "shear_y": (one, zero, zero, v, one, zero),
            "translate_x": (one, zero, v * w, zero, one, zero),   # the content moves by -v w
            "translate_y": (one, zero, zero, zero, one, v * h)}
    return _rotation(v, h, w) if name == "rotate" else torch.stack(rows[name], dim=1)


def apply_op(images: torch.Tensor, name: str, v: torch.Tensor) -> torch.Tensor:
    """Operation ``name`` on uint8 images (B, C, H, W), sample ``i`` at magnitude ``v[i]``
    (float64, (B,)), as the reference's PIL function of that name."""
    _, _, h, w = images.shape
    if name == "identity":
        return images
    if name == "autocontrast":
        return TF.autocontrast(images)
    if name == "equalize":
        return TF.equalize(images)
    if name == "brightness":
        return _blend(images, torch.zeros(()), v)
    if name == "color":
        return _blend(images, _gray(images), v) if images.shape[1] == 3 else images
    if name == "contrast":
        return _blend(images, _gray(images).mean(dim=(1, 2, 3), keepdim=True), v)
    if name == "sharpness":
        return _sharpen(images, v)
    if name == "posterize":  # keep the top int(v) bits
        bits = v.long().clamp(1, 8)
        mask = ((255 << (8 - bits)) & 255).to(torch.uint8).view(-1, 1, 1, 1)
        return images & mask
    if name == "solarize":  # PIL inverts values >= v (none when v > 255)
        return torch.where(images.double() >= v.view(-1, 1, 1, 1), 255 - images, images)
    if name in ("rotate", "shear_x", "shear_y", "translate_x", "translate_y"):
        return _pil_affine(images, _coefficients(name, v, h, w))
    raise ValueError(f"unknown operation {name!r}")


def cutout(images: torch.Tensor, side: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor):
    """The reference's ``CutoutAbs`` per sample (sides and centres in pixels, float64 (B,)):
    the square from ``(int(max(0, cx - side/2)), int(max(0, cy - side/2)))`` of ``side``
    pixels, clipped to the image, both ends included (PIL's ``rectangle``), filled with
    ``CUTOUT_FILL``; nothing where ``side <= 0``."""
    n, c, h, w = images.shape
    x0 = (cx - side / 2).clamp(min=0).long().view(n, 1, 1)
    y0 = (cy - side / 2).clamp(min=0).long().view(n, 1, 1)
    x1 = (x0 + side.view(n, 1, 1)).clamp(max=w).long().clamp(max=w - 1)
    y1 = (y0 + side.view(n, 1, 1)).clamp(max=h).long().clamp(max=h - 1)
    xs, ys = torch.arange(w).view(1, 1, w), torch.arange(h).view(1, h, 1)
    box = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & (side.view(n, 1, 1) > 0)
    fill = torch.tensor(CUTOUT_FILL if c == 3 else CUTOUT_FILL[:1] * c, dtype=images.dtype)
    return torch.where(box.unsqueeze(1), fill.view(1, c, 1, 1), images)


class RandAugmentCutout:
    """The reference's ``RandAugment(n, m)`` followed by its Cutout, with draws from a given
    generator: ``draw`` returns the parameters of ``b`` images, ``apply`` uses them."""

    def __init__(self, num_ops: int = 2):
        if num_ops < 0:
            raise UserError(f"the strong view needs 0 or more RandAugment operations, "
                            f"got {num_ops}")
        self.num_ops = int(num_ops)

    def draw(self, b: int, generator: torch.Generator):
        """``(ops (b, n) int64, magnitudes (b, n) float64, cutout (b, 3) float64: side as a
        fraction of the width, centre x and y as fractions of the width and height)``."""
        ops = torch.randint(0, len(OPS), (b, self.num_ops), generator=generator)
        u = torch.rand(b, self.num_ops, generator=generator, dtype=torch.float64)
        low = torch.tensor([float(o[1]) for o in OPS], dtype=torch.float64)[ops]
        high = torch.tensor([float(o[2]) for o in OPS], dtype=torch.float64)[ops]
        box = torch.rand(b, 3, generator=generator, dtype=torch.float64)
        box[:, 0] *= CUTOUT_MAX
        return ops, low + (high - low) * u, box

    def apply(self, images: torch.Tensor, params) -> torch.Tensor:
        """``images`` uint8 (B, C, H, W) on the CPU: in each of the ``num_ops`` rounds, every
        operation runs once on the samples that drew it."""
        ops, mags, box = params
        _, _, h, w = images.shape
        out = images.clone()
        for j in range(self.num_ops):
            for k, (name, _, _) in enumerate(OPS):
                rows = (ops[:, j] == k).nonzero().flatten()
                if len(rows):
                    out[rows] = apply_op(out[rows], name, mags[rows, j])
        return cutout(out, box[:, 0] * w, box[:, 1] * w, box[:, 2] * h)


def to_uint8(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalised float images back to uint8 (rounded): the inverse of ``normalize``."""
    return (images * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


class StrongViewLoader(LoaderWrapper):
    """Wraps a training loader (``dataset/loader.py``) and adds ``strong_images`` (float32,
    normalised as ``images``, same device) to each batch; everything else is the wrapped
    loader's."""

    def __init__(self, loader, num_ops: int = 2):
        super().__init__(loader)
        self.augment = RandAugmentCutout(num_ops)
        for name in ("mean", "std"):
            if not isinstance(getattr(loader, name, None), torch.Tensor):
                raise UserError(f"the strong view (strong_images) needs the loader's "
                                f"normalisation, which {type(loader).__name__} does not expose "
                                f"(DALI); drop --dali")
        raw = getattr(loader, "images", None)
        self.raw = raw if isinstance(raw, torch.Tensor) and raw.dtype == torch.uint8 else None
        crop = getattr(loader, "transform", None)
        self.crop = crop if hasattr(crop, "draw") and hasattr(crop, "apply") else None

    def strong(self, batch, generator) -> torch.Tensor:
        images = batch["images"]
        mean, std = self.loader.mean, self.loader.std
        if self.raw is not None:
            source = self.raw.index_select(0, batch["index"].cpu())
            if self.crop is not None:
                source = self.crop.apply(source, self.crop.draw(len(source), generator))
        else:
            source = to_uint8(images, mean, std).cpu()
        strong = self.augment.apply(source, self.augment.draw(len(source), generator))
        return normalize(strong.to(images.device, non_blocking=True), mean, std)

    def __iter__(self):
        g = self.epoch_generator(_SALT)
        for batch in self.loader:
            batch["strong_images"] = self.strong(batch, g)
            yield batch


def add_strong_images(loader, num_ops: int = 2):
    """A batch-key provider (``dataset/batch_keys.py``): ``loader`` with ``strong_images``."""
    return StrongViewLoader(loader, num_ops)

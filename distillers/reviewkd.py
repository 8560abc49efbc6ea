"""Chen, Liu, Zhao & Jia 2021, "Distilling Knowledge via Knowledge Review" (ReviewKD, CVPR)."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from .base import Distiller, Reads, Weights
from .common import conv_maps_or_error
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def hcl_loss(feats_s, feats_t):
    """Hierarchical context loss, summed over feature pairs: per pair the MSE at full size plus
    the MSE after average pooling to 4x4, 2x2, 1x1 (levels smaller than the map only), with
    weights 1, 1/2, 1/4, 1/8 in that order, divided by the sum of the weights used."""
    total = 0.0
    for fs, ft in zip(feats_s, feats_t):
        h = fs.shape[2]
        loss, weight, weights = F.mse_loss(fs, ft), 1.0, 1.0
        for level in (4, 2, 1):
            if level >= h:
                continue
            weight /= 2
            loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(fs, level),
                                              F.adaptive_avg_pool2d(ft, level))
            weights += weight
        total = total + loss / weights
    return total


class ABF(nn.Module):
    """Attention-based fusion: ``conv1`` maps a student feature to ``mid`` channels; unless it
    is the deepest, it is fused with the (upsampled) residual from the deeper level by two
    per-pixel sigmoid attention maps; the result is resized to the teacher's size and mapped
    to the teacher's channels by ``conv2``. Returns (output, residual for the next level)."""

    def __init__(self, c_in, mid, c_out, fuse):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_in, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, c_out, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(c_out))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x, residual, out_size):
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, x.shape[2:], mode="nearest")
            z = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * z[:, :1] + residual * z[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, out_size, mode="nearest")
        return self.conv2(x), x


def _review_inputs(feats):
    """Stage outputs (``feats[1:-1]``) and the pooled feature as a 1x1 map."""
    pooled = feats[-1]
    return list(feats[1:-1]) + [pooled.reshape(*pooled.shape[:2], 1, 1)]


@register_distiller("reviewkd")
class ReviewKD(Distiller):
    """Knowledge review (Chen, Liu, Zhao & Jia, CVPR 2021): student stages are fused from deep
    to shallow by ABF modules, and each fused output is matched to the teacher stage of the
    same level with the hierarchical context loss.

    Reference code: github dvlab-research/ReviewKD ``CIFAR-100/model/reviewkd.py`` (ABF,
    ``build_review_kd``, ``hcl``) and ``CIFAR-100/train.py``; mdistiller's
    ``mdistiller/distillers/ReviewKD.py`` is a port. Features: the student's stage outputs
    after ReLU and the teacher's *before* their last ReLU (``preact=True``; both references
    do this, mdistiller's ``STU_PREACT=False``), each followed by the pooled feature as a 1x1
    map. The per-model tables of ``build_review_kd`` are derived from the feature shapes: ABF
    input channels and sizes are the student's, output channels and sizes the teacher's, and
    the middle width is ``min(512, student's pooled dim)`` (256 for resnet8x4).

    Defaults as ``script/reviewKD.sh``: ``-c 1 -d 0 -b 5`` (``--kd-loss-weight``; the
    script uses 8 for resnet32x4->ShuffleV2, 0.6 for resnet56->resnet20, 1 for
    resnet110->resnet32), no KD term (``--use-kl`` off). The loss weight is warmed up as
    ``min(e / --reviewkd_warmup, 1)`` with ``e`` counted from 0 as the reference does (its
    first epoch has no review loss); mdistiller counts from 1 instead.

    Teacher mode: the official CIFAR code (``CIFAR-100/train.py``) never calls
    ``teacher.eval()``, so its teacher runs in training mode: its BatchNorms normalise with
    each batch's statistics (and update running statistics nobody reads). mdistiller and
    torchdistill put the teacher in eval mode, as the toolbox does by default;
    ``--teacher_train`` (old name ``--reviewkd_teacher_train``, an alias) keeps the teacher in
    training mode during training epochs as the official code (validation and the teacher's
    test accuracy stay in eval mode).

    Student features: after each stage's ReLU, as the official CIFAR code (its students'
    ``is_feat=True`` outputs); ``--reviewkd_student_preact`` takes them before the last ReLU,
    as torchdistill's ImageNet config (``nlp-oss2023/kr-resnet18_from_resnet34.yaml`` hooks
    the input of each stage's last ``relu``).

    The official CIFAR recipe (``CIFAR-100/train.py`` and ``util/misc.py`` at 49015fb, the
    last commit to change them): batch 128, lr 0.1 (0.02 for ShuffleNet/MobileNet, line 169),
    240 epochs, weight decay 5e-4, Nesterov momentum 0.9 (lines 178-179), ``RandomCrop(32,
    4)`` + flip normalised with CIFAR-10's mean and std ``(125.3, 123.0, 113.9) / 255`` and
    ``(63.0, 62.1, 66.7) / 255`` for CIFAR-100 too (lines 96-97), and ``lr_schedule``
    (``util/misc.py`` lines 55-60) multiplies the lr by 0.1 *after* the 0-based epochs 150,
    180 and 210, i.e. one epoch later than ``--lr_decay_epochs 150,180,210`` here; its teacher
    is its own baseline's best checkpoint trained with the same script. Here the toolbox's
    SimKD recipe (lr 0.05, batch 64, plain momentum, as mdistiller) applies unless given on
    the command line; the official one is ``--batch_size 128 --learning_rate 0.1 --nesterov
    --lr_decay_epochs 151,181,211 --cifar_normalization reviewkd --teacher_train``
    (``scripts/dkd_cifar100.sh``). Residuals are resized to the student feature's actual
    (H, W) rather than a square size from a table, which is the same for CIFAR's square maps.
    """

    reference = Reference(
        label="ReviewKD",
        row=11,
        paper="Chen et al. 2021 (CVPR)",
        code="dvlab-research/ReviewKD `CIFAR-100/model/reviewkd.py`",
        shown=("reviewkd_warmup",),
        extra_params="1,808,774",
        notes="warm-up counted from epoch 0 as the official code; teacher in eval mode, "
              "`--teacher_train` as the official CIFAR code (which never calls `teacher.eval()`; "
              "its recipe under Recipes); `--reviewkd_student_preact` as torchdistill",
    )

    # config.yaml files written before --teacher_train replaced this method's own switch
    renamed_options = {"reviewkd_teacher_train": "teacher_train"}
    reads = Reads(preact=True)  # the teacher's maps; the student's follow --reviewkd_student_preact
    default_weights = Weights(cls=1.0, div=0.0, beta=5.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        reviewkd_warmup: float = option(
            20.0, "epochs of linear warm-up of ReviewKD's loss weight (0: none)")
        reviewkd_student_preact: bool = option(
            False, "student features before each stage's last ReLU, as torchdistill's ImageNet "
            "config (default: after it, as the official CIFAR code)", "--reviewkd-student-preact")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.student_preact = bool(self.options.reviewkd_student_preact)
        s_all = student.feature_shapes(preact=self.student_preact)
        t_all = teacher.feature_shapes(preact=True)
        conv_maps_or_error(student, s_all, self.name)
        conv_maps_or_error(teacher, t_all, self.name)
        s_shapes, t_shapes = _shapes(s_all), _shapes(t_all)
        if len(s_shapes) != len(t_shapes):
            raise UserError(f"--distill reviewkd pairs stages one to one, but the student has "
                            f"{len(s_shapes) - 1} stages and the teacher {len(t_shapes) - 1}; "
                            "choose models with as many stages")
        self.warmup = float(self.options.reviewkd_warmup)
        mid = min(512, s_shapes[-1][0])
        n = len(s_shapes)
        self.abfs = nn.ModuleList(ABF(s[0], mid, t[0], fuse=i < n - 1)
                                  for i, (s, t) in enumerate(zip(s_shapes, t_shapes)))

    def feature_mode(self, who):
        return True if who == "teacher" else self.student_preact

    def warmup_factor(self):
        """``min(e / warmup, 1)`` with ``e = epoch - 1`` (the loop counts epochs from 1)."""
        if self.warmup <= 0:
            return 1.0
        return min(max(self.epoch - 1, 0) / self.warmup, 1.0)

    def review(self, feats_s, t_sizes):
        """The ABF outputs, shallow to deep, for the student features ``feats_s``."""
        outputs, residual = [], None
        for x, abf, size in zip(reversed(feats_s), reversed(self.abfs), reversed(t_sizes)):
            out, residual = abf(x, residual, size)
            outputs.insert(0, out)
        return outputs

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        fs, ft = _review_inputs(feats_s), _review_inputs(feats_t)
        outputs = self.review(fs, [f.shape[2:] for f in ft])
        return {"reviewkd": self.beta * self.warmup_factor() * hcl_loss(outputs, ft)}


def _shapes(shapes):
    return list(shapes[1:-1]) + [(shapes[-1][0], 1, 1)]

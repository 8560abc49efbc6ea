"""Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge Distillation"."""
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Weights
from .common import InitStageDistiller, InitStageOptions, model_name, stage_maps
from .options import option
from .registry import Reference, register_distiller


def fsp_matrices(feats):
    """The flow (FSP) matrix of each consecutive pair of maps ``(bottom, top)``: the larger one
    average-pooled to the smaller size, then ``G[c_top, c_bottom] = mean_xy top * bottom``,
    shaped (N, C_top, C_bottom) as RepDistiller's ``FSP.compute_fsp``."""
    out = []
    for bottom, top in zip(feats[:-1], feats[1:]):
        size = (min(bottom.shape[2], top.shape[2]), min(bottom.shape[3], top.shape[3]))
        bottom = bottom if bottom.shape[2:] == size else F.adaptive_avg_pool2d(bottom, size)
        top = top if top.shape[2:] == size else F.adaptive_avg_pool2d(top, size)
        out.append(torch.bmm(top.flatten(2), bottom.flatten(2).transpose(1, 2)) / (size[0] * size[1]))
    return out


def fsp_loss(feats_s, feats_t) -> torch.Tensor:
    """Sum over the pairs of the mean squared difference of the FSP matrices."""
    return sum((g_s - g_t).pow(2).mean() for g_s, g_t in zip(fsp_matrices(feats_s), fsp_matrices(feats_t)))


@register_distiller("fsp")
class FSP(InitStageDistiller):
    """Flow of solution procedure: Yim, Joo, Bae & Kim 2017, "A Gift from Knowledge
    Distillation: Fast Optimization, Network Minimization and Transfer Learning" (CVPR).
    Reference code: RepDistiller's ``distiller_zoo/FSP.py``, ``helper/pretrain.py`` and
    ``--distill fsp`` in ``train_student.py`` / ``helper/loops.py``.

    The FSP matrices are taken between consecutive entries of ``feats[:-1]`` (stem, stage 1,
    ..., stage n) of each model, so student and teacher must have the same channel counts
    there (a UserError otherwise: e.g. resnet32x4 -> ShuffleV2, wrn_40_2 -> wrn_40_1).

    Two stages, as RepDistiller (default):
      1. ``init`` (``--init_epochs``, 30): the student's feature modules
         (``get_feat_modules()``) are trained on the FSP loss alone, *unweighted*
         (``loss = sum(loss_group)`` in ``pretrain.py``), at the constant ``--learning_rate``.
      2. ``main`` (``--epochs``): ``cls * CE + div * KD``; the FSP term is 0 there
         (RepDistiller's ``loss_kd = 0`` for fsp). So ``-b`` (default 50, RepDistiller's
         ``-b 50``) has no effect in this mode and appears in the run name only.
    ``--fsp_one_stage``, as some reproductions: one stage of ``--epochs`` with
    ``cls * CE + div * KD + beta * FSP``.
    hankyul2/KnowledgeDistillation's published FSP row (README "[FSP]": one stage, "with
    setting as same as others", ``src/train_fsp.py`` at 6475dcd) uses ``FSP()`` of
    ``src/fsp.py`` as of d0ed979, the version ``src/train_fsp.py`` was created with (unchanged
    since): ``soft_factor=3, kd_lambda=1``, the mean over its 3 pairs (stem, stage 1, 2, 3,
    the larger map average-pooled, Grams divided by H*W as here) of ``MSE(G_s, G_t) / 3``,
    i.e. ``sum_k MSE_k / 9``: ``--fsp_one_stage -b 0.1111111111111111``
    (``scripts/kd_zoo_cifar.sh``). Its first version (79def73: factor 4, Grams not divided
    by H*W) trained no published run.
    Defaults: RepDistiller's ``-r 1 -a 0 -b 50`` (``-c 1 -d 0 -b 50``).

    Paper vs code: the paper pairs the first and last layer of each section (maps of the
    same size, within a residual stage) and sums the squared L2 distance with equal weights;
    the code pairs consecutive stage outputs (pooling the larger map) and averages the
    squared differences over the matrix entries. The paper's second stage trains on the
    main task alone, as the code does. We follow the code.
    """

    reference = Reference(
        label="FSP",
        row=16,
        paper="Yim et al. 2017",
        code="RepDistiller `distiller_zoo/FSP.py`",
        shown=("init_epochs",),
        notes="FSP only in RepDistiller's init stage; `--fsp_one_stage`",
    )

    default_weights = Weights(cls=1.0, div=0.0, beta=50.0)

    @dataclass(frozen=True)
    class Options(InitStageOptions):
        fsp_one_stage: bool = option(
            False, "no init stage: beta * FSP with CE (and KD) during all --epochs (without it "
            "-b has no effect, as in RepDistiller: the FSP loss is unweighted in the init stage "
            "and absent afterwards)", "--fsp-one-stage")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.one_stage = bool(self.options.fsp_one_stage)
        s_shapes = stage_maps(student, student.feature_shapes()[:-1], self.name)
        t_shapes = stage_maps(teacher, teacher.feature_shapes()[:-1], self.name)
        s_c, t_c = [s[0] for s in s_shapes], [t[0] for t in t_shapes]
        if s_c != t_c:
            differ = [str(i) for i, (a, b) in enumerate(zip(s_c, t_c)) if a != b] or ["count"]
            raise UserError(f"--distill fsp needs the same channels at every entry of feats[:-1] "
                            f"(stem, stages): {model_name(student)} has {s_c}, "
                            f"{model_name(teacher)} has {t_c} (differ at {', '.join(differ)}); "
                            "choose a student of the teacher's family or another method")

    def has_init_stage(self):
        return not self.one_stage

    def init_parameters(self):
        return list(self.student.get_feat_modules().parameters())

    def uses_teacher_output(self):
        return self.one_stage or self.stage == "init"

    def init_step(self, images):
        with torch.no_grad():
            feats_t, _ = self.teacher(images, is_feat=True)
        feats_s, logits_s = self.student(images, is_feat=True)
        return logits_s, {"fsp": fsp_loss(feats_s[:-1], feats_t[:-1])}

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        if not self.one_stage:
            return {}
        return {"fsp": self.beta * fsp_loss(feats_s[:-1], feats_t[:-1])}

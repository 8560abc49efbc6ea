"""Zhang, Chen & Wang 2022, "Confidence-Aware Multi-Teacher Knowledge Distillation" (ICASSP):
``--distill camkd`` with ``--path_t A B [C ...]``."""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from models.teachers import TeacherEnsemble
from .base import Distiller, Weights
from .common import reusable_classifier, stage_maps
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def confidence_weights(teacher_logits: List[torch.Tensor], targets) -> torch.Tensor:
    """The ``(K, B)`` per-sample teacher weights ``(1 - softmax_k(CE_k)) / (K - 1)``: a teacher
    with a lower cross-entropy on the label weighs more; each sample's weights sum to 1."""
    ce = torch.stack([F.cross_entropy(z, targets, reduction="none") for z in teacher_logits])
    return (1.0 - F.softmax(ce, dim=0)) / (ce.shape[0] - 1)


def weighted_kd(logits_s, teacher_logits: List[torch.Tensor], weights, T) -> torch.Tensor:
    """``sum_k,i w_ki * KL_i(p_k^T || p_s^T) * T^2 / (B * K)``: each teacher's per-sample KD
    term, weighted and averaged over samples and teachers."""
    log_p_s = F.log_softmax(logits_s / T, dim=1)
    per = torch.stack([F.kl_div(log_p_s, F.log_softmax(z / T, dim=1), reduction="none",
                                log_target=True).sum(1) for z in teacher_logits]) * T * T
    return (weights * per).sum() / per.numel()


def weighted_feature_loss(projected: List[torch.Tensor], maps: List[torch.Tensor],
                          weights) -> torch.Tensor:
    """``sum_k,i w_ki * mean((proj_ki - map_ki)^2) / (B * K)``."""
    per = torch.stack([(p - m).pow(2).flatten(1).mean(1) for p, m in zip(projected, maps)])
    return (weights * per).sum() / per.numel()


class Regressor(nn.Module):
    """The student's last map resized to one teacher's (average-pooled when larger, bilinear
    when smaller), then 1x1 conv, BN, ReLU to the teacher's channels (the reference's
    ``CalWeight`` with its default ``Embed``)."""

    def __init__(self, s_channels: int, t_shape):
        super().__init__()
        self.size = tuple(t_shape[1:])
        self.embed = nn.Sequential(nn.Conv2d(s_channels, t_shape[0], kernel_size=1),
                                   nn.BatchNorm2d(t_shape[0]), nn.ReLU(inplace=True))

    def forward(self, f):
        if f.shape[2] >= self.size[0]:
            f = F.adaptive_avg_pool2d(f, self.size)
        else:
            f = F.interpolate(f, size=self.size, mode="bilinear")
        return self.embed(f)


@register_distiller("camkd", "ca-mkd")
class CAMKD(Distiller):
    """CA-MKD: distil from two or more teachers, each weighted per sample by its confidence.

    Loss: ``cls * CE + camkd_alpha * KD_w + beta * FEAT_w`` where
      - ``w_k = (1 - softmax_k(CE(teacher_k logits, y))) / (K - 1)`` (``confidence_weights``)
        and ``KD_w`` is each teacher's per-sample KD term (temperature ``--kd_T``) weighted by
        ``w_k`` (``weighted_kd``);
      - ``FEAT_w``: for each teacher a regressor (``Regressor``, an extra) maps the student's
        last stage map to that teacher's; the MSE to the teacher's map is weighted per sample
        by ``confidence_weights`` of the teacher's own classifier applied to the regressed map
        (global average pool, then the teacher's ``nn.Linear``), so a regression the teacher
        classifies well weighs more. The weights are not detached (as the code): they also
        train the regressors. This term starts after ``--camkd_skip_epochs`` epochs.
    ``-d`` adds plain KD from the teachers' mean logit (0 by default).

    Paper: Zhang, Chen & Wang, ICASSP 2022. Official code: Rorozhl/CA-MKD
    (``helper/loops.py`` ``train_distill_multi_teacher``, ``distiller_zoo/CAMKD.py``,
    ``models/util.py`` ``CalWeight``/``Embed``); defaults of its ``scripts/run.sh`` (CA-MKD:
    ``--distill inter --ensemble_method CAMKD -r 1 -a 1 -b 50 --nesterov``, ``--kd_T 4``):
    here ``-c 1 -d 0 --camkd_alpha 1 -b 50 --kd_T 4``; pass ``--nesterov`` (a flag of every
    run). Its CIFAR-100 runs use three resnet32x4 teachers.
    Paper vs code, and what we do:
      - The paper writes the weights as ``1/(K-1) * (1 - softmax(CE))``, as the code computes;
        the code then also divides the weighted sums by ``K`` (``/ (bsz * K)``). We follow the
        code.
      - The code skips every batch smaller than ``--batch_size`` (the last one of an epoch);
        we train on it.
      - The code applies each teacher's own head (``distill_seq()[-1]``: ResNet's
        ``AvgPool2d(8)`` and ``fc``) to the regressed map; we apply a global average pool and
        the teacher's classifier, the same for the CIFAR ResNets and WRNs.
      - The code resizes the student map cumulatively across teachers (the second teacher
        gets the first's resized map); we resize the student's own map for each, the same when
        the teachers' maps have one size.
      - In the skipped epochs the code leaves the feature term out; we weigh it by 0, so
        that the regressors stay in the graph (DistributedDataParallel needs every trained
        parameter used), and weight decay then acts on them, which the code's SGD skips
        (their gradient is None there).
      - The code's ``--convs`` (a three-conv ``Embed``, off by default) is not offered.
    """

    reference = Reference(
        label="CA-MKD",
        row=31,
        paper="Zhang, Chen & Wang 2022 (ICASSP)",
        code="Rorozhl/CA-MKD",
        shown=("camkd_alpha", "kd_T", "camkd_skip_epochs"),
        extra_params="198,912 (three resnet32x4)",
        notes="two or more teachers (any architectures), weighted per sample by their "
              "cross-entropy on the label; the official `scripts/run.sh` CA-MKD row (`-r 1 -a 1 "
              "-b 50`)",
        usage="--path_t A B C --nesterov",
    )

    min_teachers = 2

    default_weights = Weights(cls=1.0, div=0.0, beta=50.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        camkd_alpha: float = option(1.0, "weight of the confidence-weighted KD term (the "
                                    "reference's -a)", "--camkd-alpha")
        camkd_skip_epochs: int = option(1, "epochs at the start without the feature term (the "
                                        "reference: the first)", "--camkd-skip-epochs")

        def check(self):
            require(self.camkd_alpha >= 0, f"--camkd_alpha must be 0 or more, got "
                    f"{self.camkd_alpha:g}")
            require(self.camkd_skip_epochs >= 0, f"--camkd_skip_epochs must be 0 or more, got "
                    f"{self.camkd_skip_epochs}")

    @classmethod
    def accepts_ensemble(cls, options) -> bool:
        return True

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        if not isinstance(teacher, TeacherEnsemble):
            raise UserError("--distill camkd weighs two or more teachers per sample; pass "
                            "several checkpoints: --path_t A B [C ...]")
        s_shape = stage_maps(student, student.feature_shapes()[-2:-1], self.name)[0]
        regressors = []
        for member in teacher.members:
            t_shape = stage_maps(member, member.feature_shapes()[-2:-1], self.name)[0]
            reusable_classifier(member, self.name, t_shape[0])
            regressors.append(Regressor(s_shape[0], t_shape))
        self.regressors = nn.ModuleList(regressors)
        self.alpha = float(self.options.camkd_alpha)

    def uses_kd_temperature(self):
        return True

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        teacher_logits = [z for _, z in feats_t]
        weights = confidence_weights(teacher_logits, targets)
        losses = {"camkd_kd": self.alpha * weighted_kd(logits_s, teacher_logits, weights,
                                                       self.kd_temperature())}
        projected = [r(feats_s[-2]) for r in self.regressors]
        heads = [member.get_classifier() for member in self.teacher.members]
        head_logits = [head(F.adaptive_avg_pool2d(p, 1).flatten(1))
                       for head, p in zip(heads, projected)]
        maps = [f[-2] for f, _ in feats_t]
        feat = weighted_feature_loss(projected, maps, confidence_weights(head_logits, targets))
        on = self.epoch > self.options.camkd_skip_epochs
        losses["camkd"] = (self.beta if on else 0.0) * feat
        return losses

"""Yang, Zeng, Li, Zhang, Yuan & Li 2023, "From Knowledge Distillation to Self-Knowledge
Distillation: A Unified Approach with Normalized Loss and Customized Soft Labels" (ICCV): USKD,
self-knowledge distillation without a teacher."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Reads, Weights
from .common import model_name
from .nkd import drop_labels
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller

EPS = 1e-6  # the reference's guard in the rank's normalisation


def label_columns(targets: torch.Tensor, soft_targets=None):
    """``(labels (N, k), values (N, k))``: the hard label with value 1 (k = 1), or, for soft
    (MixUp/CutMix) labels, their two largest entries, as the reference code (ties in column
    order)."""
    if soft_targets is None:
        return targets[:, None], torch.ones(len(targets), 1, device=targets.device)
    values, labels = torch.sort(soft_targets, dim=1, descending=True, stable=True)
    return labels[:, :2], values[:, :2]


def soft_target_weight(logits_s, labels, values) -> torch.Tensor:
    """The customised soft target labels (N, k), constants: ``s_y^2 + v_y - mean_batch(s_y^2)``
    with ``s_y`` the student's own probability of label ``y`` and ``v_y`` its label value;
    0 where ``v_y`` is 0."""
    square = F.softmax(logits_s, dim=1).gather(1, labels).pow(2)
    weight = square + values - square.mean(0, keepdim=True)
    return weight.masked_fill(values == 0, 0.0).detach()


def zipf_positions(score: torch.Tensor) -> torch.Tensor:
    """Each class's position (0 = first) when the row is sorted by ``score``, descending;
    ties keep class order (stable sort)."""
    order = torch.sort(score, dim=1, descending=True, stable=True).indices
    return torch.argsort(order, dim=1, stable=True)


def zipf_labels(rank_score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The soft non-target labels (N, C - k), constants: Zipf's law ``1 / position`` over all
    classes ranked by ``rank_score``, the label columns dropped, renormalised to sum 1."""
    z = 1.0 / (zipf_positions(rank_score) + 1).to(rank_score.dtype)
    z = drop_labels(z, labels)
    return (z / z.sum(dim=1, keepdim=True)).detach()


def rank_score(weak_logits, logits_s, labels, probabilities: bool = False) -> torch.Tensor:
    """What the non-target classes are ranked by: the weak classifier's probabilities and the
    student's, each divided by one minus its (summed) label values.

    As the reference code, the student's part uses *log*-probabilities (its ``s_i`` and
    ``s_t`` have been overwritten by ``log_softmax`` at that point); ``probabilities`` uses the
    probabilities for both."""
    w = F.softmax(weak_logits, dim=1)
    w_y = w.gather(1, labels).sum(1, keepdim=True)
    s = F.softmax(logits_s, dim=1) if probabilities else F.log_softmax(logits_s, dim=1)
    s_y = s.gather(1, labels).sum(1, keepdim=True)
    return (w / (1 - w_y + EPS) + s / (1 - s_y + EPS)).detach()


def uskd_losses(logits_s, weak_logits, targets, *, mu: float, soft_targets=None,
                rank_probs: bool = False):
    """USKD's three terms ``(target, non_target, weak)``, the code's ``loss_t``, ``loss_non``
    and ``loss_weak`` (only the last includes its weight ``mu``), each a batch mean:
      - target: ``-sum_y w_y log s_y`` with ``w_y = soft_target_weight``;
      - non_target: cross-entropy of the Zipf soft labels with the student's non-target
        distribution (softmax of its logits without the label columns, temperature 1);
      - weak: ``mu`` times the cross-entropy of the weak classifier with the label smoothed as
        ``0.9 label + 0.1 / C`` (``label`` one-hot, or the soft labels).
    """
    labels, values = label_columns(targets, soft_targets)
    log_s = F.log_softmax(logits_s, dim=1)
    weight = soft_target_weight(logits_s, labels, values)
    target = -(weight * log_s.gather(1, labels)).sum(1).mean()
    if soft_targets is None:
        soft_targets = F.one_hot(targets, logits_s.shape[1]).to(logits_s.dtype)
    smooth = 0.9 * soft_targets + 0.1 / logits_s.shape[1]
    weak = -(mu * smooth * F.log_softmax(weak_logits, dim=1)).sum(dim=1).mean()
    nz = zipf_labels(rank_score(weak_logits, logits_s, labels, rank_probs), labels)
    non_target = -(nz * F.log_softmax(drop_labels(logits_s, labels), dim=1)).sum(1).mean()
    return target, non_target, weak


@register_distiller("uskd")
class USKD(Distiller):
    """Unified self-knowledge distillation: Yang, Zeng, Li, Zhang, Yuan & Li 2023, "From
    Knowledge Distillation to Self-Knowledge Distillation: A Unified Approach with Normalized
    Loss and Customized Soft Labels" (ICCV). Reference code: ``yzd-v/cls_KD``,
    ``mmcls/models/dis_losses/uskd.py`` (``USKDLoss``), ``mmcls/models/classifiers/distiller.py``
    (``sd=True``: ``fea_mid = neck(fea_s[-2])``) and the configs
    ``configs/distillers/cifar100/res18_sd_cifar.py`` and
    ``configs/distillers/imagenet/*_sd_img.py``.

    No teacher: the student's own outputs make the soft labels. ``--path_t`` is not needed.
      - Soft target label: ``s_y^2 + 1 - mean_batch(s_y^2)`` from the student's probability of
        the label (a constant), weighting ``-log s_y``.
      - Soft non-target labels: a linear layer (the extra, trained) on the globally pooled
        feature of a middle stage gives "weak" logits, trained towards the smoothed label
        (``0.9 one_hot + 0.1 / C``, weight ``mu``); the classes are ranked by the weak and the
        student's normalised outputs and the non-target labels follow Zipf's law ``1 / rank``
        (renormalised over the non-target classes), compared with the student's normalised
        non-target distribution by cross-entropy.
    Loss: ``cls * CE + beta * (uskd_alpha * target + uskd_beta * non_target + weak)``, logged
    as ``uskd_target``, ``uskd_non_target`` and ``uskd_weak``; defaults ``-c 1 -d 0 -b 1`` (the
    reference adds its CE at weight 1). ``--uskd_layer`` indexes ``feats = [stem, stage_1,
    ..., stage_n, pooled]``; its default -3 is the stage before the last, as the reference's
    ``fea_s[-2]`` of the backbone's stage outputs (256 channels for ResNet18, 1024 for
    ResNet50, as its configs' ``channel``).
    Defaults: the CIFAR-100 config (ResNet18) ``--uskd_alpha 0.1 --uskd_beta 0.1 --uskd_mu
    0.1``, as this toolbox's standard benchmark is CIFAR-100; every ImageNet config
    (ResNet18/50/101, MobileNet, ...) uses ``--uskd_alpha 1 --uskd_beta 0.1 --uskd_mu 0.005``.
    The reference's CIFAR-100 recipe is NKD's (the same repository and config,
    ``configs/resnet/resnet18_8xb16_cifar100.py``; its sources and the branch caveat are in
    ``distillers/nkd.py``): ``--batch_size 128 --learning_rate 0.1 --weight_decay 5e-4 --epochs
    200 --lr_decay_epochs 60,120,160 --lr_decay_rate 0.2 --cifar_normalization per_dataset``.

    Where we follow the code, and where we differ:
      - The rank uses the student's log-probabilities (see ``rank_score``), as the code, where
        this looks like a slip (its ``s_i`` is reassigned just before); ``--uskd_rank_probs``
        ranks by the probabilities of both parts.
      - Ties in the rank and in the soft labels keep class order (stable sorts); the code's
        sorts are unstable.
      - As the code, soft (MixUp/CutMix) labels, when the batch has them (``soft_targets``),
        give two label columns: their two largest entries and values.
    ``-d`` (a KD term) needs a teacher, which USKD does not have: it must stay 0.
    """

    reference = Reference(
        label="USKD",
        row=33,
        paper="Yang et al. 2023 (ICCV)",
        code="yzd-v/cls_KD `mmcls/models/dis_losses/uskd.py`",
        shown=("uskd_alpha", "uskd_beta", "uskd_mu", "uskd_layer"),
        extra_params="12,900",
        notes="self-KD, no teacher (drop `--path_t`); weak classifier on the pooled stage before "
              "the last; ImageNet: `--uskd_alpha 1 --uskd_mu 0.005`; `--uskd_rank_probs` ranks "
              "by probabilities (the code: log-probabilities); CIFAR-100 schedule as NKD's",
    )

    reads = Reads("none", "maps")  # no teacher: its own weak classifier
    default_weights = Weights(cls=1.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        uskd_alpha: float = option(0.1, "weight of the soft target term (CIFAR-100 config: 0.1; "
                                   "ImageNet: 1)", "--uskd-alpha")
        uskd_beta: float = option(0.1, "weight of the soft non-target term", "--uskd-beta")
        uskd_mu: float = option(0.1, "weight of the weak classifier's loss (CIFAR-100: 0.1; "
                                "ImageNet: 0.005)", "--uskd-mu")
        uskd_layer: int = option(-3, "index into feats=[stem, stage_1, ..., pooled] of the "
                                 "weak classifier's input (-3: the stage before the last)",
                                 "--uskd-layer")
        uskd_rank_probs: bool = option(False, "rank non-target classes by the student's "
                                       "probabilities instead of its log-probabilities (the "
                                       "code's)", "--uskd-rank-probs")

        def check(self):
            require(self.uskd_mu >= 0, f"--uskd_mu must be 0 or more, got {self.uskd_mu:g}")

    @classmethod
    def requires_teacher(cls, options):
        return False

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, None, options, **kw)
        if self.div_weight:
            raise UserError(f"--distill uskd has no teacher, so no KD term: drop -d "
                            f"{self.div_weight:g} (or pass -d 0)")
        o = self.options
        self.alpha, self.non_target_weight, self.mu = o.uskd_alpha, o.uskd_beta, o.uskd_mu
        self.rank_probs = bool(o.uskd_rank_probs)
        shapes = student.feature_shapes(self.preact)
        if not -len(shapes) <= o.uskd_layer < len(shapes):
            raise UserError(f"--uskd_layer {o.uskd_layer} is outside the {len(shapes)} features "
                            f"of {model_name(student)}; pass -{len(shapes)}..{len(shapes) - 1}")
        self.layer = o.uskd_layer
        self.weak_fc = nn.Linear(shapes[self.layer][0], self.run_info.num_classes)

    def uses_teacher_output(self):
        return False

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        f = feats_s[self.layer]
        if f.dim() > 2:
            f = f.flatten(2).mean(2)  # the reference's neck: global average pooling
        target, non_target, weak = uskd_losses(
            logits_s, self.weak_fc(f), targets, mu=self.mu,
            soft_targets=batch.get("soft_targets"), rank_probs=self.rank_probs)
        return {"uskd_target": self.beta * self.alpha * target,
                "uskd_non_target": self.beta * self.non_target_weight * non_target,
                "uskd_weak": self.beta * weak}

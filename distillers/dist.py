"""Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher" (DIST, NeurIPS)."""
from dataclasses import dataclass

import torch

from .base import Distiller, Reads, Weights
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (the reference's
    cosine similarity of the centred rows, with ``eps`` added to the norm product)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def dist_loss(logits_s, logits_t, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0):
    """``tau^2 * (beta * inter + gamma * intra)`` on ``softmax(logits / tau)``.

    inter: 1 - mean over samples of the correlation across classes (relations between
    classes, per sample); intra: 1 - mean over classes of the correlation across the batch.
    """
    y_s = (logits_s / tau).softmax(dim=1)
    y_t = (logits_t / tau).softmax(dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau * tau * (beta * inter + gamma * intra)


@register_distiller("dist")
class DIST(Distiller):
    """DIST: Huang, You, Wang, Qian & Xu 2022, "Knowledge Distillation from A Stronger Teacher"
    (NeurIPS). Reference code: github hunto/DIST_KD (``classification/``, from
    hunto/image_classification_sota: ``lib/models/losses/dist_kd.py`` and ``kd_loss.py``,
    where ``--kd dist_t4`` builds ``DIST(beta=1, gamma=1, tau=4)``); the same formula in the
    segmentation code ``segmentation/losses/dist_kd.py``.

    Loss: ``cls * CE + b * dist_loss(beta, gamma, tau)`` replacing the KL term (KD off).
    Defaults (CIFAR-100, ``configs/strategies/distill/dist_cifar.yaml`` of
    hunto/image_classification_sota: ``kd: dist_t4``, DIST loss weight 2, CE weight 1):
    ``-c 1 -d 0 -b 2 --dist_beta 1 --dist_gamma 1 --dist_tau 4``, i.e. the paper's beta =
    gamma = 2 on CIFAR-100; its teachers are the ``ckpt_epoch_240.pth`` files of
    ``cifar_ckpts.zip`` (the last epoch). ImageNet (ResNet-34 -> ResNet-18, torchdistill's
    ``configs/sample/ilsvrc2012/dist/resnet18_from_resnet34.yaml``: DISTLoss beta 1, gamma 1,
    tau 1, weight 2, CE 1): ``-b 2 --dist_tau 1``.

    Paper vs code: both use the Pearson distance ``1 - rho`` for the inter- and intra-class
    relations and scale them by ``tau^2``; the code adds 1e-8 to the norm product (we do too).
    The reference's DIST class fixes beta = gamma = 1 and weights the sum with its
    ``kd-loss-weight`` (our ``-b``); ``--dist_beta``/``--dist_gamma`` expose them. Only logits.
    """

    reference = Reference(
        label="DIST",
        row=13,
        paper="Huang et al. 2022",
        code="hunto/DIST_KD `classification/`",
        shown=("dist_beta", "dist_gamma", "dist_tau"),
        notes="`dist_cifar.yaml`; ImageNet: `-b 2 --dist_tau 1`",
    )

    reads = Reads("logits", "logits")  # the logits only: --teacher_cache serves them
    default_weights = Weights(cls=1.0, div=0.0, beta=2.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        dist_beta: float = option(
            1.0, "weight of the inter-class relation (per sample, across classes)", "--dist-beta")
        dist_gamma: float = option(
            1.0, "weight of the intra-class relation (per class, across the batch)", "--dist-gamma")
        dist_tau: float = option(
            4.0, "softmax temperature (CIFAR recipe 4, ImageNet 1; -b 2 for both)",
            "--dist-tau")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.inter_weight = float(self.options.dist_beta)
        self.intra_weight = float(self.options.dist_gamma)
        self.tau = float(self.options.dist_tau)

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        loss = dist_loss(logits_s, logits_t, self.inter_weight, self.intra_weight, self.tau)
        return {"dist": self.beta * loss}

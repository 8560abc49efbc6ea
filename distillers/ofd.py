"""Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation" (ICCV)."""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError

from .base import Distiller, Reads, Weights
from .common import conv_maps_or_error, model_name
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


def bn_margin(bn: nn.BatchNorm2d) -> torch.Tensor:
    """The margin per channel: ``E[x | x < 0]`` for ``x ~ N(bias, weight^2)``, the expected
    negative response after ``bn``; ``-3 |weight|`` where ``P(x < 0) <= 0.001`` (the reference's
    ``get_margin_from_BN``, in float64)."""
    s = bn.weight.detach().double().abs()
    m = bn.bias.detach().double()
    p = torch.special.ndtr(-m / s)
    mean_negative = m - s * torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi) / p
    return torch.where(p > 1e-3, mean_negative, -3 * s).float()


def partial_l2(source: torch.Tensor, target: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """The partial L2, summed: the target is clipped from below at ``margin``; where it is
    then negative and the student is already below it, there is no loss."""
    target = torch.max(target, margin)
    keep = (source > target) | (target > 0)
    return ((source - target).pow(2) * keep).sum()


def connector(s_channels: int, t_channels: int, kernel_size: int = 1) -> nn.Sequential:
    """The student-side connector: a bias-free conv (``kernel_size``, same padding) and a BN,
    initialised as the reference (conv weights ~ N(0, 2 / (k * k * out)), BN 1 and 0)."""
    conv = nn.Conv2d(s_channels, t_channels, kernel_size, padding=(kernel_size - 1) // 2,
                     bias=False)
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (kernel_size * kernel_size * t_channels)))
    bn = nn.BatchNorm2d(t_channels)
    nn.init.ones_(bn.weight)
    nn.init.zeros_(bn.bias)
    return nn.Sequential(conv, bn)


def ofd_loss(feats_s, feats_t, margins):
    """``sum_i partial_l2(S_i, T_i, m_i) / 2^(n-1-i)`` over the paired stages (the student's
    already through its connector), the teacher's map average-pooled to the student's size,
    divided by the batch size."""
    n = len(feats_s)
    loss = 0.0
    for i, (f_s, f_t, m) in enumerate(zip(feats_s, feats_t, margins)):
        if f_t.shape[2:] != f_s.shape[2:]:
            f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
        loss = loss + partial_l2(f_s, f_t.detach(), m.view(1, -1, 1, 1)) / 2 ** (n - 1 - i)
    return loss / feats_s[0].shape[0]


@register_distiller("ofd")
class OFD(Distiller):
    """OFD: Heo, Kim, Yun, Park, Kwak & Choi 2019, "A Comprehensive Overhaul of Feature
    Distillation" (ICCV). Reference code: clovaai/overhaul-distillation ``CIFAR-100/
    distiller.py`` (``distillation_loss``, ``build_feature_connector``, ``get_margin_from_BN``)
    and ``CIFAR-100/train_with_distillation.py`` (the loss scaling); mdistiller
    ``mdistiller/distillers/OFD.py`` with ``configs/cifar100/ofd.yaml`` and the defaults of
    ``mdistiller/engine/cfg.py`` (``OFD.LOSS.FEAT_WEIGHT 0.001``, ``CONNECTOR.KERNEL_SIZE 1``).

    The stage outputs before their last ReLU (``preact``, ``feats[1:-1]``) are distilled:
    each student map goes through a connector (1x1 conv without bias, then BN) to the
    teacher's width, and learns the teacher's map with the partial L2 (``partial_l2``):
    the teacher's response is clipped from below at its channel's margin, and where the
    clipped target is negative a student already below it costs nothing. The margin is the
    expected value of the negative part of ``N(beta, gamma^2)`` for the BN (weight gamma,
    bias beta) before that stage's last ReLU (the model's ``get_bn_before_relu()``), or
    ``-3 |gamma|`` when that part has probability <= 0.001 (``bn_margin``). Stage i of n
    is weighted ``1 / 2^(n-1-i)``; the sum is divided by the batch size:
    ``beta * sum_i partial_l2(conn_i(S_i), T_i, m_i) / 2^(n-1-i) / B``.

    Defaults: ``-c 1 -d 0 -b 1e-3`` (clovaai's ``loss_CE + loss_distill.sum() / batch_size /
    1000``; mdistiller's CE weight 1 and feature weight 0.001 on a batch-mean), connector
    kernel 1 (``--ofd_connector_kernel``: mdistiller's ``CONNECTOR.KERNEL_SIZE``). Where the
    models have different stage counts the last ones are paired (mdistiller's
    ``_align_list``); a teacher map larger than the student's is average-pooled to its size
    (mdistiller; clovaai pairs equal sizes only). The margins are buffers of the extras.
    clovaai's CIFAR recipe (not the defaults here): 200 epochs, batch 128, lr 0.1 divided by
    10 at epochs 100 and 150, Nesterov momentum, weight decay 5e-4; mdistiller's is the
    toolbox's (240 epochs, lr 0.05, decay at 150, 180, 210).

    Differences from the reference code:
      - Both references put the teacher in training mode during training (clovaai calls
        ``t_net.train()``; mdistiller's ``OFD.train`` sets every child's mode), so its BNs
        use batch statistics. The teacher is in eval mode here, as everywhere in the toolbox;
        ``--teacher_train`` (old name ``--ofd_teacher_train``, an alias) gives the
        references' setting.
      - The paper's loss is the same partial L2 (its Eq. 5); the references' two ways of
        writing it (clovaai's masked ``mse_loss``, mdistiller's three-case ``feat_loss``) are
        equal, and so is ours.
    """

    reference = Reference(
        label="OFD",
        row=27,
        paper="Heo et al. 2019 (ICCV)",
        code="clovaai/overhaul-distillation; mdistiller `OFD.py`",
        shown=("ofd_connector_kernel",),
        extra_params="86,912",
        notes="stage outputs before their ReLU through a conv1x1+BN connector, partial L2 above "
              "the margins of the teacher's BNs, stage i of n weighted 2^-(n-1-i), divided by "
              "the batch (clovaai's `/ batch / 1000`, mdistiller's weight 0.001); teacher in "
              "eval mode, `--teacher_train` as both references",
    )
    # config.yaml files written before --teacher_train replaced this method's own switch
    renamed_options = {"ofd_teacher_train": "teacher_train"}
    reads = Reads(preact=True)
    default_weights = Weights(cls=1.0, div=0.0, beta=1e-3)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        ofd_connector_kernel: int = option(
            1, "kernel size of the connector conv (reference: 1; odd)", "--ofd-connector-kernel")

        def check(self):
            k = self.ofd_connector_kernel
            require(k >= 1 and k % 2 == 1,
                    f"--ofd_connector_kernel must be an odd number from 1, got {k}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        s_shapes = conv_maps_or_error(student, student.feature_shapes(preact=True), self.name)
        t_shapes = conv_maps_or_error(teacher, teacher.feature_shapes(preact=True), self.name)
        try:
            bns = list(teacher.get_bn_before_relu())
        except NotImplementedError as e:
            raise UserError(f"--distill ofd takes its margins from the teacher's BN before each "
                            f"stage's last ReLU: {e}") from e
        if len(bns) != len(t_shapes):
            raise UserError(f"--distill ofd: {model_name(teacher)} names {len(bns)} BNs for "
                            f"{len(t_shapes)} stages; choose another teacher")
        n = min(len(s_shapes), len(t_shapes))
        s_shapes, t_shapes, bns = s_shapes[-n:], t_shapes[-n:], bns[-n:]
        for i, (s, t, bn) in enumerate(zip(s_shapes, t_shapes, bns)):
            if bn.num_features != t[0]:
                raise UserError(f"--distill ofd: the BN before stage {i + 1} of "
                                f"{model_name(teacher)} has {bn.num_features} channels, the "
                                f"stage {t[0]}; choose another teacher")
        k = self.options.ofd_connector_kernel
        self.connectors = nn.ModuleList(connector(s[0], t[0], k) for s, t in zip(s_shapes, t_shapes))
        for i, bn in enumerate(bns):
            self.register_buffer(f"margin{i}", bn_margin(bn))
        self.pairs = n

    def margins(self):
        return [getattr(self, f"margin{i}") for i in range(self.pairs)]

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        n = self.pairs
        f_s = [conn(f) for conn, f in zip(self.connectors, feats_s[-1 - n:-1])]
        return {"ofd": self.beta * ofd_loss(f_s, feats_t[-1 - n:-1], self.margins())}

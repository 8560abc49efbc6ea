"""Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network Compression via Factor Transfer"."""
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import Weights
from .common import (InitStageDistiller, InitStageOptions, channel_mean_square, model_name,
                     parameters_except, pool_to_smaller, stage_maps)
from .options import option
from .registry import Reference, register_distiller

# RepDistiller's helper/pretrain.py pre-trains the paraphraser at lr 0.01 for these students
# (its CIFAR ResNets and WRNs) and at --learning_rate for the others.
INIT_LR_001 = ("resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
               "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2")


def _conv_block(c_in, c_out, use_bn, transposed=False):
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(c_in, c_out, 3, 1, 1)
    return [conv] + ([nn.BatchNorm2d(c_out)] if use_bn else []) + [nn.LeakyReLU(0.1)]


class Paraphraser(nn.Module):
    """RepDistiller's ``Paraphraser``: a conv autoencoder on the teacher's map with ``C``
    channels; the factor has ``int(C * k)``. Three 3x3 convs encode, three 3x3 transposed
    convs decode, each followed by LeakyReLU(0.1) (no BN by default)."""

    def __init__(self, channels, k=0.5, use_bn=False):
        super().__init__()
        mid = int(channels * k)
        self.encoder = nn.Sequential(*_conv_block(channels, channels, use_bn),
                                     *_conv_block(channels, mid, use_bn),
                                     *_conv_block(mid, mid, use_bn))
        self.decoder = nn.Sequential(*_conv_block(mid, mid, use_bn, True),
                                     *_conv_block(mid, channels, use_bn, True),
                                     *_conv_block(channels, channels, use_bn, True))

    def forward(self, x):
        """Returns (factor, reconstruction)."""
        factor = self.encoder(x)
        return factor, self.decoder(factor)


class Translator(nn.Module):
    """RepDistiller's ``Translator``: the student's map to a factor of ``int(C_t * k)``
    channels with three 3x3 conv, BN, LeakyReLU(0.1) blocks."""

    def __init__(self, s_channels, t_channels, k=0.5, use_bn=True):
        super().__init__()
        mid = int(t_channels * k)
        self.encoder = nn.Sequential(*_conv_block(s_channels, s_channels, use_bn),
                                     *_conv_block(s_channels, mid, use_bn),
                                     *_conv_block(mid, mid, use_bn))

    def forward(self, x):
        return self.encoder(x)


def ft_loss(factor_s: torch.Tensor, factor_t: torch.Tensor, paper_factor: bool = False) -> torch.Tensor:
    """Mean absolute difference (p = 1) of the L2-normalised factors, the larger map pooled
    to the smaller. RepDistiller normalises ``mean_c(F^2)`` (one value per position); with
    ``paper_factor`` the whole vectorised factor is normalised, as the paper and its code."""
    factor_s, factor_t = pool_to_smaller(factor_s, factor_t)
    if paper_factor:
        return (F.normalize(factor_s.flatten(1)) - F.normalize(factor_t.flatten(1))).abs().mean()
    return (F.normalize(channel_mean_square(factor_s).flatten(1))
            - F.normalize(channel_mean_square(factor_t).flatten(1))).abs().mean()


@register_distiller("ft", "factor")
class FT(InitStageDistiller):
    """Factor transfer: Kim, Park & Kwak 2018, "Paraphrasing Complex Network: Network
    Compression via Factor Transfer" (NeurIPS). Reference code: RepDistiller's
    ``distiller_zoo/FT.py`` (``FactorTransfer``), ``models/util.py`` (``Paraphraser``,
    ``Translator``), ``helper/pretrain.py`` and ``--distill factor`` in ``train_student.py`` /
    ``helper/loops.py``; the authors' ``Jangho-Kim/Factor-Transfer-pytorch``.

    Both modules work on the last stage map ``feats[-2]``; factor rate ``--ft_rate`` k = 0.5.
    Two stages, as RepDistiller:
      1. ``init`` (``--init_epochs``, 30): the paraphraser alone learns to reconstruct the
         teacher's map, ``MSE(decoder(encoder(f_t)), f_t)`` unweighted, at the constant lr
         0.01 for CIFAR ResNet/WRN students and ``--learning_rate`` for the others
         (``--ft_init_lr`` overrides). The student is not trained (it stays in eval mode).
      2. ``main`` (``--epochs``): ``cls * CE + div * KD + beta * FT(translator(f_s),
         encoder(f_t))``; the student and translator train, the paraphraser is frozen.
    Defaults: RepDistiller's ``-r 1 -a 0 -b 200`` (``-c 1 -d 0 -b 200``).

    Paper and authors' code vs RepDistiller:
      - The FT loss normalises the vectorised factor ``F / ||F||_2`` in the paper and the
        authors' code; RepDistiller normalises ``mean_c(F^2)``, an attention map of the
        factor. ``--ft_paper_factor`` gives the former.
      - The authors' code weights the FT loss by beta = 500 (with lr 0.1, CIFAR-10) and
        trains the paraphraser in a separate script; RepDistiller uses 200 and its init stage.
      - The authors' paraphraser and translator have no BN; RepDistiller's translator has.
        ``--ft_translator_no_bn`` drops it, as the authors and torchdistill's ImageNet config
        (``rrpr2020/ft-resnet18_from_resnet34.yaml``, ``uses_bn: False``).
    """

    reference = Reference(
        label="FT",
        row=17,
        paper="Kim et al. 2018",
        code="RepDistiller `distiller_zoo/FT.py`",
        shown=("init_epochs", "ft_rate"),
        extra_params="3,099,264",
        notes="paraphraser pre-trained in the init stage; `--ft_translator_no_bn` for the "
              "authors' and torchdistill's translator",
    )

    default_weights = Weights(cls=1.0, div=0.0, beta=200.0)

    @dataclass(frozen=True)
    class Options(InitStageOptions):
        ft_rate: float = option(0.5, "paraphrase rate k: factor channels = int(k * teacher "
                                "channels)", "--ft-rate")
        ft_init_lr: Optional[float] = option(
            None, "lr of the paraphraser's init stage (default as RepDistiller: 0.01 for CIFAR "
            "ResNet/WRN students, else --learning_rate)", "--ft-init-lr", type=float)
        ft_paper_factor: bool = option(False, "normalise the whole factor as the paper "
                                       "(RepDistiller: mean_c F^2)", "--ft-paper-factor")
        ft_translator_no_bn: bool = option(
            False, "translator without BN, as the authors and torchdistill (RepDistiller: "
            "with)", "--ft-translator-no-bn")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        s_shape = stage_maps(student, student.feature_shapes()[-2:-1], self.name)[0]
        t_shape = stage_maps(teacher, teacher.feature_shapes()[-2:-1], self.name)[0]
        k = float(self.options.ft_rate)
        self.paper_factor = bool(self.options.ft_paper_factor)
        self.paraphraser = Paraphraser(t_shape[0], k)
        self.translator = Translator(s_shape[0], t_shape[0], k,
                                     use_bn=not self.options.ft_translator_no_bn)

    def init_lr(self):
        if self.options.ft_init_lr is not None:
            return self.options.ft_init_lr
        return 0.01 if model_name(self.student) in INIT_LR_001 else None

    def init_parameters(self):
        return list(self.paraphraser.parameters())

    def main_parameters(self):
        return parameters_except(self, self.paraphraser)

    def init_train_mode(self):
        self.student.eval()

    def train(self, mode=True):
        super().train(mode)
        if mode and self.stage != "init":
            self.paraphraser.eval()
        return self

    def uses_teacher_output(self):
        return True

    def init_step(self, images):
        with torch.no_grad():
            feats_t, _ = self.teacher(images, is_feat=True)
            logits_s = self.student(images)  # for the logged accuracy only
        f_t = feats_t[-2]
        _, rec = self.paraphraser(f_t)
        return logits_s, {"rec": F.mse_loss(rec, f_t)}

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(feats_t[-2])
        factor_s = self.translator(feats_s[-2])
        return {"ft": self.beta * ft_loss(factor_s, factor_t, self.paper_factor)}

"""Yang, Martinez, Bulat & Tzimiropoulos 2021, "Knowledge Distillation via Softmax Regression
Representation Learning" (ICLR)."""
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from .base import Distiller, Weights
from .common import reusable_classifier
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def connector(c_in: int, c_out: int) -> nn.Sequential:
    """SRRL's connector: 1x1 conv (no bias), BN, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def srrl_losses(feat_s, feat_t, logits_sr, logits_t):
    """Feature matching ``MSE(feat_s, feat_t)`` and softmax regression ``MSE(logits_sr,
    logits_t)``, where ``logits_sr`` is the teacher's classifier applied to ``feat_s``."""
    return F.mse_loss(feat_s, feat_t), F.mse_loss(logits_sr, logits_t)


@register_distiller("srrl")
class SRRL(Distiller):
    """SRRL: the student's feature, mapped by a connector to the teacher's pooled dimension,
    should match the teacher's pooled feature (``srrl_feat``) and give the teacher's logits
    when passed through the teacher's frozen classifier (``srrl_logit``); both are MSE and
    weighted ``beta`` each.

    Reference code: SimKD ``models/util.py`` (class SRRL) and ``helper/loops.py`` (the
    ``srrl`` branch); defaults from SimKD's run_distill.sh: ``-c 1 -d 1 -b 1``, the two terms
    weighted equally (as in the official code, jingyang2017/KD_SRRL
    ``train_imagenet_distillation.py``, which uses ``--weight 1``). The paper writes the two
    terms with separate weights; here both are ``beta``.

    Where the references differ: SimKD applies the connector to the *pooled* student feature
    (``feats[-1]`` as a 1x1 map), which is our default (``--srrl_feat pooled``). The official
    code applies it to the last feature map before pooling and compares spatial means
    (``distiller_zoo/AIN.py`` transfer_conv, statm_loss), and the teacher's classifier sees
    the pooled connected map; ``--srrl_feat map`` does that on ``feats[-2]`` (for ShuffleNetV2 /
    MobileNetV2 students this is the last stage's output, before their final 1x1 conv).
    The teacher's classifier is used frozen and is not saved with the student.
    """

    reference = Reference(
        label="SRRL",
        row=8,
        paper="Yang et al. 2021",
        code="SimKD `models/util.py`; jingyang2017/KD_SRRL",
        shown=("srrl_feat",),
        extra_params="66,048",
        notes="teacher classifier reused, frozen",
    )

    default_weights = Weights(cls=1.0, div=1.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        srrl_feat: str = option(
            "pooled",
            "SRRL connector input: the pooled feature (SimKD) or the last feature map (official "
            "SRRL code)", choices=("pooled", "map"))

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.on_map = self.options.srrl_feat == "map"
        t_dim = teacher.feature_shapes()[-1][0]
        reusable_classifier(teacher, "srrl", t_dim)
        s_shapes = student.feature_shapes()
        self.connector = connector(s_shapes[-2][0] if self.on_map else s_shapes[-1][0], t_dim)

    def method_losses(self, *, feats_s, feats_t, logits_t, **batch):
        x = feats_s[-2] if self.on_map else feats_s[-1][:, :, None, None]
        feat = self.connector(x).mean(dim=(2, 3))
        logits_sr = self.teacher.get_classifier()(feat)
        fm, sr = srrl_losses(feat, feats_t[-1], logits_sr, logits_t)
        return {"srrl_feat": self.beta * fm, "srrl_logit": self.beta * sr}

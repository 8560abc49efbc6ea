"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets"."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from models.base import dummy_input, evaluating

from .base import Distiller, Stage, Weights
from .common import model_name
from .options import MethodOptions, option, require
from .registry import Reference, register_distiller


class ConvReg(nn.Module):
    """The regressor from the student's hint map to the teacher's: conv, BN, ReLU.

    The conv bridges the spatial sizes as SimKD's ``models/util.py:ConvReg`` does (shapes are
    (C, H, W)): stride-2 3x3 conv when the student map is twice as large, 4x4 transposed conv
    when it is half as large, a "valid" conv of kernel ``1 + s_H - t_H`` when it is larger,
    and otherwise a 3x3 conv with the *teacher* map average-pooled down to the student's size
    (RepDistiller's ConvReg raises in that last case).
    """

    def __init__(self, s_shape, t_shape):
        super().__init__()
        s_c, s_h, s_w = s_shape
        t_c, t_h, t_w = t_shape
        self.pool_teacher = False
        if s_h == 2 * t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, stride=2, padding=1)
        elif 2 * s_h == t_h:
            self.conv = nn.ConvTranspose2d(s_c, t_c, kernel_size=4, stride=2, padding=1)
        elif s_h >= t_h:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=(1 + s_h - t_h, 1 + s_w - t_w))
        else:
            self.conv = nn.Conv2d(s_c, t_c, kernel_size=3, padding=1)
            self.pool_teacher = True
        self.bn = nn.BatchNorm2d(t_c)

    def forward(self, f_s, f_t):
        """Returns (regressed student map, teacher map at the same size)."""
        if self.pool_teacher:
            f_t = F.adaptive_avg_pool2d(f_t, f_s.shape[2:])
        return F.relu(self.bn(self.conv(f_s))), f_t


def hint_loss(f_s: torch.Tensor, f_t: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements (RepDistiller's ``HintLoss``: ``nn.MSELoss``)."""
    return F.mse_loss(f_s, f_t)


@register_distiller("fitnet", "hint")
class FitNet(Distiller):
    """FitNet: Romero, Ballas, Kahou, Chassang, Gatta & Bengio 2015, "FitNets: Hints for
    Thin Deep Nets" (ICLR). Reference code: SimKD's ``distiller_zoo/FitNet.py`` (``HintLoss``),
    ``models/util.py`` (``ConvReg``) and ``train_student.py`` / ``helper/loops.py``
    (``--distill hint``), itself RepDistiller's.

    Loss: ``cls * CE + div * KD + beta * MSE(ConvReg(f_s[h]), f_t[h])`` with
    ``h = --hint_layer`` indexing ``feats = [stem, stage_1, ..., pooled]`` of both models.
    Defaults as SimKD's ``scripts/run_distill.sh``: ``-c 1 -d 1 -b 100``, ``--hint_layer 1``
    (RepDistiller's default is 2; pass ``--hint_layer 2`` for its setting).

    Paper vs code:
      - The paper trains in two stages: first the student up to its guided layer plus the
        regressor on the hint loss alone, then the whole student with KD (its lambda annealed).
        The reference code trains one stage, all terms together, which is our default.
        ``--fitnet_stage1_epochs N`` gives the paper's variant as two stages (the trainer's
        ``Stage`` mechanism): a "hint" stage of N epochs whose optimizer holds only the
        regressor and the student parameters the hint layer depends on, with ``beta * hint``
        as the only loss (CE and KD off; its epochs do not compete for best.pth); then the
        "main" stage of ``--epochs`` epochs, with a fresh optimizer and LR schedule, on
        ``cls * CE + div * KD`` without the hint term. The KD-weight annealing is not offered.
      - The paper's hint loss is ``1/2 ||u_h - r(v_g)||^2`` summed; the code's is the mean
        squared error (hence the large ``-b``). We follow the code.
      - The paper takes the middle layers of both networks as hint/guided layers; the code
        uses one index for both (``--hint_layer``). We follow the code.
    """

    reference = Reference(
        label="FitNet",
        row=3,
        paper="Romero et al. 2015",
        code="SimKD `distiller_zoo/FitNet.py`",
        shown=("hint_layer",),
        extra_params="4,288",
        notes="RepDistiller: `--hint_layer 2`; `--fitnet_stage1_epochs N` for the paper's two "
              "stages",
    )

    default_weights = Weights(cls=1.0, div=1.0, beta=100.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        hint_layer: int = option(1, "index into feats=[stem, stage_1, ...] of the hint/guided "
                                 "layer (SimKD: 1, RepDistiller: 2)", "--hint-layer")
        fitnet_stage1_epochs: int = option(
            0, "the paper's two-stage training: hint-only epochs before CE+KD (0: one stage "
            "with all terms, as the reference code)", "--fitnet-stage1-epochs")

        def check(self):
            require(self.fitnet_stage1_epochs >= 0,
                    f"--fitnet_stage1_epochs must be 0 or more, got {self.fitnet_stage1_epochs}")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.hint_layer = int(self.options.hint_layer)
        self.stage1_epochs = int(self.options.fitnet_stage1_epochs)
        s_shapes = student.feature_shapes(self.preact)
        t_shapes = teacher.feature_shapes(self.preact)
        k = self.hint_layer
        for who, shapes in (("student", s_shapes), ("teacher", t_shapes)):
            maps = [i for i, s in enumerate(shapes) if len(s) == 3]
            if k not in maps:
                raise UserError(f"--hint_layer {k} is not a feature map of the {who} "
                                f"({model_name(student if who == 'student' else teacher)} "
                                f"has maps at {maps}); choose one of those")
        self.regressor = ConvReg(s_shapes[k], t_shapes[k])

    def stages(self):
        main = Stage("main", self.run_info.epochs)
        if self.stage1_epochs == 0:
            return [main]
        return [Stage("hint", self.stage1_epochs, selects_best=False), main]

    def stage_parameters(self, stage):
        if stage.name != "hint":
            return self.trainable_parameters()
        # the student parameters that the hint map depends on, found by one dummy pass
        params = [p for p in self.student.parameters() if p.requires_grad]
        with evaluating(self.student, grad=True):
            x = dummy_input(self.student, self.student.input_size, device=params[0].device)
            feats, _ = self.student(x, is_feat=True, preact=self.preact)
            grads = torch.autograd.grad(feats[self.hint_layer].sum(), params, allow_unused=True)
        used = [p for p, g in zip(params, grads) if g is not None]
        return used + list(self.regressor.parameters())

    def hint(self, feats_s, feats_t):
        f_s, f_t = self.regressor(feats_s[self.hint_layer], feats_t[self.hint_layer])
        return hint_loss(f_s, f_t)

    def forward_train(self, images, targets, **batch):
        if self.stage != "hint":
            return super().forward_train(images, targets, **batch)
        with torch.no_grad():
            feats_t, _ = self._run(self.teacher, images, self.preact)
        feats_s, logits_s = self._run(self.student, images, self.preact)
        return logits_s, {"hint": self.beta * self.hint(feats_s, feats_t)}

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        if self.stage1_epochs > 0:  # the paper's second stage: CE and KD only
            return {}
        return {"hint": self.beta * self.hint(feats_s, feats_t)}

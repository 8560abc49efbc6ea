"""Chen, Mei, Wang, Feng & Chen 2022, "Knowledge Distillation with the Reused Teacher
Classifier" (CVPR)."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from models import create_model, register_deployed
from models.base import FeatureModel

from .base import Distiller, Weights
from .common import reusable_classifier
from .options import MethodOptions, option
from .registry import Reference, register_distiller


def simkd_projector(s_channels: int, t_channels: int, factor: int = 2) -> nn.Sequential:
    """SimKD's bottleneck: 1x1 conv, BN, ReLU, 3x3 conv, BN, ReLU, 1x1 conv, BN, ReLU, with
    ``t_channels // factor`` middle channels; convs without bias, the 3x3 one not grouped."""
    mid = t_channels // factor
    return nn.Sequential(
        nn.Conv2d(s_channels, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, mid, 3, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
        nn.Conv2d(mid, t_channels, 1, bias=False), nn.BatchNorm2d(t_channels), nn.ReLU(inplace=True))


def simkd_head(feat_s, projector, classifier, teacher_size, preact=False):
    """Project the student's last map (average-pooled to the teacher's size when larger) and
    classify its spatial mean with the teacher's classifier. Returns (projected map, pooled,
    logits); with ``preact`` the map is taken before the projector's last ReLU."""
    if feat_s.shape[2] > teacher_size[0]:
        feat_s = F.adaptive_avg_pool2d(feat_s, tuple(teacher_size))
    pre = projector[:-1](feat_s)
    proj = F.relu(pre)  # the projector's last ReLU, not in place: ``pre`` may be returned
    pooled = proj.mean(dim=(2, 3))
    return (pre if preact else proj), pooled, classifier(pooled)


def simkd_loss(proj: torch.Tensor, feat_t: torch.Tensor) -> torch.Tensor:
    """MSE between the projected student map and the teacher's map, the teacher's average-pooled
    to the student's size when larger (the student's was pooled before projecting)."""
    if feat_t.shape[2] > proj.shape[2]:
        feat_t = F.adaptive_avg_pool2d(feat_t, proj.shape[2:])
    return F.mse_loss(proj, feat_t)


@register_distiller("simkd")
class SimKD(Distiller):
    """SimKD: a projector maps the student's last feature map ``feats[-2]`` to the teacher's
    (``beta * MSE``), and the teacher's frozen classifier, applied to the pooled projection,
    gives the student's logits at test time (and for the training accuracy).

    Reference code: SimKD ``models/util.py`` (class SimKD) and ``helper/loops.py``
    (train_distill / validate_distill, ``simkd`` branches). Defaults from SimKD's
    run_distill.sh and train_student.py: ``-c 0 -d 0 -b 1``, ``-f/--factor 2``. With ``-c`` or
    ``-d`` non-zero, CE and KD use the student's own logits, as in the reference.

    Differences from the reference: it pools square maps (``(t_H, t_H)``), we pool to
    ``(t_H, t_W)`` (the same for square maps). Its test pass runs the teacher to read the
    teacher map's size; we store that size at start-up (same result for the input size the
    models were built for), so evaluation and the saved student need no teacher: the
    checkpoint's ``deploy`` entry holds the student, the projector and a copy of the teacher's
    classifier (``models.create_deployed("simkd", ...)``, read by ``load_teacher``).
    The code also holds a depthwise 3x3 variant, commented out; it is not offered here.
    """

    reference = Reference(
        label="SimKD",
        row=9,
        paper="Chen et al. 2022 (CVPR)",
        code="DefangChen/SimKD `models/util.py`",
        shown=("factor",),
        extra_params="214,016",
        notes="the student checkpoint is self-contained: it evaluates and serves as a teacher "
              "with its projector and the reused classifier",
        usage="-f 2",
    )

    combinable = False  # its own training step / test-time model

    default_weights = Weights(cls=0.0, div=0.0, beta=1.0)

    @dataclass(frozen=True)
    class Options(MethodOptions):
        factor: int = option(
            2, "SimKD projector reduction factor (middle channels = teacher's / f)", "-f",
            "--simkd_factor")

    def __init__(self, student, teacher, options=None, **kw):
        super().__init__(student, teacher, options, **kw)
        self.factor = int(self.options.factor)
        s_shape, t_shapes = student.feature_shapes()[-2], teacher.feature_shapes()
        t_channels = t_shapes[-2][0]
        if len(s_shape) != 3 or len(t_shapes[-2]) != 3:
            raise UserError("--distill simkd needs convolutional feature maps from both models")
        if not 1 <= self.factor <= t_channels:
            raise UserError(f"-f/--factor must be between 1 and {t_channels}, got {self.factor}")
        classifier = reusable_classifier(teacher, "simkd", t_channels)
        self.teacher_size = tuple(t_shapes[-2][1:])
        self.projector = simkd_projector(s_shape[0], t_channels, self.factor)
        self._deploy_kwargs = {
            "student": getattr(student, "model_name", None), "num_classes": classifier.out_features,
            "s_channels": s_shape[0], "t_channels": t_channels, "factor": self.factor,
            "teacher_size": list(self.teacher_size), "cls_in": classifier.in_features,
            "cls_out": classifier.out_features}

    def forward_train(self, images, targets, **batch):
        with torch.no_grad():
            feats_t, logits_t = self.teacher(images, is_feat=True)
        feats_s, logits_s = self.student(images, is_feat=True)
        proj, _, logits = simkd_head(feats_s[-2], self.projector, self.teacher.get_classifier(),
                                     self.teacher_size)
        losses = {}
        if self.cls_weight:
            losses["cls"] = self.cls_weight * self.cls_loss(logits_s, targets, batch)
        if self.div_weight:
            losses["kd"] = self.div_weight * self.kd_term(logits_s, logits_t)
        losses["simkd"] = self.beta * simkd_loss(proj, feats_t[-2])
        return logits, losses

    def forward_test(self, images):
        feats_s, _ = self.student(images, is_feat=True)
        return simkd_head(feats_s[-2], self.projector, self.teacher.get_classifier(),
                          self.teacher_size)[2]

    def deploy_state(self):
        if self._deploy_kwargs["student"] is None:
            return None  # a student not built by name cannot be rebuilt later
        state = {}
        for prefix, module in (("student", self.student), ("projector", self.projector),
                               ("classifier", self.teacher.get_classifier())):
            state.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
        return {"builder": "simkd", "kwargs": dict(self._deploy_kwargs), "state_dict": state}


class SimKDStudent(FeatureModel):
    """A trained SimKD student as one model: student, projector, and the reused classifier.

    ``forward(x)`` gives SimKD's test logits; ``forward(x, is_feat=True)`` gives the student's
    features with the last map replaced by the projected one and the pooled entry recomputed,
    so the model can itself serve as a teacher (also for SimKD or SRRL).
    """

    def __init__(self, student, projector, classifier, teacher_size):
        super().__init__()
        self.student, self.projector, self.classifier = student, projector, classifier
        self.teacher_size = tuple(teacher_size)
        self.input_size = student.input_size

    def forward(self, x, is_feat=False, preact=False):
        feats, _ = self.student(x, is_feat=True, preact=preact)
        proj, pooled, logits = simkd_head(feats[-2], self.projector, self.classifier,
                                          self.teacher_size, preact)
        if not is_feat:
            return logits
        return feats[:-2] + [proj, pooled], logits

    def get_classifier(self):
        return self.classifier

    def get_bn_before_relu(self):
        return self.student.get_bn_before_relu()[:-1] + [self.projector[-2]]


@register_deployed("simkd")
def build_simkd_student(*, student, num_classes, s_channels, t_channels, factor, teacher_size,
                        cls_in, cls_out):
    return SimKDStudent(create_model(student, num_classes=num_classes),
                        simkd_projector(s_channels, t_channels, factor),
                        nn.Linear(cls_in, cls_out), teacher_size)

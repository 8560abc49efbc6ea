"""The distiller contract (DESIGN.md, "Distiller"): the base class, its stages, weights and
what a method may know of the run."""
import argparse
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from helper.core.errors import UserError
from .options import MethodOptions, option


@dataclass(frozen=True)
class Stage:
    """One training stage. Multi-stage methods (FT, AB, FSP, SSKD, ...) declare several; the
    trainer runs them in order with a fresh optimizer over ``stage_parameters(stage)``.

    ``lr`` and ``lr_decay_epochs`` (counted from the stage's start) default to the flags;
    only epochs of stages with ``selects_best`` compete for best.pth.
    """
    name: str
    epochs: int
    lr: Optional[float] = None
    lr_decay_epochs: Optional[Tuple[int, ...]] = None
    selects_best: bool = True


@dataclass(frozen=True)
class Weights:
    """The effective weights of SimKD's ``cls * CE + div * KD + beta * method``, and the CE
    term's ``--label_smoothing`` (the run's one value; ``MethodConfig.create`` puts it here, the
    run folder's name shows only ``cls``, ``div`` and ``beta``)."""
    cls: float = 1.0
    div: float = 0.0
    beta: float = 0.0
    label_smoothing: float = 0.0


def parse_beta(text: str):
    """``-b``: a number (one method), or ``name=weight,...`` naming methods of ``--distill``."""
    text = str(text).strip()
    try:
        if "=" not in text:
            return float(text)
        weights = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            if not sep or not name.strip():
                raise ValueError(item)
            if name.strip() in weights:
                raise argparse.ArgumentTypeError(f"{name.strip()} is named twice in {text!r}; "
                                                 "give each method's weight once")
            weights[name.strip()] = float(value)
        return weights
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, or name=weight pairs such as "
                                         f"dkd=1,reviewkd=8, got {text!r}") from None


@dataclass(frozen=True)
class WeightOptions(MethodOptions):
    """The ``-c/-d/-b`` flags; ``None`` takes the method's ``default_weights``."""
    title = ("loss weights: cls * CE + div * KD + beta * method (SimKD -c -d -b, "
             "RepDistiller -r -a -b)")
    cls: Optional[float] = option(None, "weight of cross-entropy (method default, 1 for most)",
                                  "-c", "-r", "--gamma", type=float)
    div: Optional[float] = option(None, "weight of the KD term (method default, 1 for most)",
                                  "-d", "-a", "--alpha", type=float)
    beta: Optional[float] = option(
        None, "weight of the method's own loss (method default); with several methods, "
        "name each: -b dkd=1,reviewkd=8", "-b", type=parse_beta, metavar="B|NAME=B,...")


@dataclass(frozen=True)
class RunInfo:
    """What a method may know of the run: its length, the batch of one process, the data and
    whether the teacher trains in training mode (``--teacher_train``)."""
    epochs: int = 1
    batch_size: int = 64
    num_classes: int = 100
    input_size: Optional[Tuple[int, ...]] = None  # (C, H, W); None: the model's own
    train_size: int = 0
    val_size: int = 0
    # --teacher_train: the teacher in training mode (BatchNorm on batch statistics) during
    # training epochs; it never learns either way (Distiller.train)
    teacher_train: bool = False


LEVELS = ("none", "logits", "pooled", "maps")  # each reads what the one before reads, and more
BEYOND = (None, "views", "hooks")


@dataclass(frozen=True)
class Reads:
    """What a method reads of the networks, the one declaration from which the rest derives:
    the features computed (``feature_mode``), what a cache of the teacher's outputs serves
    (``cacheable``), whether several teachers' mean logit can stand in (``accepts_ensemble``),
    and which methods combine (those reading stage maps must agree on ``preact``).

    ``teacher`` / ``student``: of the network's forward on the batch, "none", "logits",
    "pooled" (the pooled feature ``feats[-1]`` and the logits) or "maps" (every stage's maps
    too); ``preact``: the maps taken before each stage's last ReLU; ``teacher_beyond``: the
    teacher read beyond that forward, on other views of the images ("views": MLKD) or
    through hooks on its layers ("hooks": CAT-KD), which no cache serves."""
    teacher: str = "maps"
    student: str = "maps"
    preact: bool = False
    teacher_beyond: Optional[str] = None

    def __post_init__(self):
        for who in ("teacher", "student"):
            if getattr(self, who) not in LEVELS:
                raise ValueError(f"Reads.{who} is one of {LEVELS}, got {getattr(self, who)!r}")
        if self.teacher_beyond not in BEYOND:
            raise ValueError(f"Reads.teacher_beyond is one of {BEYOND}, "
                             f"got {self.teacher_beyond!r}")

    def derived(self) -> dict:
        """The class attributes the distiller's code reads, derived from this declaration."""
        cacheable = (self.teacher if self.teacher in ("logits", "pooled")
                     and self.teacher_beyond is None else None)
        return {"teacher_feats": self.teacher in ("pooled", "maps"),
                "student_feats": self.student in ("pooled", "maps"),
                "preact": self.preact,
                "stage_maps": "maps" in (self.teacher, self.student),
                "cacheable": cacheable}


class Distiller(nn.Module):
    """Holds the student, the frozen teacher and the method's trainable extras.

    The total loss follows SimKD's convention ``cls * CE + div * KD + beta * method``; the
    ``cls`` and ``kd`` terms are computed here (the KD term by the ``kd`` object that
    ``kd.py`` builds, with its switches), a method adds its own in ``method_losses``.

    The teacher is deliberately *not* a registered submodule: it never appears in
    ``parameters()`` or ``state_dict()``, so it is never handed to the optimizer, saved with the
    student, or wrapped by DistributedDataParallel. ``_apply`` moves it along with the rest.

    A method declares its flags as ``Options`` (a frozen ``MethodOptions`` dataclass) and
    receives only an instance of it, with the effective ``Weights``, the KD term and
    ``RunInfo``. Class attributes a method may set:
      - ``reads``: what it reads of the teacher and the student (``Reads``); the attributes
        derived from it (``teacher_feats``, ``student_feats``, ``preact``, ``stage_maps``,
        ``cacheable``) are set from it, never by hand.
      - ``default_weights``: ``-c``, ``-d``, ``-b`` when not given.
    """

    Options = MethodOptions
    reads = Reads()
    default_weights = Weights(cls=1.0, div=1.0, beta=0.0)
    combinable = True  # False: replaces the training step or test model (distillers/combine.py)
    min_teachers = 1  # teachers (--path_t) a run needs at least, when it needs one (CA-MKD: 2)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        by_hand = sorted(set(Reads().derived()) & set(vars(cls)))
        if by_hand:
            raise TypeError(f"{cls.__qualname__} sets {', '.join(by_hand)} by hand; declare "
                            "what it reads instead: reads = Reads(...)")
        for name, value in cls.reads.derived().items():
            setattr(cls, name, value)

    def __init__(self, student: nn.Module, teacher: Optional[nn.Module], options=None, *,
                 weights: Optional[Weights] = None, kd=None, run: Optional[RunInfo] = None):
        super().__init__()
        self.options = self.Options() if options is None else options
        self.run_info = run or RunInfo()
        self.epoch = 0  # epoch within the current stage, from 1
        self.stage = "main"
        if self.requires_teacher(self.options) and teacher is None:
            raise UserError(f"--distill {self.name} needs a teacher; pass --path_t CHECKPOINT")
        self.student = student
        self._teacher = [teacher] if teacher is not None else []
        if teacher is not None:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
        weights = weights or self.default_weights
        self.cls_weight, self.div_weight = float(weights.cls), float(weights.div)
        self.beta = float(weights.beta)
        # of the cls CE term (cls_loss): --label_smoothing, with the weights
        self.label_smoothing = float(weights.label_smoothing)
        # The KD term and its switches (kd.py); its learned temperature (--ctkd) is an extra.
        if kd is None and self.div_weight:
            raise ValueError("a KD term is needed for -d > 0: pass kd=KDTerm(T) (distillers.kd), "
                             "or build the distiller with MethodConfig")
        self.kd = kd
        self.temperature = getattr(kd, "temperature", None)

    # ---- options -----------------------------------------------------------------------
    @classmethod
    def requires_teacher(cls, options) -> bool:
        """Whether a run with these options needs ``--path_t``; the one place that says so."""
        return True

    @classmethod
    def accepts_ensemble(cls, options) -> bool:
        """Whether the method works with several teachers (``--path_t A B ...``, a
        ``models.teachers.TeacherEnsemble`` whose output is their mean logit): by default the
        methods that read only the teacher's logits (not through hooks on its layers); one
        that reads the members itself (CA-MKD) says True."""
        return cls.reads.teacher == "logits" and cls.reads.teacher_beyond != "hooks"

    @classmethod
    def effective_weights(cls, options, given: WeightOptions,
                          kd_T: float) -> Tuple[Weights, float]:
        """The weights and KD temperature a run uses: the flags given, else the method's
        defaults (a method whose options imply a setting overrides this)."""
        d = cls.default_weights
        weights = [float(default if value is None else value)
                   for value, default in ((given.cls, d.cls), (given.div, d.div), (given.beta, d.beta))]
        return Weights(*weights), kd_T

    def batch_requests(self) -> Dict[str, dict]:
        """Extra entries the data pipeline must put in each training batch, ``{key: parameters
        of its provider}`` (e.g. CRD's ``contrast_index`` with ``nce_k``); the loop passes
        them to ``forward_train`` as keyword arguments."""
        return {}

    # ---- teacher -----------------------------------------------------------------------
    @property
    def teacher(self):
        return self._teacher[0] if self._teacher else None

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and (self.run_info.teacher_train or self.teacher_trains()))
        return self

    @property
    def teacher_train_mode(self) -> bool:
        """``--teacher_train`` as this distiller's run has it (``run_info.teacher_train``)."""
        return self.run_info.teacher_train

    def teacher_trains(self) -> bool:
        """Whether the teacher runs in training mode (BatchNorm on batch statistics) during
        training epochs; it never learns either way (its parameters have
        ``requires_grad=False`` and its forward runs without a graph). Every method takes
        ``--teacher_train`` (``run_info.teacher_train``); this hook is for a method that always
        needs it."""
        return False

    def stages(self) -> List[Stage]:
        """The stages this method trains in; one of ``run_info.epochs`` by default."""
        return [Stage("main", self.run_info.epochs)]

    def stage_parameters(self, stage: Stage):
        """What the optimizer of ``stage`` trains."""
        return self.trainable_parameters()

    def on_epoch_start(self, epoch: int, train_loader=None, stage: Stage = None):
        """Called before each epoch with the epoch counted within its stage, from 1
        (warm-ups, re-matching, schedules)."""
        self.epoch = epoch
        if stage is not None:
            self.stage = stage.name

    # ---- forward -----------------------------------------------------------------------
    def forward(self, images, targets=None, **batch):
        if self.training:
            return self.forward_train(images, targets, **batch)
        return self.forward_test(images)

    def forward_test(self, images):
        return self.student(images)

    def forward_train(self, images, targets, **batch) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        # The teacher first: its forward pass then does not run beside the student's graph,
        # which made a resnet32x4 -> resnet8x4 KD iteration about 5% slower on the CPU.
        # --teacher_cache's batches carry the teacher's outputs instead, and it does not run:
        # its logits, and for methods with cacheable == "pooled" its pooled feature. A cached
        # teacher gives only that feature, feats_t[-1] (feats_t = [pooled]), all those read.
        logits_t, pooled_t = batch.pop("teacher_logits", None), batch.pop("teacher_pooled", None)
        feats_t = None if pooled_t is None else [pooled_t]
        if logits_t is None and self.teacher is not None and (
                self.div_weight or self.uses_teacher_output()):
            with torch.no_grad():
                feats_t, logits_t = self._run(self.teacher, images, self.feature_mode("teacher"))
        feats_s, logits_s = self._run(self.student, images, self.feature_mode("student"))
        losses = {}
        if self.cls_weight:
            losses["cls"] = self.cls_weight * self.cls_loss(logits_s, targets, batch)
        if self.div_weight and logits_t is not None:
            losses["kd"] = self.div_weight * self.kd_term(logits_s, logits_t)
        losses.update(self.method_losses(feats_s=feats_s, logits_s=logits_s, feats_t=feats_t,
                                         logits_t=logits_t, targets=targets, images=images,
                                         **batch))
        return logits_s, losses

    def feature_mode(self, who: str) -> Optional[bool]:
        """How the method reads the features of ``who`` ("teacher" or "student"): None for
        not at all (only logits are computed), else the ``preact`` flag they are taken with."""
        wanted = self.teacher_feats if who == "teacher" else self.student_feats
        return self.preact if wanted else None

    def _run(self, model, images, preact: Optional[bool]):
        """``(features or None, logits)`` of ``model``; features when ``preact`` is not None."""
        if preact is not None:
            return model(images, is_feat=True, preact=preact)
        return None, model(images)

    def cls_loss(self, logits_s, targets, batch):
        """The unweighted cross-entropy term, with ``--label_smoothing``; MixUp/CutMix batches
        carry ``soft_targets`` (dataset/augment.py), which it then uses."""
        return F.cross_entropy(logits_s, batch.get("soft_targets", targets),
                               label_smoothing=self.label_smoothing)

    def uses_kd_temperature(self) -> bool:
        """Whether the run has a term using the KD temperature (what ``--ctkd`` learns)."""
        return self.div_weight != 0

    def kd_temperature(self):
        """The KD temperature of this epoch (``--kd_T``, or the learned one)."""
        return self.kd.temperature_at(self.epoch)

    def kd_term(self, logits_s, logits_t):
        """The unweighted KD term, with the switches of ``kd.py``."""
        return self.kd(logits_s, logits_t, self.epoch)

    def uses_teacher_output(self) -> bool:
        """Whether this step's ``method_losses`` reads the teacher's output (beyond the KD
        term); a method may answer by stage."""
        return self.teacher is not None

    def method_losses(self, *, feats_s, logits_s, feats_t, logits_t, targets, **batch):
        """The method's own weighted loss terms, ``{name: beta * loss}``."""
        return {}

    # ---- checkpoints -------------------------------------------------------------------
    def _student_prefixes(self):
        """Where the student's weights sit in ``state_dict()`` (they are saved apart)."""
        return ("student.",)

    def extra_state_dict(self):
        """Everything the method trains or remembers beyond the student's weights."""
        prefixes = self._student_prefixes()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(prefixes)}

    def load_extra_state_dict(self, state):
        own = self.extra_state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise UserError(f"checkpoint extras do not match --distill {self.name}: "
                            f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        student = self.student.state_dict()
        full = {prefix + k: v for prefix in self._student_prefixes() for k, v in student.items()}
        full.update(state)
        self.load_state_dict(full, strict=True)

    def deploy_state(self):
        """A self-contained model for evaluation or later use as a teacher, or None when the
        student alone is that model. Methods whose test-time model includes extras (SimKD)
        return ``{"builder": name, "kwargs": {...}, "state_dict": ...}`` where ``name`` is
        registered with ``models.register_deployed``."""
        return None

    def extra_models(self) -> Dict[str, Tuple[str, nn.Module]]:
        """Whole networks the method trains beside the student (DML's peers), ``{name:
        (model name, module)}``: the trainer validates each every epoch and writes
        ``<name>_best.pth`` and ``<name>_last.pth`` that load alone (``--path_t``,
        ``--evaluate``)."""
        return {}

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


for _name, _value in Reads().derived().items():  # the base reads everything
    setattr(Distiller, _name, _value)

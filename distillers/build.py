"""A method's whole configuration, built once from parsed flags, and the distiller built from it.

``MethodConfig`` holds what a run of one method uses: its registered name, its own options
object, the effective loss weights and the KD term's options (with the effective
temperature). Nothing here reads a namespace after ``from_namespace``.
"""
import dataclasses
from dataclasses import dataclass

from helper.core.errors import UserError
from .base import Distiller, RunInfo, WeightOptions, Weights
from .kd import KDOptions, KDTerm
from .options import MethodOptions, options_from
from .registry import distiller_classes, get_distiller


@dataclass(frozen=True)
class MethodConfig:
    name: str
    options: MethodOptions
    weights: Weights
    kd: KDOptions

    @classmethod
    def create(cls, name: str, options: MethodOptions = None, weights: WeightOptions = None,
               kd: KDOptions = None, label_smoothing: float = 0.0) -> "MethodConfig":
        """The effective configuration of method ``name`` (an alias gives its method);
        ``label_smoothing`` (``--label_smoothing``) of the CE term goes with the weights."""
        method = get_distiller(name)
        options = method.Options() if options is None else options
        kd = KDOptions() if kd is None else kd
        weights = weights or WeightOptions()
        if isinstance(weights.beta, dict):  # -b name=weight
            weights = dataclasses.replace(weights, beta=_named_beta(method.name, weights.beta))
        effective, kd_T = method.effective_weights(options, weights, kd.kd_T)
        effective = dataclasses.replace(effective, label_smoothing=float(label_smoothing))
        return cls(method.name, options, effective, dataclasses.replace(kd, kd_T=kd_T))

    @classmethod
    def from_namespace(cls, name: str, namespace) -> "MethodConfig":
        """From parsed flags (or any object with those attributes): only the method's own
        options, the weights, the KD term's and ``label_smoothing`` are read."""
        method = get_distiller(name)
        return cls.create(name, options_from(method.Options, namespace),
                          options_from(WeightOptions, namespace),
                          options_from(KDOptions, namespace), label_smoothing_from(namespace))

    @property
    def method(self):
        return get_distiller(self.name)

    @property
    def parts(self):
        return (self,)

    def min_teachers(self) -> int:
        return self.method.min_teachers

    def option_values(self) -> dict:
        """The method's options by flag name (summary.json, config.yaml, the resume checks)."""
        return dataclasses.asdict(self.options)

    def beta_label(self) -> str:
        """``-b`` in the run folder's name."""
        return f"{self.weights.beta:g}"

    def beta_value(self):
        """``-b`` as config.yaml and summary.json record it."""
        return self.weights.beta

    def requires_teacher(self) -> bool:
        return self.method.requires_teacher(self.options)

    def build(self, student, teacher, run: RunInfo = None) -> Distiller:
        """The distiller of this configuration over ``student`` and ``teacher``."""
        kd_term = KDTerm.from_options(self.kd)
        distiller = self.method(student, teacher, self.options, weights=self.weights,
                                kd=kd_term, run=run or RunInfo())
        if kd_term.temperature is not None and not distiller.uses_kd_temperature():
            raise UserError(f"--ctkd learns the KD temperature, but --distill {self.name} has no "
                            f"KD term here (-d {distiller.div_weight:g}); drop --ctkd, or pass "
                            "-d > 0 to a method with a KD term")
        return distiller


def label_smoothing_from(namespace) -> float:
    """``--label_smoothing`` of parsed flags; 0 when the namespace has none."""
    value = getattr(namespace, "label_smoothing", None)
    return 0.0 if value is None else float(value)


def _named_beta(name, betas):
    """A one-method run's ``-b name=weight``: the weight, when it names this method once."""
    for key, value in betas.items():
        try:
            known = get_distiller(key).name
        except KeyError:
            known = key
        if known != name:
            raise UserError(f"-b names {key}, which is not in --distill {name}; "
                            f"use -b {name}=WEIGHT or a plain number")
    if len(betas) > 1:  # aliases of the one method
        raise UserError(f"-b names {name} {len(betas)} times ({', '.join(betas)}); give its "
                        "weight once")
    return next(iter(betas.values()))


def option_owners():
    """``(name, options class)`` of every flag group a student run offers, in help order."""
    return ([("loss weights", WeightOptions), ("kd", KDOptions)]
            + [(method.name, method.Options) for method in distiller_classes()])

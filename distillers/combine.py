"""Several methods in one run: ``--distill dkd+reviewkd -b dkd=1,reviewkd=8``.

The loss is ``cls * CE + div * KD + sum_m beta_m * loss_m``: the cross-entropy and the KD term
(``-c``, ``-d``, ``--kd_T`` and its switches) once, shared; each method's own terms from its
``method_losses``, weighed by its own ``-b`` and logged under its own name. The student and the
teacher run once per step; every method reads the same features. Each method keeps its own
options (its flags), extras and state; a method's extras are saved under ``methods.<name>.``.

A combination is refused in one line when its methods cannot share one step: a method that
trains in several stages or replaces the training step (``combinable = False``, e.g. SimKD's
test-time model), two methods that read the same network's features at different points (before
and after the ReLU), two methods that ask the data pipeline for the same batch entry with
different parameters, or methods whose default ``-c``/``-d``/``--kd_T`` differ (give the flag).
"""
import dataclasses
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch.nn as nn

from helper.core.errors import UserError
from .base import Distiller, RunInfo, WeightOptions, Weights
from .build import MethodConfig, label_smoothing_from
from .kd import KDOptions, KDTerm
from .options import MethodOptions, options_from
from .registry import get_distiller
from .sources import SPEC_HELP, is_source, loaded_name, split_spec

SEPARATOR = "+"


def split_methods(spec: str) -> Tuple[str, ...]:
    """The canonical names in ``--distill a+b`` (parts as ``sources.split_spec`` reads them; a
    method of the user's own by the name it was loaded under, never importing it); one line
    for an unknown or repeated one."""
    names = []
    for part in split_spec(spec):
        if is_source(part):
            name = loaded_name(part)
            if name is None:
                raise UserError(f"--distill {spec}: {part} is a method of your own, loaded only "
                                "when the command line names it (--distill, or --config FILE), "
                                "never because a file a run wrote names it")
            names.append(name)
            continue
        try:
            names.append(get_distiller(part).name)
        except KeyError as e:
            raise UserError(f"--distill {spec}: {e.args[0]}; or {SPEC_HELP}") from None
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"--distill {spec} names {', '.join(repeated)} twice; name each method once")
    return tuple(names)


def beta_text(betas: Dict[str, float]) -> str:
    """``-b``'s spelling of per-method weights (config.yaml, summary.json, --resume checks)."""
    return ",".join(f"{name}={value:g}" for name, value in betas.items())


def _beta_for(spec: str, names, given) -> Dict[str, Optional[float]]:
    """Each method's ``-b`` from the flag: named weights, or None (the method's default)."""
    if given is None:
        return {n: None for n in names}
    if not isinstance(given, dict):
        raise UserError(f"-b {given:g} is ambiguous with --distill {spec}; name each method's "
                        f"weight, e.g. -b {beta_text({n: given for n in names})}")
    betas = {n: None for n in names}
    for key, value in given.items():
        try:
            name = get_distiller(key).name
        except KeyError:
            name = key
        if name not in betas:
            raise UserError(f"-b names {key}, which is not in --distill {spec}; name only "
                            f"{', '.join(names)}")
        if betas[name] is not None:  # an alias of a method named before
            raise UserError(f"-b names {name} twice (as {key} too); give each method's "
                            "weight once")
        betas[name] = value
    return betas


def _shared(spec, flag, values):
    """The one value the methods agree on for ``flag``, else a line asking for it."""
    distinct = sorted(set(values.values()))
    if len(distinct) > 1:
        each = ", ".join(f"{n} {v:g}" for n, v in values.items())
        raise UserError(f"the methods of --distill {spec} default to different {flag} ({each}); "
                        f"give {flag} explicitly")
    return distinct[0]


@dataclass(frozen=True)
class CombinedConfig:
    """The configuration of a combination: each method's ``MethodConfig`` (its options and its
    ``beta``) and the shared ``cls``/``div`` weights and KD term. Same interface as
    ``MethodConfig``."""
    name: str
    parts: tuple
    weights: Weights     # cls, div, label_smoothing shared; beta unused (each part has its own)
    kd: KDOptions

    @classmethod
    def from_namespace(cls, spec: str, namespace) -> "CombinedConfig":
        names = split_methods(spec)
        given = options_from(WeightOptions, namespace)
        kd = options_from(KDOptions, namespace)
        betas = _beta_for(spec, names, given.beta)
        parts, cls_w, div_w, temps = [], {}, {}, {}
        for name in names:
            method = get_distiller(name)
            if not method.combinable:
                raise UserError(f"--distill {spec}: {name} replaces the training step or the "
                                "test-time model and cannot be combined; run it alone")
            options = options_from(method.Options, namespace)
            one = dataclasses.replace(given, beta=betas[name])
            weights, kd_T = method.effective_weights(options, one, kd.kd_T)
            cls_w[name], div_w[name], temps[name] = weights.cls, weights.div, kd_T
            parts.append((name, options, weights.beta))
        shared = Weights(cls=_shared(spec, "-c", cls_w), div=_shared(spec, "-d", div_w),
                         beta=0.0, label_smoothing=label_smoothing_from(namespace))
        kd = dataclasses.replace(kd, kd_T=_shared(spec, "--kd_T", temps))
        # each method knows the run's -c, -d and --label_smoothing (for terms of its own such
        # as MLKD's CE on its second view); the combination computes the CE and KD terms once
        parts = tuple(MethodConfig(name, options, dataclasses.replace(shared, beta=beta), kd)
                      for name, options, beta in parts)
        return cls(SEPARATOR.join(names), parts, shared, kd)

    @property
    def method(self):
        return Combined

    @property
    def betas(self) -> Dict[str, float]:
        return {p.name: p.weights.beta for p in self.parts}

    def beta_label(self) -> str:
        """``-b`` in the run folder's name: each method's weight, in ``--distill`` order."""
        return ",".join(f"{b:g}" for b in self.betas.values())

    def beta_value(self):
        return beta_text(self.betas)

    def option_values(self) -> dict:
        values = {}
        for part in self.parts:
            values.update(part.option_values())
        return values

    def requires_teacher(self) -> bool:
        return any(p.requires_teacher() for p in self.parts)

    def min_teachers(self) -> int:
        return max(p.min_teachers() for p in self.parts)

    def build(self, student, teacher, run: RunInfo = None) -> "Combined":
        run = run or RunInfo()
        kd_term = KDTerm.from_options(self.kd)
        parts = [p.method(student, teacher, p.options, weights=p.weights, kd=kd_term, run=run)
                 for p in self.parts]
        distiller = Combined(student, teacher, parts, weights=self.weights, kd=kd_term, run=run)
        if kd_term.temperature is not None and not distiller.uses_kd_temperature():
            raise UserError(f"--ctkd learns the KD temperature, but --distill {self.name} has no "
                            "term using it; drop --ctkd, or pass -d > 0")
        return distiller


CACHE_KINDS = ("logits", "pooled")  # each reads what the one before reads, and more


def merged_cacheable(kinds) -> Optional[str]:
    """``--teacher_cache`` for a combination: every method must be able to use the cache; all
    "logits" -> "logits", "logits" and "pooled" (the pooled cache holds the logits too) ->
    "pooled"; any other (a method that reads more, None) -> None."""
    kinds = set(kinds)
    if not kinds or not kinds <= set(CACHE_KINDS):
        return None
    return max(kinds, key=CACHE_KINDS.index)


class Combined(Distiller):
    """The distiller of a combination (see the module's docstring): the shared CE and KD terms,
    then each method's ``method_losses`` on the same student and teacher outputs."""

    def __init__(self, student, teacher, parts, *, weights, kd, run=None):
        super().__init__(student, teacher, MethodOptions(), weights=weights, kd=kd, run=run)
        self.name = SEPARATOR.join(p.name for p in parts)
        for part in parts:
            self._check_combinable(part)
        self.methods = nn.ModuleDict({p.name: p for p in parts})
        self.teacher_feats = any(p.teacher_feats for p in parts)
        self.cacheable = merged_cacheable(p.cacheable for p in parts)
        self.student_feats = any(p.student_feats for p in parts)
        self._modes = {who: self._feature_mode(who) for who in ("teacher", "student")}
        self._requests = self._merged_requests()

    @classmethod
    def requires_teacher(cls, options) -> bool:
        return False  # the parts check their own teacher

    def _check_combinable(self, part):
        if not part.combinable:
            raise UserError(f"--distill {self.name}: {part.name} replaces the training step or "
                            "the test-time model and cannot be combined; run it alone")
        if len(part.stages()) > 1:
            stages = ", ".join(s.name for s in part.stages())
            raise UserError(f"--distill {self.name}: {part.name} trains in stages ({stages}) "
                            "and cannot be combined; run it alone, or set its stage epochs to 0")

    def _feature_mode(self, who):
        """The one point (``preact``) at which the methods read ``who``'s features."""
        modes = {p.name: p.feature_mode(who) for p in self.methods.values()}
        wanted = {m for m in modes.values() if m is not None}
        # methods reading only the pooled feature (the same either way) follow the others
        maps = {modes[p.name] for p in self.methods.values() if p.stage_maps} - {None}
        if len(maps) > 1:
            each = ", ".join(f"{n} {'before' if m else 'after'} the ReLU"
                             for n, m in modes.items()
                             if m is not None and self.methods[n].stage_maps)
            raise UserError(f"--distill {self.name}: the methods read the {who}'s features at "
                            f"different points ({each}); combine methods that agree")
        return (maps or wanted or {None}).pop()

    def _merged_requests(self):
        requests = {}
        for part in self.methods.values():
            for key, params in part.batch_requests().items():
                if key in requests and requests[key] != params:
                    raise UserError(f"--distill {self.name}: two methods need the batch entry "
                                    f"{key!r} with different settings ({requests[key]} and "
                                    f"{params}); combine methods that agree")
                requests[key] = params
        return requests

    def batch_requests(self):
        return dict(self._requests)

    def feature_mode(self, who):
        return self._modes[who]

    def teacher_trains(self):
        return any(p.teacher_trains() for p in self.methods.values())

    def uses_teacher_output(self):
        return any(p.uses_teacher_output() for p in self.methods.values())

    def uses_kd_temperature(self):
        return self.div_weight != 0 or any(p.uses_kd_temperature() for p in self.methods.values())

    def on_epoch_start(self, epoch, train_loader=None, stage=None):
        super().on_epoch_start(epoch, train_loader, stage)
        for part in self.methods.values():
            part.on_epoch_start(epoch, train_loader, stage)

    def extra_models(self):
        models = {}
        for part in self.methods.values():
            models.update(part.extra_models())
        return models

    def method_losses(self, **outputs):
        losses = {}
        for part in self.methods.values():
            for key, value in part.method_losses(**outputs).items():
                losses[f"{part.name}_{key}" if key in losses else key] = value
        return losses

    def _student_prefixes(self):
        return ("student.", *(f"methods.{name}.student." for name in self.methods))


def configure(spec: str, namespace):
    """The configuration of ``--distill spec`` from parsed flags: one method (``MethodConfig``)
    or several joined by ``+`` (``CombinedConfig``)."""
    names = split_methods(spec)
    if len(names) > 1:
        return CombinedConfig.from_namespace(spec, namespace)
    return MethodConfig.from_namespace(names[0], namespace)

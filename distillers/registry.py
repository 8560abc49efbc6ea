"""Distiller registry: ``--distill NAME`` picks a class registered here."""
import dataclasses
from typing import Dict, Iterable, List, Optional, Set, Tuple, Type

from helper.core.errors import UserError

_DISTILLERS: Dict[str, type] = {}
_SWITCHES: List["Reference"] = []


@dataclasses.dataclass(frozen=True)
class Reference:
    """What the methods table (README.md) and ``python -m distillers`` say of a method: a
    method's class attribute ``reference``, or a switch of every method's KD term
    (``register_switch``). Defaults are read from the code: the ``-c/-d/-b`` of
    ``default_weights`` and the options named in ``shown``. ``row`` places it in the table:
    the methods by their ``row`` (then by label), then the switches by theirs; the files are
    imported in no particular order, so the table never depends on it. A new method takes
    the next free number."""
    label: str                  # the table's name, e.g. "DKD"
    paper: str = ""             # e.g. "Zhao et al. 2022"
    code: str = ""              # the reference code the defaults follow
    shown: Tuple[str, ...] = ()  # options whose defaults the table shows
    defaults: str = ""          # said in words where ``shown`` cannot say it
    extra_params: str = "0"     # trainable parameters added for resnet32x4 -> resnet8x4
    notes: str = ""
    usage: str = ""             # flags beside ``--distill NAME`` in the table
    flags: str = ""             # a switch's flags (a method's: ``--distill NAME``)
    row: Optional[int] = None   # its row in the table (None: after the numbered ones)


class NameTaken(UserError, ValueError):
    """A method name registered twice (by two files, or by a user's file and a built-in)."""

    def __init__(self, name: str):
        super().__init__(f"distiller {name!r} is registered twice")
        self.name = name


def register_distiller(name: str, *aliases: str):
    """Class decorator registering a Distiller under ``name`` (and aliases)."""
    def wrap(cls):
        for key in (name, *aliases):
            if key in _DISTILLERS:
                raise NameTaken(key)
            _DISTILLERS[key] = cls
        cls.name = name
        return cls
    return wrap


def unregister(names: Iterable[str]) -> None:
    """Forget the names ``names`` (a user's methods whose loading failed, sources.py)."""
    for name in names:
        _DISTILLERS.pop(name, None)


def distiller_names():
    return sorted(_DISTILLERS)


def get_distiller(name: str) -> Type:
    if name not in _DISTILLERS:
        raise KeyError(f"unknown method {name!r}; choose one of: {', '.join(distiller_names())}")
    return _DISTILLERS[name]


def distiller_classes():
    """Each registered class once (aliases collapsed), in name order."""
    seen = []
    for key in distiller_names():
        if _DISTILLERS[key] not in seen:
            seen.append(_DISTILLERS[key])
    return seen


def register_switch(reference: Reference) -> Reference:
    """Add a switch of the KD term (not a method of its own) to the methods table."""
    _SWITCHES.append(reference)
    return reference


def switches() -> List[Reference]:
    return list(_SWITCHES)


def aliases_of(cls) -> List[str]:
    """The other names ``cls`` is registered under."""
    return [key for key, value in _DISTILLERS.items() if value is cls and key != cls.name]


def renamed_options(names: Iterable[str]) -> Dict[str, str]:
    """``{old option name: its name now}`` of the methods ``names``: the options they declared
    once under another name (a method's ``renamed_options``), which old config.yaml files
    hold."""
    renamed = {}
    for name in names:
        renamed.update(getattr(get_distiller(name), "renamed_options", {}))
    return renamed


def method_option_names(names: Iterable[str] = None) -> Set[str]:
    """The options the methods ``names`` (every registered method: None) declare, with the old
    names of those they renamed."""
    classes = distiller_classes() if names is None else [get_distiller(n) for n in names]
    return {key for cls in classes
            for key in (*(f.name for f in dataclasses.fields(cls.Options)),
                        *getattr(cls, "renamed_options", {}))}

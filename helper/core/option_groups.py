"""Options declared as frozen dataclasses, and the command line generated from them: the one
idiom of every flag, a method's (``distillers/``) and the run's (data, optimisation, speed,
distributed, teacher, run folder).

A module declares its flags where they are used::

    @dataclass(frozen=True)
    class Options(MethodOptions):
        at_p: float = option(2.0, "exponent p of the attention map", "--at-p")

The field name is the flag (``--at_p``) and the attribute; the extra strings are aliases
(SimKD/RepDistiller spellings). A flag is added to the parser once, in a group titled by the
dataclass that declares it, so a piece shared by several owners (a base dataclass such as
``InitStageOptions``) appears once. ``options_from`` builds the object from a parsed namespace
(or any object with those attributes; a missing one keeps its default), and each instance's
``check()`` validates its values with one clear line.
"""
import argparse
import dataclasses
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from helper.core.errors import UserError


def option(default: Any, help: Optional[str], *aliases: str, type=None,
           choices: Optional[Sequence] = None, metavar: Optional[str] = None,
           flag: Optional[str] = None, nargs=None, const=None, action=None):
    """A dataclass field that is also a command-line flag.

    ``type`` converts the command-line text (default: the type of ``default``; a bool default
    makes a ``store_true`` switch). ``flag`` replaces ``--<field name>`` as the main spelling.
    ``nargs``, ``const`` and ``action`` are argparse's. A list default is stored as a tuple
    (the dataclass is frozen) and given to argparse as a list.
    """
    meta = {"help": help, "aliases": aliases, "type": type, "choices": choices,
            "metavar": metavar, "flag": flag, "nargs": nargs, "const": const, "action": action}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: tuple(default),
                                 metadata={**meta, "list_default": list(default)})
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class OptionGroup:
    """Base of every group of options. ``title`` names the help group of the fields a class
    declares itself (a method's default: the method's name)."""
    title = None

    def check(self) -> None:
        """Raise ``UserError`` for values that cannot be used (one line, what to pass)."""


class MethodOptions(OptionGroup):
    """Base of a method's options (``distillers/``)."""


def _own_fields(cls) -> List[dataclasses.Field]:
    """The fields ``cls`` declares itself, not those it inherits."""
    own = cls.__dict__.get("__annotations__", {})
    return [f for f in dataclasses.fields(cls) if f.name in own]


def declaring_classes(options_cls) -> List[type]:
    """The dataclasses in ``options_cls``'s hierarchy that declare fields, base first."""
    return [c for c in reversed(options_cls.__mro__)
            if dataclasses.is_dataclass(c) and _own_fields(c)]


def flag_names(field: dataclasses.Field) -> Tuple[str, ...]:
    main = field.metadata.get("flag") or f"--{field.name}"
    return (main, *field.metadata.get("aliases", ()))


def default_of(field: dataclasses.Field):
    """A field's default as the parser holds it (a list where the field stores a tuple)."""
    if "list_default" in field.metadata:
        return list(field.metadata["list_default"])
    return field.default


def _add_field(group, field: dataclasses.Field) -> None:
    meta = field.metadata
    kwargs = {"dest": field.name, "default": default_of(field), "help": meta.get("help")}
    if meta.get("action") is not None:
        kwargs["action"] = meta["action"]
    if isinstance(field.default, bool) and meta.get("type") is None:
        kwargs["action"] = "store_false" if field.default else "store_true"
    else:
        for key in ("nargs", "const"):
            if meta.get(key) is not None:
                kwargs[key] = meta[key]
        kind = meta.get("type") or (type(field.default) if field.default is not None else str)
        kwargs["type"] = kind
        if meta.get("choices") is not None:
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
    group.add_argument(*flag_names(field), **kwargs)


def _title(cls, name: str) -> str:
    return cls.__dict__.get("title") or name


def group_titles(name: str, options_cls) -> List[str]:
    """The help groups of method ``name``'s options class: one per declaring dataclass."""
    return [_title(cls, name) for cls in declaring_classes(options_cls)]


def add_options(parser: argparse.ArgumentParser, owners: Iterable[Tuple[str, type]]) -> None:
    """Add the flags of each ``(name, options class)`` to ``parser``: one group per declaring
    dataclass, each added once however many methods share it."""
    added = set()
    for name, options_cls in owners:
        for cls in declaring_classes(options_cls):
            if cls in added:
                continue
            added.add(cls)
            add_fields(parser.add_argument_group(_title(cls, name)), cls)


def add_fields(group, cls) -> None:
    """Add the flags ``cls`` declares itself to an argparse group (or parser)."""
    for field in _own_fields(cls):
        _add_field(group, field)


def options_from(options_cls, namespace=None, **overrides):
    """An ``options_cls`` from the attributes of ``namespace`` that it declares (missing ones
    keep their defaults) and ``overrides``; checked."""
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    values = {name: getattr(namespace, name) for name in fields
              if namespace is not None and hasattr(namespace, name)}
    values.update(overrides)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise TypeError(f"{options_cls.__qualname__} has no option {', '.join(unknown)}")
    for name, value in values.items():  # a list option is held as a tuple (frozen, hashable)
        if "list_default" in fields[name].metadata and isinstance(value, list):
            values[name] = tuple(value)
    options = options_cls(**values)
    options.check()
    return options


def require(condition: bool, message: str) -> None:
    """``UserError(message)`` unless ``condition``: for ``MethodOptions.check``."""
    if not condition:
        raise UserError(message)

"""Distiller registry: ``--distill NAME`` picks a class registered here."""
from typing import Dict, Type

_DISTILLERS: Dict[str, type] = {}


def register_distiller(name: str, *aliases: str):
    """Class decorator registering a Distiller under ``name`` (and aliases)."""
    def wrap(cls):
        for key in (name, *aliases):
            if key in _DISTILLERS:
                raise ValueError(f"distiller {key!r} is registered twice")
            _DISTILLERS[key] = cls
        cls.name = name
        return cls
    return wrap


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

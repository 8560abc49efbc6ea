"""Extra batch entries a method asks for (``Distiller.batch_keys``), provided by wrapping the
training loader. The loop and the entry scripts never know which method needs what."""
from typing import Callable, Dict

from helper.core.errors import UserError

# Entries every loader already yields.
BUILTIN_KEYS = ("images", "targets", "index")

_PROVIDERS: Dict[str, Callable] = {}


def register_batch_key(key: str):
    """Register ``fn(loader, **parameters) -> loader`` that adds ``key`` to every training
    batch; the parameters are the method's (``Distiller.batch_requests``)."""
    def wrap(fn):
        if key in _PROVIDERS:
            raise ValueError(f"batch key {key!r} is registered twice")
        _PROVIDERS[key] = fn
        return fn
    return wrap


def add_batch_keys(loader, requests: Dict[str, dict], method: str):
    """``loader`` wrapped so that its batches hold every key of ``requests`` (``{key:
    parameters}``) that loaders do not yield already."""
    for key, parameters in requests.items():
        if key in BUILTIN_KEYS:
            continue
        if key not in _PROVIDERS:
            raise UserError(f"no data pipeline provides {key!r} for --distill {method}")
        loader = _PROVIDERS[key](loader, **parameters)
    return loader

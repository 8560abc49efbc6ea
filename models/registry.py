"""Model registry: every architecture is created by name, as in timm's ``create_model``."""
from typing import Callable, Dict

_MODELS: Dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Register a constructor ``fn(num_classes=...)`` under its function name."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def model_names():
    return sorted(_MODELS, key=str.lower)


def accepts(name: str, keyword: str) -> bool:
    """Whether the constructor of ``name`` takes ``keyword`` explicitly."""
    import inspect
    from . import sources
    if sources.is_source_name(name):
        return sources.accepts(name, keyword)
    return keyword in inspect.signature(_MODELS[name]).parameters


def unknown_model(name) -> str:
    """Why ``name`` names no model (one line), or '' when it does: a registered name, or one
    with a source prefix (``timm:NAME``, ``torchvision:NAME``, ``FILE.py:FUNCTION``; see
    models/sources.py), checked without building it."""
    from . import sources
    if sources.is_source_name(name):
        return sources.check(name) or ""
    if name in _MODELS:
        return ""
    return (f"invalid choice: {name!r} (choose one of: {', '.join(model_names())}; or "
            "timm:NAME, torchvision:NAME, FILE.py:FUNCTION: see python -m models)")


def model_name(text: str) -> str:
    """``type=`` of the --model flags: ``text`` when it names a model, else an argparse error."""
    import argparse
    from . import sources
    reason = unknown_model(text)
    if reason:
        raise argparse.ArgumentTypeError(reason)
    return sources.canonical(text)


def folder_name(name: str) -> str:
    """``name`` as one folder-name component: a FILE.py:FUNCTION name loses its folders and
    path separators (``my_net.py:build`` -> ``my_net.py-build``)."""
    from . import sources
    source = sources.split(name)
    if source and source[0] == "file":
        import os
        path, function = source[1]
        return f"{os.path.basename(path)}-{function}"
    return name


def create_model(name: str, num_classes: int, **kwargs):
    """Build ``name`` (a registered name, or ``timm:``/``torchvision:``/``FILE.py:FUNCTION``)
    with ``num_classes`` outputs; ``model.model_name`` is the full name."""
    from . import sources
    if sources.is_source_name(name):
        model = sources.create(name, num_classes, **kwargs)
    elif name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    else:
        model = _MODELS[name](num_classes=num_classes, **kwargs)
    model.model_name = name
    return model


_DEPLOYED: Dict[str, Callable] = {}


def register_deployed(name: str):
    """Register a builder of a self-contained test-time model that wraps a student with a
    method's extras (e.g. SimKD's projector and reused classifier). Checkpoints name the
    builder under ``deploy``, so such a student can be evaluated or serve as a teacher."""
    def wrap(fn):
        if name in _DEPLOYED:
            raise ValueError(f"deployed model {name!r} is registered twice")
        _DEPLOYED[name] = fn
        return fn
    return wrap


def create_deployed(name: str, **kwargs):
    if name not in _DEPLOYED:
        raise KeyError(f"unknown deployed model {name!r}; known: {', '.join(sorted(_DEPLOYED))}")
    return _DEPLOYED[name](**kwargs)

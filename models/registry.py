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
    return keyword in inspect.signature(_MODELS[name]).parameters


def create_model(name: str, num_classes: int, **kwargs):
    if name not in _MODELS:
        raise KeyError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
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

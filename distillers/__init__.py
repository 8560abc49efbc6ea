"""Distillation methods, one file each, created by name through the registry.

Every module of this package is imported here, and a method's file registers its class as it
is imported (``@register_distiller``): a new method is one new file, named nowhere else. The
other modules (the contract in base.py, the registry, options, build, combine, common, the KD
term and its switches, sources.py's loader of the user's own methods) only define what the
methods use, so importing them is harmless; modules named with a leading ``_`` (``__main__``)
are left out. The order of the imports changes nothing: the registry lists the methods by
name, the methods table by each method's ``Reference.row``.

A method of the user's own, outside this package, is loaded from the command line only:
``--distill path/to/my_method.py:MyDistiller`` or ``--distill package.module:MyDistiller``
(``sources.py``).
"""
import importlib
import pkgutil

from .base import Distiller, Reads, RunInfo, Stage, WeightOptions, Weights  # noqa: F401
from .kd import KDOptions, KDTerm, kd_loss  # noqa: F401
from .options import MethodOptions, option, options_from  # noqa: F401
from .registry import distiller_classes, distiller_names, get_distiller, register_distiller  # noqa: F401
from .build import MethodConfig, option_owners  # noqa: F401


def _import_every_module():
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


_import_every_module()

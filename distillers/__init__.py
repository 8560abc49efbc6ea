"""Distillation methods, one file each, created by name through the registry."""
from .base import Distiller, Reads, RunInfo, Stage, WeightOptions, Weights  # noqa: F401
from .kd import KDOptions, KDTerm, kd_loss  # noqa: F401
from .options import MethodOptions, option, options_from  # noqa: F401
from .registry import distiller_classes, distiller_names, get_distiller, register_distiller  # noqa: F401

# Importing the method files registers them.
from . import (vanilla, kd, fitnet, at, sp, vid, crd, srrl, simkd, semckd, reviewkd,  # noqa: F401,E402
               dkd, dist, mgd, ab, fsp, ft, sskd, logits, l2, rkd, pkt, cc, nst, tfkd)
from . import ofd  # noqa: F401,E402
from . import kdsvd  # noqa: F401,E402
from . import catkd  # noqa: F401,E402
from . import dml  # noqa: F401,E402
from . import camkd  # noqa: F401,E402
from . import nkd, uskd, mlkd  # noqa: F401,E402
from .build import MethodConfig, option_owners  # noqa: F401,E402

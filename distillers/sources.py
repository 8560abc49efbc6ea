"""Methods of the user's own, outside this package, named wherever ``--distill`` takes a method:

- ``path/to/my_method.py:MyDistiller`` -- the class ``MyDistiller`` of that file, imported by
  its path (a target ending in ``.py`` is a file);
- ``package.module:MyDistiller`` -- the class of an importable module (on ``sys.path``).

CLASS is what follows the last ':' (a path may hold ':', e.g. a run folder's name). Such a part
joins others with ``+`` (``--distill kd+my_method.py:Mine``). The spec is read left to right,
one part at a time: a '+' ends a part, except that a '+' after text that is neither a method's
name nor a whole part (``FILE.py:CLASS``, ``MODULE:CLASS``) belongs to a file's path, up to
the first ``.py:CLASS`` (``c++/mine.py:Mine`` is one part, ``kd+mine.py:Mine`` two; a file
named ``kd+x.py`` is ``./kd+x.py:C``).

The class must be a ``Distiller`` subclass (distillers/base.py). Decorated with
``@register_distiller("name")`` it has that name, registered as its file is imported;
otherwise it is registered under its own ``name`` attribute, else its class name in lower case.
The name must be plain (letters, digits, '_' and '-': it is part of the run folder's name) and
no built-in method's. Its ``Options`` (a frozen ``MethodOptions`` dataclass of ``option``
fields, as a built-in's) are flags like a built-in's: ``helper/run/options.py`` loads the class
before it builds the parser, so they appear under ``--distill FILE.py:CLASS --help`` and go
into config.yaml, whose ``distill`` (the file as an absolute path) reruns it with ``--config``.

Code is imported only where the user names it: ``--distill`` on the command line, or a
config.yaml given with ``--config`` (the same thing written down). A method named by a file a
run wrote -- a checkpoint's or a summary.json's ``distill``, read by ``--resume``, the report or
``--evaluate`` -- is never imported: those only look up methods already loaded
(``loaded_name``), and a part naming a file that is not loaded is an error
(``combine.split_methods``).
"""
import dataclasses
import pickle
import re
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

from helper.core.errors import UserError
from helper.core.user_code import import_file, import_module, resolved

from .base import Distiller
from .options import MethodOptions
from .registry import NameTaken, distiller_names, get_distiller, register_distiller, unregister

FILE_PART = re.compile(r"^(?P<target>.+\.py):(?P<cls>[A-Za-z_]\w*)$", re.S)
MODULE_PART = re.compile(r"^(?P<target>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<cls>[A-Za-z_]\w*)$")
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SPEC_HELP = "your own: FILE.py:CLASS or MODULE:CLASS"

_LOADED: Dict[str, str] = {}  # canonical part -> the name its class is registered under


def source_of(part: str) -> Optional[Tuple[str, str, str]]:
    """``("file", path, class)`` or ``("module", module, class)`` for a part naming the user's
    code; None for a method's name."""
    for kind, pattern in (("file", FILE_PART), ("module", MODULE_PART)):
        match = pattern.match(part)
        if match:
            return kind, match.group("target"), match.group("cls")
    return None


def is_source(part: str) -> bool:
    return source_of(part) is not None


def canonical(part: str) -> str:
    """A part as recorded (config.yaml, summary.json, the --resume checks): a file by its
    absolute path, whatever the working directory; other parts as they are."""
    source = source_of(part)
    if source is None or source[0] != "file":
        return part
    return f"{resolved(source[1])}:{source[2]}"


def split_spec(spec: str) -> List[str]:
    """The parts of ``--distill spec`` by the rule of the module's docstring, stripped."""
    pieces, parts, i = spec.split("+"), [], 0
    names = set(distiller_names())
    while i < len(pieces):
        take = 1
        if pieces[i].strip() not in names and not is_source(pieces[i].strip()):
            for j in range(i + 1, len(pieces)):  # the shortest FILE.py:CLASS from here
                if FILE_PART.match("+".join(pieces[i:j + 1]).strip()):
                    take = j + 1 - i
                    break
        parts.append("+".join(pieces[i:i + take]).strip())
        i += take
    return parts


def canonical_spec(spec: str) -> str:
    """``spec`` with each file part by its absolute path (``canonical``)."""
    return "+".join(canonical(part) for part in split_spec(spec))


def loaded_name(part: str) -> Optional[str]:
    """The name of the user's method ``part`` when the command line loaded it, else None;
    never imports anything."""
    return _LOADED.get(canonical(part))


def load(spec: str) -> None:
    """Import and register each method of the user's own that ``spec`` (``--distill``) names;
    a ``UserError`` in one line (after the user's traceback when their code raised) when one
    cannot be used. Only the command line and an explicit ``--config`` call this."""
    for part in split_spec(spec):
        if is_source(part):
            load_part(part)


@contextmanager
def forgotten_on_error():
    """The methods loaded (and names registered) inside the block are forgotten when it
    raises, so that a method which cannot be used leaves the registry as it was."""
    names, loaded = set(distiller_names()), dict(_LOADED)
    try:
        yield
    except BaseException:
        unregister(set(distiller_names()) - names)
        _LOADED.clear()
        _LOADED.update(loaded)
        raise


def load_part(part: str) -> str:
    """The registered name of the user's method ``part`` (``FILE.py:CLASS`` or
    ``MODULE:CLASS``), imported and registered once per process."""
    key = canonical(part)
    if key in _LOADED:
        return _LOADED[key]
    with forgotten_on_error():
        _LOADED[key] = _load(part)
    return _LOADED[key]


def _load(part: str) -> str:
    kind, target, class_name = source_of(part)
    what = f"--distill {part}"
    try:
        if kind == "file":
            module = import_file(target, what, prefix="kd_user_method")
            where = str(resolved(target))
        else:
            module = import_module(target, what)
            where = f"module {target}"
    except NameTaken as e:  # its @register_distiller reuses a name
        raise UserError(f"{what}: it registers the name {e.name!r}, which another method has; "
                        "give your method a name of its own") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise UserError(f"{what}: {where} has no {class_name}")
    if not (isinstance(cls, type) and issubclass(cls, Distiller)) or cls is Distiller:
        what_it_is = ("a class" if isinstance(cls, type)
                      else _article(type(cls).__name__) + " " + type(cls).__name__)
        raise UserError(f"{what}: {class_name} in {where} is {what_it_is}, not a subclass of "
                        "Distiller (distillers/base.py)")
    if _builtin(cls):
        name = cls.__dict__.get("name")
        if name in distiller_names() and get_distiller(name) is cls:
            raise UserError(f"{what}: {class_name} is the built-in method {name}; pass "
                            f"--distill {name}")
        raise UserError(f"{what}: {class_name} is a class of the toolbox, not a method; "
                        "subclass it in your file")
    name = _register(cls, what)
    _check_options(cls, what)
    return name


def _builtin(cls) -> bool:
    """Whether ``cls`` is a class of this package."""
    return cls.__module__.split(".")[0] == __package__


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _register(cls, what: str) -> str:
    """The name ``cls`` is registered under: its decorator's, else its own ``name`` or its
    class name in lower case (registered here)."""
    own = cls.__dict__.get("name")
    if own is not None and own in distiller_names():
        if get_distiller(own) is cls:  # decorated with @register_distiller
            _check_name(own, what)
            return own
    name = own if own is not None else cls.__name__.lower()
    _check_name(name, what)
    if name in distiller_names():
        whose = ("a built-in method's" if _builtin(get_distiller(name))
                 else f"the method {get_distiller(name).__qualname__}'s, loaded before")
        raise UserError(f"{what}: its name {name!r} is {whose}; give your class a name of its "
                        "own (name = \"...\", or @register_distiller(\"...\"))")
    register_distiller(name)(cls)
    return name


def _check_name(name, what):
    if not (isinstance(name, str) and PLAIN_NAME.match(name)):
        raise UserError(f"{what}: the method's name {name!r} must be plain (letters, digits, "
                        "'_' and '-'), as it names the run folder")


def _check_options(cls, what):
    options = getattr(cls, "Options", None)
    if not (isinstance(options, type) and issubclass(options, MethodOptions)
            and dataclasses.is_dataclass(options)):
        raise UserError(f"{what}: its Options must be a frozen dataclass deriving from "
                        "MethodOptions (distillers/options.py)")


def portable(obj):
    """``obj`` (a run's configuration, holding a user's ``Options``) as processes spawned by
    ``torch.multiprocessing`` unpickle it: after loading the methods of the user's own this
    process loaded (their classes live in modules that only it imported)."""
    return _Reloaded(list(_LOADED), obj) if _LOADED else obj


class _Reloaded:
    def __init__(self, parts, obj):
        self.parts, self.obj = parts, obj

    def __reduce__(self):
        return _reload_then_unpickle, (self.parts, pickle.dumps(self.obj))


def _reload_then_unpickle(parts, data):
    for part in parts:  # the parent's command line named them
        load_part(part)
    return pickle.loads(data)

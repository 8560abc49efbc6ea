"""The user's own Python code, named on the command line: a file (``FILE.py:NAME``, imported by
its path) or an importable module (``MODULE:NAME``). ``--model FILE.py:FUNCTION``
(models/sources.py) and ``--distill FILE.py:CLASS`` (distillers/sources.py) import it here.

Code is imported only where the user names it: on the command line or in a config.yaml passed
with ``--config``; never because a file a run wrote (a checkpoint, a summary.json) names it.
The callers keep that rule; nothing here reads such a file.

When the user's code raises, its traceback (from its first frame in the user's file, without
this module's and importlib's frames) is printed to stderr, and a ``UserError`` says in one
line which file failed: the run ends with that line, as every user error does.
"""
import hashlib
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

from helper.core.errors import UserError


def resolved(path) -> Path:
    """``path`` made absolute (``~`` expanded, links resolved)."""
    return Path(path).expanduser().resolve()


def print_user_traceback(error: BaseException, origin=None) -> None:
    """The traceback of ``error`` to stderr from its first frame in the file ``origin`` (the
    user's), or, without ``origin``, from its first frame outside this module and importlib;
    where there is no such frame (a SyntaxError), the exception alone."""
    def ours(filename):
        return (filename != str(origin)) if origin is not None else (
            filename == __file__ or filename.startswith("<frozen importlib"))
    tb = error.__traceback__
    while tb is not None and ours(tb.tb_frame.f_code.co_filename):
        tb = tb.tb_next
    traceback.print_exception(type(error), error, tb, file=sys.stderr)


def _first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _run(module, loader, origin, what):
    """Execute ``module``; what it raises, as the module docstring says (a ``UserError`` it
    raises is already one line and passes as it is)."""
    try:
        loader.exec_module(module)
    except UserError:
        raise
    except Exception as e:
        print_user_traceback(e, origin)
        raise UserError(f"cannot import {origin} for {what}: it raised {_first_line(e)} "
                        "(its traceback is above); fix the file") from e


def import_file(path, what: str, prefix: str = "kd_user"):
    """The module of the Python file ``path`` (imported once per process, under a name made of
    ``prefix`` and a digest of the resolved path, the same in every process: spawned workers
    unpickle the file's classes by it); ``what`` names what it is for in messages (e.g. "model
    my.py:build")."""
    path = resolved(path)
    if not path.is_file():
        raise UserError(f"no such file {path} for {what}")
    name = f"{prefix}_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
    module = sys.modules.get(name)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # during its import too: dataclasses look their module up
    try:
        _run(module, spec.loader, path, what)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_module(name: str, what: str):
    """The importable module ``name`` (``package.module``); one line when there is none."""
    try:
        return importlib.import_module(name)
    except UserError:
        raise
    except ModuleNotFoundError as e:
        if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
            raise _failed(e, name, what) from e  # a module it imports is missing
        raise UserError(f"no module named {name} for {what}: install it or add its folder to "
                        "PYTHONPATH, or give FILE.py:NAME for a file") from None
    except Exception as e:
        raise _failed(e, name, what) from e


def _failed(error, name, what):
    print_user_traceback(error)
    return UserError(f"cannot import {name} for {what}: it raised {_first_line(error)} (its "
                     "traceback is above); fix the module")

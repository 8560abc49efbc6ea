"""``config.yaml``: the effective options of a run (its own: the run-wide flags and its methods'
options, not other methods'), written into its run folder, and ``--config FILE``, which starts
a run from such a file (command-line flags override it).

The file is flat YAML: one ``dest: value`` per option (the flag without its dashes, e.g.
``lr_decay_epochs: [150, 180, 210]``, ``cls: 1.0`` for ``-c``), with the defaults that depend on
the model or the method filled in, and paths as the user gave them. Reading it checks every
key against the parser's options and converts every value with the flag's own type and
choices, so a wrong key or value is refused in one line, as the same flag on the command line
would be. A file written before the options were scoped holds every method's options:
``helper/run/options.py`` drops those of methods the run does not use before the check.
"""
import argparse
import json

from helper.core.errors import UserError

FILE_NAME = "config.yaml"
# Options that say how this process starts or where it logs, not what the run is: never written.
NOT_WRITTEN = ("resume", "config", "evaluate", "linear_probe", "probe_data_folder", "logger")


def _yaml():
    try:
        import yaml
    except ImportError:
        raise UserError("config.yaml needs PyYAML; pip install PyYAML") from None
    return yaml


def to_text(values, command=None):
    """The YAML text of ``values`` (flat scalars and lists), with a comment on how to rerun."""
    plain = json.loads(json.dumps({k: v for k, v in values.items() if k not in NOT_WRITTEN},
                                  default=str))
    head = "# the effective options of this run"
    if command:
        head += f"; rerun with: python {command} --config config.yaml --save_folder OTHER"
    return head + "\n" + _yaml().safe_dump(plain, sort_keys=True, default_flow_style=None)


def write(path, values, command=None):
    from helper.core.files import atomic_write
    text = to_text(values, command).encode()
    atomic_write(path, lambda f: f.write(text))


def _flag(action):
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def _convert(action, key, value):
    """``value`` as the flag's own type would give it; ``ValueError`` with the reason."""
    if value is None:
        if action.default is None:
            return None
        raise ValueError("must not be empty")
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, got {value!r}")
        return value
    if action.nargs == 0 or action.nargs == "?":
        raise ValueError("cannot be set in a config file")
    if isinstance(value, bool) or isinstance(value, dict):
        raise ValueError(f"expected a {_kind(action)}, got {value!r}")
    if isinstance(value, list):
        if any(isinstance(v, (list, dict, bool)) or v is None for v in value):
            raise ValueError(f"expected a comma-separated list, got {value!r}")
        text = ",".join(str(v) for v in value)
    else:
        text = str(value)
    try:
        converted = action.type(text) if action.type is not None else text
    except (argparse.ArgumentTypeError, TypeError, ValueError) as e:
        raise ValueError(str(e) or f"expected a {_kind(action)}, got {value!r}") from None
    if isinstance(value, list) and not isinstance(converted, (list, tuple)):
        raise ValueError(f"expected a {_kind(action)}, got the list {value!r}")
    if action.choices is not None and converted not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise ValueError(f"{converted!r} is not one of {choices}")
    return converted


def _kind(action):
    return getattr(action.type, "__name__", "value") if action.type is not None else "string"


def read(path):
    """The ``option: value`` pairs of the config file ``path``, as YAML gives them
    (``UserError`` naming the file otherwise)."""
    yaml = _yaml()
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise UserError(f"--config {path}: not a text file (not UTF-8); give a config.yaml, "
                        "such as a run folder's") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"--config {path}: not valid YAML{line}; write one 'option: value' "
                        "per line") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: expected 'option: value' lines, got a "
                        f"{type(data).__name__}")
    return data


def convert(data, parser, path):
    """The options ``data`` (read from ``path``), checked and converted for ``parser``
    (``UserError`` naming the file and the key otherwise)."""
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", *NOT_WRITTEN)}
    unknown = sorted(str(k) for k in data if k not in actions)
    if unknown:
        raise UserError(f"--config {path}: unknown option {', '.join(unknown)} (not a flag of "
                        f"{parser.prog}); remove it or fix its name")
    values = {}
    for key, value in data.items():
        try:
            values[key] = _convert(actions[key], key, value)
        except ValueError as e:
            raise UserError(f"--config {path}: {key} ({_flag(actions[key])}) {e}") from None
    return values


def load(path, parser):
    """The options in the config file ``path``, checked and converted for ``parser``."""
    return convert(read(path), parser, path)

"""``python -m distillers``: every method with its paper, reference code and defaults;
``--markdown``: README.md's methods table, generated from the same data (each method's
``reference``, its ``default_weights`` and its options' defaults; tests/test_scoped_surfaces.py
keeps the README equal to it)."""
import argparse
import dataclasses
import math

from . import KDOptions
from .registry import Reference, aliases_of, distiller_classes, switches

HEADER = ("| method | flags | paper | reference code | defaults (-c, -d, -b; others) "
          "| extra params | notes |\n|---|---|---|---|---|---|---|")


def reference_of(cls) -> Reference:
    """A method's ``reference``; one without (a user's method): its name and docstring."""
    ref = getattr(cls, "reference", None)
    if ref is not None:
        return ref
    first = (cls.__doc__ or "").strip().split("\n")[0]
    return Reference(label=cls.name, notes=first, extra_params="")


def _by_row(references):
    """``(reference, item)`` pairs ordered by the references' ``row``, then their labels."""
    return [item for _, item in sorted(
        references, key=lambda pair: (math.inf if pair[0].row is None else pair[0].row,
                                      pair[0].label))]


def table_order():
    """Every method class once, in the table's order (their references' ``row``): never the
    order their files happened to be imported in."""
    return _by_row([(reference_of(cls), cls) for cls in distiller_classes()])


def switches_in_order():
    return _by_row([(ref, ref) for ref in switches()])


def _value(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if value == "":
        return '""'
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(_value, value))
    return str(value)


def option_defaults(cls) -> dict:
    """The defaults of the method's options and of the KD term's, by option name."""
    return {f.name: f.default for options in (KDOptions, cls.Options)
            for f in dataclasses.fields(options)}


def weights_text(cls, sep=", ") -> str:
    w = cls.default_weights
    return sep.join(_value(float(v)) for v in (w.cls, w.div, w.beta))


def shown_defaults(cls, ref: Reference) -> str:
    """The options the table shows, as flags with their defaults, or the reference's words."""
    if not ref.shown:
        return ref.defaults
    values = option_defaults(cls)
    return "`" + " ".join(f"--{name} {_value(values[name])}" for name in ref.shown) + "`"


def table_row(cls) -> str:
    ref = reference_of(cls)
    flags = f"`--distill {cls.name}{' ' + ref.usage if ref.usage else ''}`"
    aliases = aliases_of(cls)
    if aliases:
        flags += " (" + ", ".join(f"`{a}`" for a in aliases) + ")"
    others = shown_defaults(cls, ref)
    defaults = weights_text(cls) + (f"; {others}" if others else "")
    return _row(ref.label, flags, ref.paper, ref.code, defaults, ref.extra_params, ref.notes)


def switch_row(ref: Reference) -> str:
    return _row(ref.label, ref.flags, ref.paper, ref.code, ref.defaults, ref.extra_params,
                ref.notes)


def _row(*cells) -> str:
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def markdown_table() -> str:
    """README.md's methods table: every method (in ``table_order``), then the KD term's
    switches."""
    rows = [table_row(cls) for cls in table_order()]
    rows += [switch_row(ref) for ref in switches_in_order()]
    return HEADER + "\n" + "\n".join(rows) + "\n"


def _method_block(cls) -> str:
    ref = reference_of(cls)
    aliases = aliases_of(cls)
    head = cls.name + (f" ({', '.join(aliases)})" if aliases else "")
    options = _options_text(cls.Options)
    return "\n".join([f"{head}: {ref.label}" + (f", {ref.paper}" if ref.paper else ""),
                      f"  code: {ref.code or '-'}",
                      f"  defaults: -c/-d/-b {weights_text(cls)}" + (f"; {options}" if options else ""),
                      f"  reads: {reads_text(cls)}"])


def reads_text(cls) -> str:
    """What the method reads of the networks (``Reads``), and what that allows."""
    r = cls.reads
    where = {"none": "nothing", "logits": "logits", "pooled": "pooled feature",
             "maps": "stage maps" + (" before the ReLU" if r.preact else "")}
    text = f"teacher {where[r.teacher]}" + (f" (and {r.teacher_beyond})" if r.teacher_beyond
                                            else "") + f", student {where[r.student]}"
    served = ["--teacher_cache"] if cls.cacheable else []
    if cls.cacheable == "logits":
        served.append("--fkd")
    if r.teacher != "none" and cls.accepts_ensemble(cls.Options()):
        served.append("several --path_t")
    return text + (f"; {', '.join(served)}" if served else "")


def _options_text(options_cls) -> str:
    return " ".join(f"--{f.name} {_value(f.default)}" for f in dataclasses.fields(options_cls))


def _switch_block(ref: Reference) -> str:
    return (f"{ref.flags.strip('`')}: {ref.label}, {ref.paper}\n  code: {ref.code}\n"
            f"  defaults: {ref.defaults}")


def listing() -> str:
    """One block per method: name (aliases), label and paper, reference code, the defaults of
    -c/-d/-b and of every option; then the KD term's switches."""
    blocks = [f"every method's KD term (-d): {_options_text(KDOptions)}"]
    blocks += [_method_block(cls) for cls in table_order()]
    blocks += [_switch_block(ref) for ref in switches_in_order()]
    return "\n".join(blocks) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m distillers",
                                     description="Every method with its paper, reference "
                                                 "code and defaults.")
    parser.add_argument("--markdown", action="store_true",
                        help="README.md's methods table (markdown)")
    args = parser.parse_args(argv)
    print(markdown_table() if args.markdown else listing(), end="")


if __name__ == "__main__":
    main()

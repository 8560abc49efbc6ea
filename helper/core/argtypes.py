"""argparse pieces every command line shares: a parser whose errors are one line, and number
types saying what was expected (the entry scripts' flags, and those other layers add, e.g.
dataset/augment.py's and helper/fkd_labels.py's)."""
import argparse
import math


def number(kind, ok, rule):
    """An argparse type: a finite ``kind`` for which ``ok(value)`` holds, else "must be <rule>"."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__}, got {text!r}")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text!r}")
        return value
    return parse


def positive(kind):
    return number(kind, lambda v: v > 0, "positive")


def non_negative(kind):
    return number(kind, lambda v: v >= 0, "0 or more")


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line: what is wrong and the fix (no usage)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")

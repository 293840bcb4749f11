"""argparse `type=` functions for the project's `manage.py` commands: a bad value is a usage error
(exit code 2 from `manage.py`, a CommandError from `call_command`), never a traceback."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """An integer ≥ 1 (batch sizes, counts, lifetimes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (at least 1), not {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0 (days, seconds)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text}")
    return value


def non_blank(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be blank")
    return text

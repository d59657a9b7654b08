"""Rules for setting values, shared by the configs (which check them whether set from Python or
from a flag) and the command lines (which turn a bad value into one line naming the flag)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Rule:
    """What values a setting takes: ``ok(value)``, described as ``what`` ("an integer >= 1")."""
    ok: Callable[[Any], bool]
    what: str


POSITIVE_INT = Rule(lambda v: v >= 1, "an integer >= 1")
NON_NEGATIVE_INT = Rule(lambda v: v >= 0, "an integer >= 0")
POSITIVE = Rule(lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
NON_NEGATIVE = Rule(lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
FRACTION = Rule(lambda v: 0 <= v < 1, "a number in [0, 1)")
PROBABILITY = Rule(lambda v: 0 <= v <= 1, "a number in [0, 1]")
OPEN_PROBABILITY = Rule(lambda v: 0 < v <= 1, "a number in (0, 1]")
PORT = Rule(lambda v: 1 <= v <= 65535, "a port number in [1, 65535]")


def image_size(text: str) -> tuple[int, int]:
    """``50x22`` -> ``(50, 22)`` (width, height); ``ValueError`` naming the expected form otherwise."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"must look like 50x22 (width x height), not {text!r}") from None
    if w < 1 or h < 1:
        raise ValueError(f"must be at least 1x1, got {text}")
    return w, h

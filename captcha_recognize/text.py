"""How the toolkit's words and names print: counts, and paths as text any console shows."""
from __future__ import annotations

import json
import math
import os
from typing import Any


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def shown(path: str | os.PathLike) -> str:
    """A path (or any name from outside) as text that prints on any console as one harmless line: bytes
    that are not UTF-8 become ``\\xNN``, and control characters (a newline, a terminal's escape codes)
    their escapes, so a file name can neither forge an output line nor drive the terminal."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace") if not isinstance(path, str) else \
        path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode() for c in text)


def json_text(obj: Any, **kwargs: Any) -> str:
    """JSON that every reader takes: a number that is not finite (a diverged model's) becomes null."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)


def finite(obj: Any) -> Any:
    """``obj`` with every float that is not finite replaced by None, in dicts, lists and tuples too."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj

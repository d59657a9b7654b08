"""How the toolkit's words and names print: counts, and paths as text any console shows."""
from __future__ import annotations

import os


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def shown(path: str | os.PathLike) -> str:
    """A path as text that prints on any console: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")

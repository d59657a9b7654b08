"""File-name labels: how a file name's text becomes a captcha's label.

``parse_label("3568_2.png") -> "3568"``: the label is the file name up to the first ``.`` or
``_``; ``LabelRules`` map characters a file name cannot hold and fold letter case.
"""
from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from captcha_recognize.errors import DataError

LABEL_HELP = ("a label file name is the captcha text, optionally followed by '_' and anything, "
              "then the extension: '3568.png', 'b5pnn.png', '3568_2.png'")
CASES = ("keep", "lower", "upper")
SYMBOL_NAMES = 0.5  # share of the names that must hold recurring symbols for them to be read as label text
SYMBOL_RECURS = 0.02  # share of the names (and at least SYMBOL_MIN) a symbol must be in to recur
SYMBOL_MIN = 3


@dataclass(frozen=True)
class LabelRules:
    """How a file name's text becomes a label: ``label_map`` turns characters that cannot be in
    file names into the captcha's own (``x`` -> ``*``), then ``case`` folds letters."""
    case: str = "keep"  # keep, lower, upper
    label_map: tuple[tuple[str, str], ...] = ()  # (in the file name, in the label)

    def apply(self, text: str) -> str:
        mapping = dict(self.label_map)
        text = "".join(mapping.get(c, c) for c in text)
        return text.lower() if self.case == "lower" else text.upper() if self.case == "upper" else text

    def as_dict(self) -> dict[str, Any]:
        return {"case": self.case, "label_map": dict(self.label_map)}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> LabelRules:
        d = d or {}
        return cls(d.get("case", "keep"), tuple(sorted((d.get("label_map") or {}).items())))


def read_label_map(path: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    """A ``--label-map`` file: one ``FROM TO`` pair of single characters per line (``x *``);
    blank lines and lines starting with ``#`` are ignored."""
    pairs, lines_seen = [], {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read --label-map {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 1 or len(parts[1]) != 1:
            raise DataError(f"--label-map {path} line {n}: expected two single characters like 'x *', got {line!r}")
        earlier = next(((m, to) for m, (c, to) in lines_seen.items() if c == parts[0]), None)
        if earlier is not None and earlier[1] != parts[1]:
            raise DataError(f"--label-map {path} lines {earlier[0]} and {n}: {parts[0]!r} maps to both {earlier[1]!r} "
                            f"and {parts[1]!r}; keep one")
        lines_seen[n] = (parts[0], parts[1])
        pairs.append((parts[0], parts[1]))
    return tuple(sorted(set(pairs)))


def name_text(path: str | os.PathLike) -> str:
    """The text a file name holds: up to its first ``.`` or ``_``, in NFC form (macOS file names
    are decomposed)."""
    name = unicodedata.normalize("NFC", os.path.basename(os.fspath(path)))
    return re.split(r"[._]", name, maxsplit=1)[0]


def parse_label(path: str | os.PathLike, alphabet: str | None = None, rules: LabelRules | None = None,
                symbols: str = "") -> str | None:
    """The label encoded in a file name, or None if the name is not a label.

    ``3568.png`` and ``3568_2.png`` are both ``3568``. Without an alphabet a label is Unicode
    letters and digits (and the characters ``rules`` maps, and ``symbols``); with one, every
    character of the label must be in it. Names are compared in NFC form, as macOS file names are
    decomposed.
    """
    text = name_text(path)
    rules = rules or LabelRules()
    mapped = dict(rules.label_map)
    if not text or (alphabet is None and not all(c.isalnum() or c in mapped or c in symbols for c in text)):
        return None
    label = rules.apply(text)
    return label if alphabet is None or all(c in alphabet for c in label) else None


def recurring_symbols(paths: Sequence[str | os.PathLike], rules: LabelRules | None = None) -> str:
    """The characters other than letters and digits that belong to the labels of these file names:
    those that recur (in ``SYMBOL_RECURS`` of the names, at least ``SYMBOL_MIN``) when at least
    ``SYMBOL_NAMES`` of the names hold them, as arithmetic captchas' ``3+4=.png`` do; "" when most
    names hold none, so that a stray ``photo (1).png`` stays unlabelled. Spaces never count."""
    mapped = dict((rules or LabelRules()).label_map)
    texts = [name_text(p) for p in paths]
    counts = Counter(c for t in texts for c in set(t) if not (c.isalnum() or c in mapped or c.isspace()))
    bar = max(SYMBOL_MIN, SYMBOL_RECURS * len(texts))
    common = {c for c, n in counts.items() if n >= bar and c.isprintable()}
    holding = sum(any(c in common for c in t) for t in texts)
    return "".join(sorted(common)) if common and holding >= SYMBOL_NAMES * len(texts) else ""


def stray_characters(paths: Sequence[str | os.PathLike], alphabet: str | None, rules: LabelRules | None = None) -> str:
    """The characters of these file names' texts that keep them from being labels: outside
    ``alphabet``, or without one neither letters, digits nor mapped characters (most frequent first)."""
    mapped = dict((rules or LabelRules()).label_map)
    rules = rules or LabelRules()
    allowed = (lambda c: c in alphabet) if alphabet is not None else (lambda c: c.isalnum() or c in mapped)
    texts = [rules.apply(name_text(p)) if alphabet is not None else name_text(p) for p in paths]
    counts = Counter(c for t in texts for c in t if not allowed(c))
    return "".join(c for c, _ in counts.most_common())


def mixed_case(labels: Iterable[str]) -> list[str]:
    """The letters that appear in the labels in both cases (``["a", "k"]``)."""
    chars = set("".join(labels))
    return sorted(c for c in chars if c.islower() and c.upper() in chars)


def infer_alphabet(labels: Iterable[str]) -> str:
    """Sorted set of the characters used by the labels."""
    return "".join(sorted(set("".join(labels))))

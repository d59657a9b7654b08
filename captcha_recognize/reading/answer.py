"""Arithmetic captchas: a reading such as ``12+3=?``, ``8-5=`` or ``10x6=`` is a question, and the
user needs its value. ``answer`` evaluates such a reading exactly, with the usual precedence (``*``
and ``/`` before ``+`` and ``-``); anything else gives no value and says why, never a guess."""
from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

MULTIPLY, DIVIDE = "*xX×·", "/÷:"  # the signs captchas write for * and /
TOKEN = re.compile(r"\s*(\d+|[-+" + re.escape(MULTIPLY + DIVIDE) + r"])")


@dataclass(frozen=True)
class Answer:
    """The value of an arithmetic reading (an ``int`` when whole), or None and ``why`` not."""
    value: int | float | None
    why: str | None = None

    def __str__(self) -> str:
        return str(self.value) if self.value is not None else f"none ({self.why})"


def answer(text: str) -> Answer:
    """The value of ``text`` read as ``number (operator number)+``, optionally ending in ``=``,
    ``?`` or ``=?``."""
    body = re.sub(r"\s*=?\s*\?*\s*$", "", text)
    tokens, end = [], 0
    for m in TOKEN.finditer(body):
        if m.start() != end:
            break
        tokens.append(m.group(1))
        end = m.end()
    if end != len(body) or not body:
        return Answer(None, f"{text!r} is not an arithmetic expression")
    if len(tokens) < 3 or len(tokens) % 2 == 0 or not all(t.isdigit() for t in tokens[::2]) \
            or any(t.isdigit() for t in tokens[1::2]):
        return Answer(None, f"{text!r} is not numbers joined by + - * x /")
    return evaluate(tokens)


def evaluate(tokens: list[str]) -> Answer:
    """Numbers and operators, alternating: products and quotients first, then sums."""
    terms, signs = [Fraction(int(tokens[0]))], []
    for op, number in zip(tokens[1::2], tokens[2::2]):
        value = Fraction(int(number))
        if op in MULTIPLY:
            terms[-1] *= value
        elif op in DIVIDE:
            if value == 0:
                return Answer(None, "division by zero")
            terms[-1] /= value
        else:
            signs.append(op)
            terms.append(value)
    total = terms[0]
    for sign, term in zip(signs, terms[1:]):
        total = total + term if sign == "+" else total - term
    return Answer(int(total) if total.denominator == 1 else float(total))

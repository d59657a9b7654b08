"""Scores: accuracy per position, per character (edit distance) and per captcha, confusions, and
the table of misread images. Training's validation and every report use these."""
from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(preds: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Sequence, character and per-position accuracy of predictions against labels.

    Characters wrong are counted as edit distance (a CTC model may drop or add one);
    position ``i`` is right when the prediction has the label's character at ``i``.
    """
    n = len(labels)
    n_pos = max((len(s) for s in labels), default=0)
    pos_right = [0] * n_pos
    pos_total = [0] * n_pos
    for p, t in zip(preds, labels):
        for i, ch in enumerate(t):
            pos_total[i] += 1
            pos_right[i] += i < len(p) and p[i] == ch
    chars = sum(len(t) for t in labels)
    wrong = sum(edit_distance(p, t) for p, t in zip(preds, labels))
    correct = sum(p == t for p, t in zip(preds, labels))
    return {
        "n": n,
        "correct": correct,
        "sequence_accuracy": correct / n if n else 0.0,
        "characters": chars,
        "characters_wrong": wrong,
        "character_accuracy": max(0.0, 1 - wrong / chars) if chars else 0.0,
        "position_accuracy": [r / t for r, t in zip(pos_right, pos_total)],
    }


def format_scores(s: dict[str, Any]) -> str:
    """``Accuracy 1: 0.9683, ... | sequence 140/149 (94.0%) | character 98.3%``"""
    pos = ", ".join(f"Accuracy {i}: {a:.4f}" for i, a in enumerate(s["position_accuracy"], 1))
    return (f"{pos} | sequence {s['correct']}/{s['n']} ({100 * s['sequence_accuracy']:.1f}%)"
            f" | character {100 * s['character_accuracy']:.2f}%")


def confused_pairs(preds: Sequence[str], labels: Sequence[str], top: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (truth, predicted) character swaps at equal positions."""
    pairs = Counter((t[i], p[i]) for p, t in zip(preds, labels) if len(p) == len(t)
                    for i in range(len(t)) if p[i] != t[i])
    return [(a, b, n) for (a, b), n in pairs.most_common(top)]


def mistakes_table(names: Sequence[str], labels: Sequence[str], preds: Sequence[str],
                   confs: Sequence[float], limit: int = 10) -> str:
    """``Ground truth | Prediction | Confidence | ok | file`` rows for the misread images."""
    rows = [(n, t, p, c) for n, t, p, c in zip(names, labels, preds, confs) if p != t][:limit]
    if not rows:
        return "no mistakes"
    w = max(12, *(len(t) for _, t, _, _ in rows))
    lines = [f"{'Ground truth':<{w}} | {'Prediction':<{w}} | Confidence | ok | file"]
    lines += [f"{t:<{w}} | {p:<{w}} | {c:>10.4f} | {'no':<2} | {n}" for n, t, p, c in rows]
    return "\n".join(lines)

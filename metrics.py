"""Scores and reports: accuracy per position, per character (edit distance) and per captcha,
confusions, the mistakes table, the prediction report, and a contact sheet of images."""
from __future__ import annotations

import contextlib
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from dataset import ImageInput, open_image, shown


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


def build_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The prediction report: files (paths as text that any JSON reader takes) plus a summary
    (accuracies only over labelled files; ``accepted`` counts the readings at or above the accept
    threshold, ``accepted_accuracy`` is their accuracy)."""
    summary: dict[str, Any] = {"n": len(results), "accepted": sum(r["accept"] for r in results)}
    labelled = [r for r in results if r["label"] is not None]
    if labelled:
        s = score([r["prediction"] for r in labelled], [r["label"] for r in labelled])
        summary.update({k: s[k] for k in ("sequence_accuracy", "character_accuracy", "position_accuracy")})
        summary.update(labelled=s["n"], characters=s["characters"], characters_wrong=s["characters_wrong"])
        kept = [r["correct"] for r in labelled if r["accept"]]
        summary["accepted_accuracy"] = sum(kept) / len(kept) if kept else None
    return {"files": [{**r, "path": shown(r["path"])} for r in results], "summary": summary}


CSV_COLUMNS = ("path", "prediction", "confidence", "accept", "label", "correct")


def write_csv(results: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per reading: path, prediction, confidence, accept, label, correct (written atomically)."""
    import csv
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for r in results:
            out.writerow(["" if r[k] is None else shown(r[k]) if k == "path" else r[k] for k in CSV_COLUMNS])
    os.replace(tmp, path)


def format_results(results: list[dict[str, Any]]) -> str:
    """One line per image, then the accuracy report when file names are labels."""
    w = max(len(shown(r["path"])) for r in results)
    lines = [f"{'file':<{w}}  {'prediction':<10} confidence accept"]
    for r in results:
        mark = "" if r["correct"] is None else ("  ok" if r["correct"] else f"  WRONG (label {r['label']})")
        accept = "yes" if r["accept"] else "no"
        lines.append(f"{shown(r['path']):<{w}}  {r['prediction']:<10} {r['confidence']:>10.4f} {accept:<6}{mark}")
    accepted = [r for r in results if r["accept"]]
    lines.append(f"\naccepted {len(accepted)} of {len(results)} readings")
    labelled = [r for r in results if r["label"] is not None]
    if labelled:
        preds, labels = [r["prediction"] for r in labelled], [r["label"] for r in labelled]
        s = score(preds, labels)
        kept = [r["correct"] for r in labelled if r["accept"]]
        lines += [f"{len(labelled)} of {len(results)} file names are labels:", format_scores(s),
                  f"{s['characters_wrong']} of {s['characters']} characters wrong"]
        if kept:
            lines.append(f"accepted and labelled: {sum(kept)} of {len(kept)} right ({100 * sum(kept) / len(kept):.1f}%)")
        pairs = confused_pairs(preds, labels)
        if pairs:
            lines.append("most confused (truth -> predicted): " + ", ".join(f"{a}->{b} x{n}" for a, b, n in pairs))
    return "\n".join(lines)


def caption_font(size: int = 12):
    """A font that shows any alphabet's captions (Cyrillic too): DejaVu Sans, from the system or the copy
    matplotlib ships, else Pillow's default."""
    from PIL import ImageFont

    with contextlib.suppress(OSError):
        return ImageFont.truetype("DejaVuSans.ttf", size)
    with contextlib.suppress(ImportError, OSError, ValueError):
        from matplotlib import font_manager
        return ImageFont.truetype(font_manager.findfont("DejaVu Sans", fallback_to_default=False), size)
    return ImageFont.load_default()


def contact_sheet(items: Sequence[tuple[ImageInput, str, str, float]], path: str | os.PathLike,
                  columns: int = 6, tile_h: int = 50) -> None:
    """A PNG grid of images, each captioned ``truth -> prediction (confidence)``, written
    atomically as PNG whatever the name's extension."""
    from PIL import Image, ImageDraw

    tiles = []
    for src, truth, pred, conf in items:
        img = open_image(src).convert("RGB")
        img = img.resize((max(1, round(img.width * tile_h / img.height)), tile_h), Image.NEAREST)
        tiles.append((img, f"{truth} -> {pred} ({conf:.2f})"))
    font = caption_font()
    widest = max((max(im.width, math.ceil(font.getlength(caption))) for im, caption in tiles), default=160)
    tile_w = max(160, widest) + 8  # a caption longer than its image widens every tile, not the next one
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (tile_w * min(columns, max(1, len(tiles))), rows * (tile_h + 22)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(tiles):
        x, y = (i % columns) * tile_w + 4, (i // columns) * (tile_h + 22)
        sheet.paste(img, (x, y + 2))
        draw.text((x, y + tile_h + 4), caption, fill=(200, 0, 0), font=font)
    if not tiles:
        draw.text((4, 4), "no misread images", fill=(0, 120, 0), font=font)
    tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
    try:
        sheet.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

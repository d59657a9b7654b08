"""Reports of a prediction run: the per-image lines and summary, JSON and CSV files, and a contact
sheet of images captioned with their readings."""
from __future__ import annotations

import contextlib
import csv
import math
import os
from typing import Any, Sequence

from captcha_recognize.data.images import ImageInput, open_image
from captcha_recognize.files import atomic_write, atomic_write_text
from captcha_recognize.reading.scores import confused_pairs, format_scores, score
from captcha_recognize.text import json_text, shown

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
ANSWER_COLUMNS = ("answer", "answer_error")  # with --answer


def write_csv(results: list[dict[str, Any]], path: str | os.PathLike) -> None:
    """One row per reading: path, prediction, confidence, accept, label, correct (written atomically)."""
    def write(tmp) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            columns = CSV_COLUMNS + (ANSWER_COLUMNS if results and "answer" in results[0] else ())
            out.writerow(columns)
            for r in results:
                out.writerow(["" if r[k] is None else shown(r[k]) if k == "path" else r[k] for k in columns])
    atomic_write(path, write)


def write_json(report: dict[str, Any], path: str) -> None:
    """The report as JSON: to stdout for ``-``, else written atomically."""
    text = json_text(report, indent=1)
    if path == "-":
        print(text)
    else:
        atomic_write_text(path, text + "\n")


def format_results(results: list[dict[str, Any]]) -> str:
    """One line per image, then the accuracy report when file names are labels."""
    w = max(len(shown(r["path"])) for r in results)
    answers = "answer" in results[0]
    lines = [f"{'file':<{w}}  {'prediction':<10} confidence accept" + (" answer" if answers else "")]
    for r in results:
        mark = "" if r["correct"] is None else ("  ok" if r["correct"] else f"  WRONG (label {r['label']})")
        accept = "yes" if r["accept"] else "no"
        value = (f" {r['answer']}" if r["answer"] is not None else f" none ({r['answer_error']})") if answers else ""
        row = f"{shown(r['path']):<{w}}  {r['prediction']:<10} {r['confidence']:>10.4f} {accept:<6}"
        lines.append(row + value + mark)
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
            lines.append(f"accepted and labelled: {sum(kept)} of {len(kept)} right "
                         f"({100 * sum(kept) / len(kept):.1f}%)")
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
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))

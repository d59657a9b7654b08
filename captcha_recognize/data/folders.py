"""Folders of captchas: listing, decoding with unreadable files skipped in one warning, the
labelled images of folders, and seeded splits."""
from __future__ import annotations

import os
import random
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, UnidentifiedImageError

from captcha_recognize.data.images import open_image
from captcha_recognize.data.labels import (LABEL_HELP, LabelRules, name_text, parse_label, recurring_symbols,
                                          stray_characters)
from captcha_recognize.errors import DataError
from captcha_recognize.text import plural, shown

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def list_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Image files in the given folders and/or files, sorted by name within each folder (with
    ``recursive``, also in their subfolders), each file once however often it is named (a folder given
    twice would put its images in training and validation alike). A folder whose images are all in
    subfolders is a ``DataError`` that says so, unless ``recursive``."""
    files, seen, unique = list_given(inputs, recursive), set(), []
    for f in files:  # in order, each file where it is first named
        if f.resolve() not in seen:
            seen.add(f.resolve())
            unique.append(f)
    if len(unique) < len(files):
        print(f"note: {plural(len(files) - len(unique), 'image')} named more than once (the same folder or file "
              "given twice) read once", file=sys.stderr)
    return unique


def list_given(inputs: Sequence[str | os.PathLike], recursive: bool) -> list[Path]:
    """The image files of each input in turn, a file as often as it is named."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in (p.rglob("*") if recursive else p.iterdir()) if is_image_file(f))
            if not found and not recursive and any(is_image_file(f) for f in p.rglob("*")):
                raise DataError(f"no images directly in {shown(p)}, only in its subfolders: give --recursive "
                                "to read them")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"no such file or folder: {shown(p)}")
    return files


def is_image_file(f: Path) -> bool:
    return f.suffix.lower() in IMAGE_EXTS and f.is_file()


def warn_skipped(bad: Sequence[tuple[Path, str]], what: str = "unreadable image") -> None:
    """One warning line naming how many files were skipped and which."""
    if bad:
        names = ", ".join(f"{shown(p.name)} ({why})" for p, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        print(f"warning: skipped {plural(len(bad), what)}: {names}{more}", file=sys.stderr)


def decode_files(files: Sequence[Path]) -> tuple[list[Image.Image], list[Path], list[tuple[Path, str]]]:
    """Decoded images, their paths, and ``(path, reason)`` for each file that could not be read."""
    images, ok, bad = [], [], []
    for f in files:
        try:
            if f.stat().st_size == 0:
                raise ValueError("empty file")
            images.append(open_image(f))
            ok.append(f)
        except (OSError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as e:
            bad.append((f, type(e).__name__ if not str(e) else str(e).split("\n")[0][:60]))
    return images, ok, bad


def load_images(files: Sequence[Path]) -> tuple[list[Image.Image], list[Path]]:
    """Decoded images and their paths; unreadable files are skipped with one warning."""
    images, ok, bad = decode_files(files)
    warn_skipped(bad)
    return images, ok


@dataclass
class LabelledImages:
    """Decoded, labelled images of a folder (before resizing)."""
    images: list[Image.Image]
    labels: list[str]
    paths: list[Path]


def labelled_files(inputs: Sequence[str | os.PathLike], alphabet: str | None = None,
                   rules: LabelRules | None = None, recursive: bool = False) -> list[Path]:
    """The image files whose names are labels; warns once about the others.

    Raises ``DataError`` if there are no images, or no name is a label.
    """
    return [f for f, _ in labelled(inputs, alphabet, rules, recursive)]


def labelled(inputs: Sequence[str | os.PathLike], alphabet: str | None = None, rules: LabelRules | None = None,
             recursive: bool = False) -> list[tuple[Path, str]]:
    """``(file, label)`` for the image files whose names are labels; warns once about the others.
    Without an alphabet, symbols that recur across most names are label text (``recurring_symbols``),
    and a line says so. Raises ``DataError`` if there are no images, or no name is a label."""
    files = list_images(inputs, recursive)
    where = ", ".join(map(shown, inputs))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {where}")
    symbols = recurring_symbols(files, rules) if alphabet is None else ""
    found = [(f, parse_label(f, alphabet, rules, symbols)) for f in files]
    unlabelled = [(f, "not a label") for f, lab in found if lab is None]
    if len(unlabelled) == len(files):
        raise DataError(f"none of the {len(files)} file names in {where} is a label: {LABEL_HELP}"
                        + alphabet_hint(files, alphabet, rules))
    if symbols:
        holding = sum(any(c in symbols for c in lab) for _, lab in found if lab is not None)
        print(f"labels: {', '.join(map(repr, symbols))} recur in {holding} of the {len(files)} file names and are "
              "read as characters of the labels (--alphabet to choose the characters yourself)", file=sys.stderr)
    warn_skipped(unlabelled, "unlabelled file")
    return [(f, lab) for f, lab in found if lab is not None]


def alphabet_hint(files: Sequence[Path], alphabet: str | None, rules: LabelRules | None) -> str:
    """What to pass when no name is a label because of characters the labels may not hold."""
    stray = stray_characters(files, alphabet, rules)
    if not stray or stray.isspace():
        return ""
    shown_chars = ", ".join(map(repr, stray[:8])) + (" ..." if len(stray) > 8 else "")
    if alphabet is not None:
        return f"; the names hold {shown_chars}, which --alphabet {alphabet!r} lacks"
    chars = "".join(sorted({c for f in files for c in name_text(f) if not c.isspace()}))
    return (f"; the names hold {shown_chars}: if they are part of the captchas' text, give every character with "
            f"--alphabet {shlex.quote(chars)}")


def read_labelled(inputs: Sequence[str | os.PathLike], alphabet: str | None = None,
                  rules: LabelRules | None = None, recursive: bool = False) -> LabelledImages:
    """Labelled images from folders/files; unlabelled names and unreadable files are skipped.

    Raises ``DataError`` if nothing usable remains.
    """
    found = labelled(inputs, alphabet, rules, recursive)
    label_of = dict(found)
    images, ok = load_images([f for f, _ in found])
    if not images:
        raise DataError(f"none of the {len(found)} labelled images in {', '.join(map(shown, inputs))} could be read")
    return LabelledImages(images, [label_of[f] for f in ok], ok)


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[list[int]]:
    """Deterministic random split of ``range(n)``: one list per fraction, the rest first.

    ``split_indices(100, [0.1], 0)`` -> ``[train (90), val (10)]``.
    """
    order = list(range(n))
    random.Random(seed).shuffle(order)
    sizes = [int(round(n * f)) for f in fractions]
    if sum(sizes) >= n:
        raise DataError(f"{n} images are too few to split off {fractions}")
    parts, start = [], n - sum(sizes)
    parts.append(sorted(order[:start]))
    for s in sizes:
        parts.append(sorted(order[start:start + s]))
        start += s
    return parts

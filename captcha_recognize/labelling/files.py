"""The labelling page's file rules: which labels can become file names, the free name for a label,
and copies that are synced before they are renamed into place, so no image or label is ever lost."""
from __future__ import annotations

import os
import uuid
from pathlib import Path

from captcha_recognize.data.labels import parse_label

FILE_NAME_FORBIDDEN = set('/\\:*?"<>|')
MAX_LABEL = 100
MAX_NAME_BYTES = 255  # a file name's bytes on most file systems
TMP_PREFIX = ".labelling-"


class Refused(ValueError):
    """A label or action the page must refuse, with the reason shown there."""


class Conflict(RuntimeError):
    """The image was labelled, claimed or changed elsewhere (another tab, another process)."""


def label_problem(label: str, alphabet: str | None = None) -> str | None:
    """Why ``label`` cannot become a file name that reads back as it, or None if it can."""
    if not label:
        return "empty label: type the captcha's text"
    for c in label:
        if c in FILE_NAME_FORBIDDEN or not c.isprintable():
            return f"{c!r} cannot be in a file name"
        if c in "._":
            return f"{c!r} cannot be in a label: a file name's label ends at the first '.' or '_'"
        if alphabet is not None and c not in alphabet:
            return f"{c!r} is not in the alphabet {alphabet!r}"
    if len(label) > MAX_LABEL:
        return f"longer than {MAX_LABEL} characters"
    if len(f"{label}_99.jpeg".encode()) > MAX_NAME_BYTES:
        return f"too long for a file name ({len(label.encode())} bytes; file systems hold {MAX_NAME_BYTES})"
    if parse_label(label + ".png", alphabet) != label:
        return "a label is letters and digits (start with --alphabet for other characters)"
    return None


def free_name(folder: Path, label: str, ext: str, taken: set[str]) -> Path:
    """``<label><ext>``, else ``<label>_2<ext>``, ``_3`` ...: the first that neither exists nor is ``taken``."""
    k = 1
    while True:
        name = f"{label}{ext}" if k == 1 else f"{label}_{k}{ext}"
        if name not in taken and not (folder / name).exists():
            return folder / name
        k += 1


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def copy_atomically(src: Path, dest: Path) -> None:
    """Write ``src``'s bytes to ``dest`` through a synced temporary file and ``os.replace``."""
    tmp = dest.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(src.read_bytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dest.parent)

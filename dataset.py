"""Data: file-name labels, the label converter, reading images, the one preprocessing path,
datasets and splits. Shared by training, evaluation, prediction, export and the service:

* ``parse_label("3568_2.png") -> "3568"``: the label is the file name up to the first
  ``.`` or ``_``.
* ``LabelConverter`` owns the alphabet, the CTC blank index, encoding and decoding.
* ``Preprocess`` + ``image_to_array`` + ``normalize``: the one preprocessing path.
* ``read_labelled`` reads folders (or files), skipping unreadable images with one warning.
"""
from __future__ import annotations

import io
import os
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
LABEL_HELP = ("a label file name is the captcha text, optionally followed by '_' and anything, "
              "then the extension: '3568.png', 'b5pnn.png', '3568_2.png'")

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class DataError(ValueError):
    """Bad user data (empty folder, no labelled files, ...): shown as one line."""


class ImageTooLarge(ValueError):
    """An encoded image whose header declares more pixels than allowed (``open_image``'s ``max_pixels``)."""


# ---------------------------------------------------------------------------- labels

def parse_label(path: str | os.PathLike, alphabet: str | None = None) -> str | None:
    """The label encoded in a file name, or None if the name is not a label.

    ``3568.png`` and ``3568_2.png`` are both ``3568``. Without an alphabet a label is
    letters and digits; with one, every character must be in it.
    """
    name = os.path.basename(os.fspath(path))
    label = re.split(r"[._]", name, maxsplit=1)[0]
    if not label:
        return None
    if alphabet is None:
        return label if LABEL_RE.match(label) else None
    return label if all(c in alphabet for c in label) else None


def infer_alphabet(labels: Iterable[str]) -> str:
    """Sorted set of the characters used by the labels."""
    return "".join(sorted(set("".join(labels))))


class LabelConverter:
    """Owns the alphabet: text <-> class indices, and decoding of model outputs.

    ``ctc=False`` (CNN): class ``i`` is ``alphabet[i]``, each label has ``length`` chars.
    ``ctc=True`` (CRNN): index 0 is the blank, class ``i + 1`` is ``alphabet[i]``.
    """

    def __init__(self, alphabet: str, length: int | None = None, ctc: bool = False):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty with unique characters: {alphabet!r}")
        self.alphabet, self.length, self.ctc = alphabet, length, ctc
        self.blank = 0 if ctc else None
        offset = 1 if ctc else 0
        self.index = {c: i + offset for i, c in enumerate(alphabet)}

    @property
    def n_classes(self) -> int:
        """Model output classes, blank included for CTC."""
        return len(self.alphabet) + (1 if self.ctc else 0)

    def accepts(self, label: str) -> bool:
        """Whether ``label`` can be encoded (alphabet, and length for the CNN)."""
        ok = all(c in self.index for c in label) and len(label) > 0
        return ok and (self.ctc or len(label) == self.length)

    def encode(self, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN: ``(B, P)`` targets. CTC: concatenated targets ``(sum L,)``. Plus lengths ``(B,)``."""
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long)
        if self.ctc:
            flat = [self.index[c] for s in labels for c in s]
            return torch.tensor(flat, dtype=torch.long), lengths
        return torch.tensor([[self.index[c] for c in s] for s in labels], dtype=torch.long), lengths

    @staticmethod
    def log_confidence(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """Log of the confidence ``(B,)``: the sum over positions (CTC: time steps, blanks
        included) of the log-probability of the chosen class, with logits divided by
        ``temperature`` (the checkpoint's calibration; 1 = raw softmax). Float64 logits are
        computed in float64 (calibration), others in float32."""
        x = logits if logits.dtype == torch.float64 else logits.float()
        log_p = (x / temperature).log_softmax(-1)  # (B, T|P, K)
        return log_p.max(-1).values.sum(-1)  # (B,)

    def decode(self, logits: torch.Tensor, temperature: float = 1.0) -> tuple[list[str], list[float]]:
        """Texts and confidences from logits: CNN ``(B, P, K)``, CRNN ``(B, T, K + 1)``.

        Confidence is the product of the chosen classes' probabilities at ``temperature``
        (``log_confidence``); the temperature changes the confidence, never the text. CTC
        decoding is greedy: collapse repeats, then drop blanks.
        """
        best = logits.argmax(-1)  # (B, T|P)
        conf = self.log_confidence(logits, temperature).exp().tolist()
        chars = self.alphabet
        texts = []
        for row in best.tolist():
            if self.ctc:
                out, prev = [], self.blank
                for k in row:
                    if k != prev and k != self.blank:
                        out.append(chars[k - 1])
                    prev = k
                texts.append("".join(out))
            else:
                texts.append("".join(chars[k] for k in row))
        return texts, conf


# ---------------------------------------------------------------------- preprocessing

@dataclass
class Preprocess:
    """How an image becomes the model's input; stored in the checkpoint."""
    width: int = 50
    height: int = 22
    channels: int = 3  # 3: RGB, 1: grayscale


# Default model input per family: the cap on its height and its channels (the CNN reads
# colour at the classic small size, the CRNN grey and a little larger).
MAX_HEIGHT = {"cnn": 24, "crnn": 32}
CHANNELS = {"cnn": 3, "crnn": 1}


def auto_size(sizes: Sequence[tuple[int, int]], max_height: int = 24) -> tuple[int, int]:
    """Model input (width, height) for a folder: its most common image size, scaled down
    (aspect kept) to at most ``max_height`` pixels high."""
    w, h = max(set(sizes), key=list(sizes).count)
    if h > max_height:
        w, h = max(16, round(w * max_height / h)), max_height
    return w, h


def open_image(src: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, PIL image or array.

    Raises ``OSError`` / ``ValueError`` for empty, truncated or non-image input, and
    ``ImageTooLarge`` for an encoded image of more than ``max_pixels`` pixels, checked on its
    header before any pixel is decoded (decompression bombs).
    """
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    img = Image.open(src)
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels is over the limit of {max_pixels} pixels")
    img.load()  # decode now, so truncated files fail here
    return img


def image_to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Any mode/size -> uint8 ``(C, H, W)`` at the model's input size.

    Transparency is composited on white; palette/greyscale/CMYK become RGB or L.
    """
    opaque = img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] == 255
    if not opaque and (img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    img = img.convert("RGB" if spec.channels == 3 else "L")
    if img.size != (spec.width, spec.height):
        img = img.resize((spec.width, spec.height), Image.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [-1, 1], channels_last for fast CPU convs."""
    x = batch.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def preprocess(images: Sequence[ImageInput], spec: Preprocess) -> torch.Tensor:
    """Images -> model input ``(B, C, H, W)``: ``normalize(image_to_array(...))``."""
    arrays = [image_to_array(open_image(im), spec) for im in images]
    return normalize(torch.from_numpy(np.stack(arrays)))


# ---------------------------------------------------------------------------- folders

def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files in the given folders and/or files, sorted by name within each folder."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"no such file or folder: {p}")
    return files


def warn_skipped(bad: Sequence[tuple[Path, str]], what: str = "unreadable image") -> None:
    """One warning line naming how many files were skipped and which."""
    if bad:
        names = ", ".join(f"{p.name} ({why})" for p, why in bad[:10])
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        print(f"warning: skipped {len(bad)} {what}{'s' if len(bad) > 1 else ''}: {names}{more}",
              file=sys.stderr)


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


def labelled_files(inputs: Sequence[str | os.PathLike], alphabet: str | None = None) -> list[Path]:
    """The image files whose names are labels; warns once about the others.

    Raises ``DataError`` if there are no images, or no name is a label.
    """
    files = list_images(inputs)
    where = ", ".join(map(str, inputs))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {where}")
    labelled = [(f, parse_label(f, alphabet)) for f in files]
    unlabelled = [(f, "not a label") for f, lab in labelled if lab is None]
    if len(unlabelled) == len(files):
        raise DataError(f"none of the {len(files)} file names in {where} is a label: {LABEL_HELP}")
    warn_skipped(unlabelled, "unlabelled file")
    return [f for f, lab in labelled if lab is not None]


def read_labelled(inputs: Sequence[str | os.PathLike], alphabet: str | None = None) -> LabelledImages:
    """Labelled images from folders/files; unlabelled names and unreadable files are skipped.

    Raises ``DataError`` if nothing usable remains.
    """
    keep = labelled_files(inputs, alphabet)
    where = ", ".join(map(str, inputs))
    images, ok = load_images(keep)
    if not images:
        raise DataError(f"none of the {len(keep)} labelled images in {where} could be read")
    labels = [parse_label(f, alphabet) for f in ok]
    return LabelledImages(images, labels, ok)


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


# -------------------------------------------------------------------------- datasets

class ArrayDataset(torch.utils.data.Dataset):
    """Preprocessed uint8 images ``(N, C, H, W)`` with their labels."""

    def __init__(self, arrays: torch.Tensor, labels: Sequence[str]):
        self.arrays, self.labels = arrays, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        return self.arrays[i], self.labels[i]


def to_arrays(images: Sequence[Image.Image], spec: Preprocess) -> torch.Tensor:
    """Decoded images -> uint8 ``(N, C, H, W)`` at the model's input size."""
    return torch.from_numpy(np.stack([image_to_array(im, spec) for im in images]))

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
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
LABEL_HELP = ("a label file name is the captcha text, optionally followed by '_' and anything, "
              "then the extension: '3568.png', 'b5pnn.png', '3568_2.png'")
CASES = ("keep", "lower", "upper")

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class DataError(ValueError):
    """Bad user data (empty folder, no labelled files, ...): shown as one line."""


def plural(n: int, word: str) -> str:
    """``1 epoch``, ``2 epochs``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def shown(path: str | os.PathLike) -> str:
    """A path as text that prints on any console: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
class ImageTooLarge(ValueError):
    """An encoded image whose header declares more pixels than allowed (``open_image``'s ``max_pixels``)."""


# ---------------------------------------------------------------------------- labels

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
    pairs = []
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
        pairs.append((parts[0], parts[1]))
    return tuple(sorted(pairs))


def name_text(path: str | os.PathLike) -> str:
    """The text a file name holds: up to its first ``.`` or ``_``, in NFC form (macOS file names
    are decomposed)."""
    name = unicodedata.normalize("NFC", os.path.basename(os.fspath(path)))
    return re.split(r"[._]", name, maxsplit=1)[0]


def parse_label(path: str | os.PathLike, alphabet: str | None = None, rules: LabelRules | None = None) -> str | None:
    """The label encoded in a file name, or None if the name is not a label.

    ``3568.png`` and ``3568_2.png`` are both ``3568``. Without an alphabet a label is Unicode
    letters and digits (and the characters ``rules`` maps); with one, every character of the
    label must be in it. Names are compared in NFC form, as macOS file names are decomposed.
    """
    text = name_text(path)
    rules = rules or LabelRules()
    mapped = dict(rules.label_map)
    if not text or (alphabet is None and not all(c.isalnum() or c in mapped for c in text)):
        return None
    label = rules.apply(text)
    return label if alphabet is None or all(c in alphabet for c in label) else None


def mixed_case(labels: Iterable[str]) -> list[str]:
    """The letters that appear in the labels in both cases (``["a", "k"]``)."""
    chars = set("".join(labels))
    return sorted(c for c in chars if c.islower() and c.upper() in chars)


def infer_alphabet(labels: Iterable[str]) -> str:
    """Sorted set of the characters used by the labels."""
    return "".join(sorted(set("".join(labels))))


class LabelConverter:
    """Owns the alphabet: text <-> class indices, and decoding of model outputs.

    ``ctc=False`` (CNN): class ``i`` is ``alphabet[i]``, each label has ``length`` chars.
    ``ctc=True`` (CRNN): index 0 is the blank, class ``i + 1`` is ``alphabet[i]``; with
    ``fixed=True`` every reading has exactly ``length`` chars (all training labels had that length).
    """

    def __init__(self, alphabet: str, length: int | None = None, ctc: bool = False, fixed: bool = False):
        if len(set(alphabet)) != len(alphabet) or not alphabet:
            raise ValueError(f"alphabet must be non-empty with unique characters: {alphabet!r}")
        if fixed and not (ctc and length):
            raise ValueError("fixed=True needs a CTC converter with a length")
        self.alphabet, self.length, self.ctc, self.fixed = alphabet, length, ctc, fixed
        self.blank = 0 if ctc else None
        offset = 1 if ctc else 0
        self.index = {c: i + offset for i, c in enumerate(alphabet)}

    @property
    def n_classes(self) -> int:
        """Model output classes, blank included for CTC."""
        return len(self.alphabet) + (1 if self.ctc else 0)

    @property
    def fixed_length(self) -> int | None:
        """The length every reading has (the CNN's, or a fixed-length CRNN's); None: any."""
        return self.length if not self.ctc or self.fixed else None

    def accepts(self, label: str) -> bool:
        """Whether ``label`` can be encoded (alphabet, and length when it is fixed)."""
        ok = all(c in self.index for c in label) and len(label) > 0
        return ok and self.fixed_length in (None, len(label))

    def encode(self, labels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """CNN: ``(B, P)`` targets. CTC: concatenated targets ``(sum L,)``. Plus lengths ``(B,)``."""
        lengths = torch.tensor([len(s) for s in labels], dtype=torch.long)
        if self.ctc:
            flat = [self.index[c] for s in labels for c in s]
            return torch.tensor(flat, dtype=torch.long), lengths
        return torch.tensor([[self.index[c] for c in s] for s in labels], dtype=torch.long), lengths

    def collapse(self, path: torch.Tensor) -> list[list[int]]:
        """CTC: each row of class indices ``(B, T)`` with repeats merged and blanks dropped."""
        out = []
        for row in path.tolist():
            kept, prev = [], self.blank
            for k in row:
                if k != prev and k != self.blank:
                    kept.append(k)
                prev = k
            out.append(kept)
        return out

    def best_path(self, logits: torch.Tensor) -> torch.Tensor:
        """The class read at each position or time step ``(B, T|P)``: the most probable one
        (greedy), except that a fixed-length CRNN whose greedy reading has another length takes
        the most probable alignment of exactly ``length`` characters instead."""
        return self._read(logits)[0]

    def _read(self, logits: torch.Tensor) -> tuple[torch.Tensor, list[list[int]] | None]:
        """``best_path`` and, for CTC, its rows collapsed (``collapse``), each row collapsed once."""
        path = logits.argmax(-1)  # (B, T|P)
        if not self.ctc:
            return path, None
        kept = self.collapse(path)
        wrong = [i for i, k in enumerate(kept) if len(k) != self.length] if self.fixed else []
        if wrong:
            rows = torch.tensor(wrong)
            path[rows] = ctc_path_of_length(logits[rows].float().log_softmax(-1), self.length, path[rows])
            for i, k in zip(wrong, self.collapse(path[rows])):
                kept[i] = k
        return path, kept

    def log_confidence(self, logits: torch.Tensor, temperature: float = 1.0,
                       path: torch.Tensor | None = None) -> torch.Tensor:
        """Log of the confidence ``(B,)``: the sum over positions (CTC: time steps, blanks
        included) of the log-probability of the class on ``path`` (default ``best_path``), with
        logits divided by ``temperature`` (the checkpoint's calibration; 1 = raw softmax).
        Float64 logits are computed in float64 (calibration), others in float32."""
        x = logits if logits.dtype == torch.float64 else logits.float()
        log_p = (x / temperature).log_softmax(-1)  # (B, T|P, K)
        path = self.best_path(logits) if path is None else path  # (B, T|P)
        return log_p.gather(-1, path.unsqueeze(-1)).squeeze(-1).sum(-1)  # (B,)

    def decode(self, logits: torch.Tensor, temperature: float = 1.0) -> tuple[list[str], list[float]]:
        """Texts and confidences from logits: CNN ``(B, P, K)``, CRNN ``(B, T, K + 1)``.

        Confidence is the product of the chosen classes' probabilities at ``temperature``
        (``log_confidence``); the temperature changes the confidence, never the text. CTC
        decoding follows ``best_path``: collapse repeats, then drop blanks.
        """
        path, kept = self._read(logits)  # (B, T|P), CTC: the characters read per row
        conf = self.log_confidence(logits, temperature, path).exp().tolist()
        chars = self.alphabet
        if kept is not None:
            return ["".join(chars[k - 1] for k in row) for row in kept], conf
        return ["".join(chars[k] for k in row) for row in path.tolist()], conf


def ctc_path_of_length(log_p: torch.Tensor, length: int, fallback: torch.Tensor, blank: int = 0) -> torch.Tensor:
    """The most probable CTC alignment ``(B, T)`` of log-probabilities ``(B, T, K)`` that reads
    exactly ``length`` characters (Viterbi over states: characters read so far, class of this
    step); a row too short for ``length`` characters keeps its ``fallback`` row."""
    B, T, K = log_p.shape
    classes = torch.arange(K)
    score = log_p.new_full((B, length + 1, K), float("-inf"))  # (B, N + 1, K): best path ending in state
    score[:, 0, blank] = log_p[:, 0, blank]
    score[:, 1, 1:] = log_p[:, 0, 1:]
    prev_class, advanced = [], []  # per step t >= 1: where each state came from
    for t in range(1, T):
        top, arg = score.topk(2, -1)  # (B, N + 1, 2)
        is_top = classes == arg[..., :1]  # (B, N + 1, K)
        other = torch.where(is_top, top[..., 1:], top[..., :1])  # best over classes other than k
        other_arg = torch.where(is_top, arg[..., 1:], arg[..., :1])
        enter = torch.full_like(score, float("-inf"))  # a new character k, after n - 1 others
        enter[:, 1:] = other[:, :-1]
        enter_arg = torch.zeros_like(other_arg)
        enter_arg[:, 1:] = other_arg[:, :-1]
        stay = score.clone()  # the same character k held on
        stay[..., blank] = top[..., 0]  # a blank follows anything, reading nothing new
        stay_arg = classes.expand(B, length + 1, K).clone()
        stay_arg[..., blank] = arg[..., 0]
        go = enter > stay  # (B, N + 1, K)
        go[..., blank] = False
        score = torch.where(go, enter, stay) + log_p[:, t].unsqueeze(1)
        prev_class.append(torch.where(go, enter_arg, stay_arg))
        advanced.append(go)
    end_score, k = score[:, length].max(-1)  # (B,)
    n = torch.full((B,), length)
    rows = torch.arange(B)
    path = torch.empty(B, T, dtype=torch.long)
    for t in range(T - 1, 0, -1):
        path[:, t] = k
        k, n = prev_class[t - 1][rows, n, k], n - advanced[t - 1][rows, n, k].long()
    path[:, 0] = k
    return torch.where(torch.isfinite(end_score).unsqueeze(1), path, fallback)


# ---------------------------------------------------------------------- preprocessing

@dataclass
class Preprocess:
    """How an image becomes the model's input; stored in the checkpoint."""
    width: int = 50
    height: int = 22
    channels: int = 3  # 3: RGB, 1: grayscale
    # ink colours (RGB): each adds one input channel, the mask of the pixels drawn in that flat
    # colour (within INK_TOLERANCE), taken at the image's own size before it is resized
    ink: tuple[tuple[int, int, int], ...] = ()

    def __post_init__(self) -> None:
        self.ink = tuple(tuple(int(v) for v in colour) for colour in self.ink)  # lists from JSON / checkpoints

    @property
    def in_channels(self) -> int:
        """Channels of the model input: the image's, then one mask per ink colour."""
        return self.channels + len(self.ink)


# Default model input per family: the cap on its height and its channels (the CNN reads
# colour at the classic small size, the CRNN grey and a little larger).
MAX_HEIGHT = {"cnn": 24, "crnn": 32}
CHANNELS = {"cnn": 3, "crnn": 1}
# tall captchas (at least TALL pixels high) lose their glyphs' details at 32 pixels: the CRNN keeps
# up to TALL_MAX_HEIGHT of their height
TALL, TALL_MAX_HEIGHT = 60, 64
INK_TOLERANCE = 3  # an ink pixel's channels are within this of its colour
INK_SHARE, INK_COMMON = 0.05, 0.8  # an ink colour covers 5% of an image, in 80% of the images
INK_PALETTE, INK_FLAT = 8, 0.9  # flat-colour captchas: 8 colours cover 90% of the pixels (80% of the images)
INK_MAX, INK_SAMPLE = 3, 300  # at most 3 ink channels, found on up to 300 images
MIN_SIDE = 16  # the smallest input height both families read, and the CNN's width: they halve them 4 times


def max_height(arch: str, sizes: Sequence[tuple[int, int]]) -> int:
    """The default input height cap of ``arch`` for images of these sizes."""
    h = most_common(sizes)[1] if sizes else 0
    return TALL_MAX_HEIGHT if arch == "crnn" and h >= TALL else MAX_HEIGHT[arch]


def most_common(sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    return max(set(sizes), key=list(sizes).count)


def auto_size(sizes: Sequence[tuple[int, int]], max_height: int = 24) -> tuple[int, int]:
    """Model input (width, height) for a folder: its most common image size, scaled (aspect
    kept) to at most ``max_height`` and at least MIN_SIDE pixels high, and at least MIN_SIDE wide."""
    w, h = most_common(sizes)
    target = min(max(h, MIN_SIDE), max_height)
    if target != h:
        w, h = round(w * target / h), target
    return max(MIN_SIDE, w), h


def array_to_image(arr: np.ndarray) -> Image.Image:
    """An image from an array: ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)`` with 1, 3 or 4 channels.
    uint8 is taken as is, 16-bit integers are scaled down, floats are read as 0..1 when they
    stay within it (else 0..255), booleans as black and white."""
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)  # (C, H, W) -> (H, W, C)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)) or 0 in arr.shape:
        raise ValueError(f"an image array must be (H, W), (H, W, 3|4) or (3|4, H, W) and not empty, "
                         f"got shape {arr.shape}")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        arr = np.clip(arr * (255 if arr.max(initial=0) <= 1 else 1), 0, 255).round().astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = to_8bit(arr.astype(np.float64), int(arr.max(initial=0)))
    return Image.fromarray(np.ascontiguousarray(arr))


def to_8bit(values: np.ndarray, top: int) -> np.ndarray:
    """Integer samples as uint8: values above 255 mean a 16-bit range, scaled by 255/65535."""
    scale = 255 / 65535 if top > 255 else 1.0
    return np.clip(values * scale, 0, 255).round().astype(np.uint8)


def open_image(src: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, PIL image or array.

    Raises ``OSError`` / ``ValueError`` for empty, truncated or non-image input, and
    ``ImageTooLarge`` for an encoded image of more than ``max_pixels`` pixels, checked on its
    header before any pixel is decoded (decompression bombs).
    """
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return array_to_image(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    img = Image.open(src)
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise ImageTooLarge(f"{img.width}x{img.height} pixels is over the limit of {max_pixels} pixels")
    img.load()  # decode now, so truncated files fail here
    return img


def eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit greyscale (``I;16``, ``I``, ``F``) as 8-bit ``L`` with its range kept:
    Pillow's own conversion clips them at 255."""
    if img.mode == "F":
        return array_to_image(np.asarray(img, dtype=np.float32))
    if img.mode == "I" or img.mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535 if img.mode.startswith("I;16") else int(arr.max(initial=0))
        return Image.fromarray(to_8bit(arr, top))
    return img


def image_to_array(img: Image.Image, spec: Preprocess) -> np.ndarray:
    """Any mode/size -> uint8 ``(C, H, W)`` at the model's input size.

    Transparency is composited on white; palette/greyscale/CMYK/16-bit become RGB or L.
    """
    img = eight_bit(img)
    opaque = img.mode in ("RGBA", "LA") and img.getchannel("A").getextrema()[0] == 255
    if not opaque and (img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    masks = ink_masks(img.convert("RGB"), spec.ink) if spec.ink else []
    img = img.convert("RGB" if spec.channels == 3 else "L")
    size = (spec.width, spec.height)
    img, *masks = [im if im.size == size else im.resize(size, Image.BILINEAR) for im in [img, *masks]]
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    return np.concatenate([arr, *(np.asarray(m, dtype=np.uint8)[None] for m in masks)]) if masks else arr


def ink_masks(rgb: Image.Image, ink: Sequence[tuple[int, int, int]]) -> list[Image.Image]:
    """One 8-bit mask per ink colour, at the image's size: 0 where a pixel is that colour (each
    channel within INK_TOLERANCE), 255 elsewhere, so ink stays dark on white as in the image."""
    arr = np.asarray(rgb, dtype=np.int16)  # (H, W, 3)
    return [Image.fromarray(np.where((np.abs(arr - np.array(c)) <= INK_TOLERANCE).all(-1), 0, 255).astype(np.uint8))
            for c in ink]


def find_ink(images: Sequence[Image.Image], sample: int = INK_SAMPLE) -> tuple[tuple[int, int, int], ...]:
    """The flat colours a site draws in, when its captchas are made of a few flat colours: the
    colours (other than each image's background) that cover at least INK_SHARE of nearly every
    image (INK_COMMON), most common first, at most INK_MAX. Empty for photographic or antialiased
    images, JPEGs, and sites whose colours change from image to image."""
    step = max(1, len(images) // sample)
    picked = images[::step][:sample]
    counts: dict[int, int] = {}
    flat = 0
    for im in picked:
        arr = np.asarray(image_to_array(im, Preprocess(im.width, im.height, 3)), dtype=np.uint32)  # (3, H, W)
        packed = (arr[0] << 16 | arr[1] << 8 | arr[2]).ravel()
        colours, n = np.unique(packed, return_counts=True)
        order = np.argsort(-n)
        share = n[order] / packed.size
        flat += share[:INK_PALETTE].sum() >= INK_FLAT
        for colour in colours[order[1:]][share[1:] >= INK_SHARE]:  # order[0]: the background
            counts[int(colour)] = counts.get(int(colour), 0) + 1
    if not picked or flat < INK_COMMON * len(picked):
        return ()
    common = sorted((c for c, k in counts.items() if k >= INK_COMMON * len(picked)), key=lambda c: -counts[c])
    return tuple((c >> 16, c >> 8 & 255, c & 255) for c in common[:INK_MAX])


def normalize(batch: torch.Tensor) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float in [-1, 1], channels_last for fast CPU convs."""
    x = batch.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last)


def preprocess(images: Sequence[ImageInput], spec: Preprocess) -> torch.Tensor:
    """Images -> model input ``(B, C, H, W)``: ``normalize(image_to_array(...))``."""
    arrays = [image_to_array(open_image(im), spec) for im in images]
    return normalize(torch.from_numpy(np.stack(arrays)))


# ---------------------------------------------------------------------------- folders

def list_images(inputs: Sequence[str | os.PathLike], recursive: bool = False) -> list[Path]:
    """Image files in the given folders and/or files, sorted by name within each folder (with
    ``recursive``, also in their subfolders). A folder whose images are all in subfolders is a
    ``DataError`` that says so, unless ``recursive``."""
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
    files = list_images(inputs, recursive)
    where = ", ".join(map(shown, inputs))
    if not files:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTS))}) in {where}")
    labelled = [(f, parse_label(f, alphabet, rules)) for f in files]
    unlabelled = [(f, "not a label") for f, lab in labelled if lab is None]
    if len(unlabelled) == len(files):
        raise DataError(f"none of the {len(files)} file names in {where} is a label: {LABEL_HELP}")
    warn_skipped(unlabelled, "unlabelled file")
    return [f for f, lab in labelled if lab is not None]


def read_labelled(inputs: Sequence[str | os.PathLike], alphabet: str | None = None,
                  rules: LabelRules | None = None, recursive: bool = False) -> LabelledImages:
    """Labelled images from folders/files; unlabelled names and unreadable files are skipped.

    Raises ``DataError`` if nothing usable remains.
    """
    keep = labelled_files(inputs, alphabet, rules, recursive)
    images, ok = load_images(keep)
    if not images:
        raise DataError(f"none of the {len(keep)} labelled images in {', '.join(map(shown, inputs))} could be read")
    return LabelledImages(images, [parse_label(f, alphabet, rules) for f in ok], ok)


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

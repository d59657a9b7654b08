"""Data: file-name labels, the label converter, image preprocessing and augmentation.

Everything that turns files into tensors lives here, once, and is shared by training,
evaluation, prediction and export:

* ``parse_label("3568_2.png") -> "3568"``: the label is the file name up to the first
  ``.`` or ``_``.
* ``LabelConverter`` owns the alphabet, the CTC blank index, encoding and decoding.
* ``Preprocess`` + ``image_to_array`` + ``normalize``: the one preprocessing path.
* ``read_folder`` reads a folder (or files), skipping unreadable images with one warning.
* ``augment`` applies light, captcha-style augmentation to a training batch.
"""
from __future__ import annotations

import argparse
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
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}
LABEL_RE = re.compile(r"^[A-Za-z0-9]+$")
LABEL_HELP = ("a label file name is the captcha text, optionally followed by '_' and anything, "
              "then the extension: '3568.png', 'b5pnn.png', '3568_2.png'")

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


class DataError(ValueError):
    """Bad user data (empty folder, no labelled files, ...): shown as one line."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, unless its help text already says it or it is None or ''."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text or action.default in (None, "") else super()._get_help_string(action)


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

    def decode(self, logits: torch.Tensor) -> tuple[list[str], list[float]]:
        """Texts and confidences from logits: CNN ``(B, P, K)``, CRNN ``(B, T, K + 1)``.

        Confidence is the product of the chosen classes' probabilities (for CTC, over
        all time steps, blanks included). CTC decoding is greedy: collapse repeats,
        then drop blanks.
        """
        probs = logits.float().softmax(-1)  # (B, T|P, K)
        best_p, best = probs.max(-1)  # (B, T|P)
        conf = best_p.prod(-1).tolist()
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


# Default model input per family: the cap on its height (the CRNN read captcha-images-v2
# better at 128x32 than at 96x24, README: Accuracy; the CNN keeps the classic small input)
# and its channels (the CNN reads colour, the CRNN grey).
MAX_HEIGHT = {"cnn": 24, "crnn": 32}
CHANNELS = {"cnn": 3, "crnn": 1}


def auto_size(sizes: Sequence[tuple[int, int]], max_height: int = 24) -> tuple[int, int]:
    """Model input (width, height) for a folder: its most common image size, scaled down
    (aspect kept) to at most ``max_height`` pixels high."""
    w, h = max(set(sizes), key=list(sizes).count)
    if h > max_height:
        w, h = max(16, round(w * max_height / h)), max_height
    return w, h


def open_image(src: ImageInput) -> Image.Image:
    """A fully decoded PIL image from a path, bytes, PIL image or array.

    Raises ``OSError`` / ``ValueError`` for empty, truncated or non-image input.
    """
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return Image.fromarray(src)
    if isinstance(src, (bytes, bytearray)):
        src = io.BytesIO(src)
    img = Image.open(src)
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


# ----------------------------------------------------------------------- augmentation

@dataclass
class Augment:
    """Strength of the training augmentation (0 disables a part)."""
    shift: float = 0.06  # max translation, fraction of width/height
    rotate: float = 5.0  # degrees
    shear: float = 0.15
    scale: float = 0.08  # +- relative zoom
    brightness: float = 0.2
    contrast: float = 0.25
    noise: float = 0.04
    lines: float = 0.3  # probability of each random stroke
    strokes: int = 1  # strokes drawn (each with probability ``lines``)
    arcs: float = 0.0  # share of the strokes that are circle arcs instead of straight lines
    width: float = 1.0  # strokes are 1 to ``width`` pixels wide


# ``--strokes``: "arcs" (the default) draws two strokes, half of them circle arcs, up to 2
# pixels wide; "line" one straight 1-pixel line (``Augment()``). Real captchas cross their
# characters with lines and arcs: "arcs" took the percent4-digits CNN's mistakes on 3 x 149
# test captchas from 10 to 4, the CRNN's from 11 to 7, and read captcha-images-v2 as well or
# better at every training-set size (README: Accuracy)
STROKES = {"arcs": Augment(lines=0.5, strokes=2, arcs=0.5, width=2.0), "line": Augment()}


def augment(x: torch.Tensor, aug: Augment, gen: torch.Generator | None = None) -> torch.Tensor:
    """Random affine warp, colour jitter, noise and lines on a normalized batch ``(B, C, H, W)``."""
    b, c, h, w = x.shape
    u = lambda *s: torch.rand(*s, generator=gen) * 2 - 1  # noqa: E731  uniform in [-1, 1]
    ang = u(b) * aug.rotate * torch.pi / 180
    sc = 1 + u(b) * aug.scale
    sh = u(b) * aug.shear
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * h / w + sh
    theta[:, 1, 0], theta[:, 1, 1] = sin * w / h, cos
    theta[:, :, 2] = u(b, 2) * aug.shift * 2
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + u(b, 1, 1, 1) * aug.contrast
    bright = u(b, 1, 1, 1) * aug.brightness
    x = (x - mean) * contrast + mean + bright
    if c == 3:
        x = x + u(b, 3, 1, 1) * aug.brightness * 0.5  # per-channel colour shift
    if aug.lines > 0:
        x = _draw_strokes(x, aug, gen)
    x = x + torch.randn(x.shape, generator=gen) * aug.noise
    return x.clamp_(-1, 1).contiguous(memory_format=torch.channels_last)


def column_spread(arrays: torch.Tensor, sample: int = 5000) -> torch.Tensor:
    """How much each column's pixels vary across a set of images ``(W,)``. Looks at the
    first ``sample`` images, so large sets are not copied to float whole."""
    return arrays[:sample].float().std(0).mean(dim=(0, 1))  # (W,) from (N, C, H, W)


def text_span(spread: torch.Tensor) -> tuple[float, float]:
    """Columns ``[x0, x1)`` where the text of a set of captchas lies: those whose
    ``column_spread`` is above the mean (margins hold background and noise, which vary
    less than glyphs). The mean stays put on 90 images, where halfway between the least
    and the most varying column let noisy margin columns in on percent4-digits."""
    cols = (spread > spread.mean()).nonzero().flatten()
    return (float(cols[0]), float(cols[-1]) + 1) if len(cols) else (0.0, float(len(spread)))


def evenly_spaced(spread: torch.Tensor, span: tuple[float, float], length: int) -> bool:
    """Whether ``length`` characters sit at fixed, evenly spaced places over the text
    ``span`` (a fixed-pitch layout): the columns where ``splice`` cuts, or their
    neighbours, then vary clearly less across the images (under 0.8x) than the text on
    average, being the gaps between characters. percent4-digits' cuts vary 0.65x as much,
    proportionally spaced captcha-images-v2's about 1.0x."""
    x0, x1 = span
    if length < 2 or x1 - x0 < 2 * length:
        return False
    cuts = cut_columns(span, length).tolist()
    at_cuts = torch.stack([spread[max(0, c - 1):c + 2].min() for c in cuts]).mean()
    return bool(at_cuts < 0.8 * spread[int(x0):int(x1)].mean())


def cut_columns(span: tuple[float, float], length: int) -> torch.Tensor:
    """Columns ``(length - 1,)`` of the boundaries between ``length`` characters evenly
    spaced over ``span``: where ``splice`` cuts."""
    x0, x1 = span
    return torch.round(x0 + torch.arange(1, length) * (x1 - x0) / length).long()


def splice(x: torch.Tensor, labels: Sequence[str], p: float, span: tuple[float, float] | None = None,
           gen: torch.Generator | None = None) -> tuple[torch.Tensor, list[str]]:
    """Recombine a batch of equal-length captchas: with probability ``p`` per image, the
    columns right of a character boundary (boundaries evenly spaced over the text
    ``span``, default the whole width) come from another image of the batch, and so do
    the label's characters after it.

    New label combinations keep a model from reading a small training set by recognising
    whole images. Batches with labels of different lengths are returned unchanged.
    """
    b, _, _, w = x.shape  # (B, C, H, W)
    n = len(labels[0]) if labels else 0
    if p <= 0 or n < 2 or b < 2 or any(len(s) != n for s in labels):
        return x, list(labels)
    use = torch.rand(b, generator=gen) < p  # (B,)
    partner = torch.randperm(b, generator=gen)  # (B,)
    k = torch.randint(1, n, (b,), generator=gen)  # boundary after character k
    cut = cut_columns(span or (0.0, float(w)), n)[k - 1]  # (B,)
    right = (torch.arange(w).view(1, w) >= cut.view(b, 1)) & use.view(b, 1)  # (B, W)
    out = torch.where(right.view(b, 1, 1, w), x[partner], x)  # (B, C, H, W)
    new = [s[:j] + labels[i][j:] if u else s
           for s, i, j, u in zip(labels, partner.tolist(), k.tolist(), use.tolist())]
    return out.contiguous(memory_format=torch.channels_last), new


def _draw_strokes(x: torch.Tensor, aug: Augment, gen: torch.Generator | None) -> torch.Tensor:
    """``aug.strokes`` times, with probability ``aug.lines`` per image, a thin stroke of random
    intensity: a straight line or (share ``aug.arcs``) an arc of a circle."""
    b, c, h, w = x.shape
    ys = torch.linspace(-1, 1, h).view(1, h, 1)
    xs = torch.linspace(-1, 1, w).view(1, 1, w)
    r = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    # arcs and widths draw random numbers only when asked for, so ``Augment()`` (one 1-pixel
    # line) draws exactly what it did before they existed: ``--strokes line`` reproduces the
    # README's single-line numbers
    for _ in range(aug.strokes):
        y0, slope = (r(b) * 1.6 - 0.8).view(b, 1, 1), (r(b) - 0.5).view(b, 1, 1)
        dist = (ys - (y0 + slope * xs)).abs()  # (B, H, W), in units of half the height
        if aug.arcs > 0:
            arc = _arc_distance(ys, xs * (w / h), b, r)  # (B, H, W)
            dist = torch.where((r(b) < aug.arcs).view(b, 1, 1), arc, dist)
        half = 1.0 if aug.width <= 1 else (1 + r(b) * (aug.width - 1)).view(b, 1, 1)  # pixels
        mask = (dist < half / h).float() * (r(b) < aug.lines).float().view(b, 1, 1)
        value = (r(b, c) * 2 - 1).view(b, c, 1, 1)
        mask = mask.unsqueeze(1)  # (B, 1, H, W)
        x = x * (1 - mask) + value * mask
    return x


def _arc_distance(ys: torch.Tensor, xs: torch.Tensor, b: int, r) -> torch.Tensor:
    """Distance ``(B, H, W)`` of each pixel from a random circle per image (centre anywhere
    over the image, radius 0.25 to 1.25 image heights); ``xs`` in the units of ``ys``."""
    cx = ((r(b) * 2 - 1) * xs.max()).view(b, 1, 1)
    cy = (r(b) * 2 - 1).view(b, 1, 1)
    rad = (0.5 + r(b) * 2).view(b, 1, 1)
    return (((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() - rad).abs()


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


class _SeededSecrets(random.Random):
    """Stands in for the ``secrets`` module that the ``captcha`` package draws from,
    so that rendering is reproducible from a seed."""

    def randbelow(self, n: int) -> int:
        return self.randrange(n)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


_renderers: dict[tuple[int, int], object] = {}


def render_captcha(text: str, seed: int, width: int = 100, height: int = 40) -> Image.Image:
    """A synthetic captcha of ``text`` drawn by the ``captcha`` package, reproducible from ``seed``."""
    from captcha import image as captcha_image

    key = (width, height)
    if key not in _renderers:
        sizes = tuple(int(height * f) for f in (0.75, 0.85, 0.95))
        _renderers[key] = captcha_image.ImageCaptcha(width=width, height=height, font_sizes=sizes)
    saved = captcha_image.secrets
    captcha_image.secrets = _SeededSecrets(seed)
    try:
        return _renderers[key].generate_image(text)
    finally:
        captcha_image.secrets = saved


def random_text(rng: random.Random, alphabet: str, length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def synthetic_captcha(text: str, seed: int, size: tuple[int, int] = (50, 22)) -> Image.Image:
    """The project's synthetic captcha: drawn at twice ``size``, then scaled down to it."""
    w, h = size
    return render_captcha(text, seed, 2 * w, 2 * h).resize((w, h), Image.LANCZOS)


class SyntheticCaptchas(torch.utils.data.Dataset):
    """``n`` freshly rendered captchas per epoch (new texts and drawings every epoch)."""

    def __init__(self, n: int, alphabet: str, length: int, spec: Preprocess, seed: int = 0):
        self.n, self.alphabet, self.length, self.spec = n, alphabet, length, spec
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        seed = (self.seed * 1_000_003 + self.epoch) * 1_000_003 + i
        text = random_text(random.Random(seed), self.alphabet, self.length)
        img = synthetic_captcha(text, seed, (self.spec.width, self.spec.height))
        return torch.tensor(image_to_array(img, self.spec)), text  # copy: PIL's array is read-only

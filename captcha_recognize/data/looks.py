"""Captchas of many looks, for the base model (``make_captchas.py --looks``): random fonts from the
installed font packages, sizes, rotations, spacing down to overlap, outlined and dotted glyphs, flat,
graded and noisy backgrounds, crossing lines, arcs, speckle, wave warps and binarisation; texts of 3-8
characters from ``BASE_ALPHABET``. Each image is a function of its seed."""
from __future__ import annotations

import contextlib
import math
import random
import string
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("~/.fonts"), Path("C:/Windows/Fonts"),
             Path("/Library/Fonts"), Path("/System/Library/Fonts"))  # ~: the user's, where there is a home
# Cyrillic lower case without the letters drawn like Latin ones (а е о р с у х): one class per shape
CYRILLIC = "бвгджзийклмнптфцчшщъыьэюя"
BASE_ALPHABET = string.digits + string.ascii_lowercase + string.ascii_uppercase + CYRILLIC + "+-="
LENGTHS = (3, 8)
FONTS_HINT = "apt-get install fonts-dejavu fonts-freefont-ttf"  # fonts that draw digits, Latin and Cyrillic


class SeededSecrets(random.Random):
    """Stands in for the ``secrets`` module that the ``captcha`` package draws from,
    so that rendering is reproducible from a seed."""

    def randbelow(self, n: int) -> int:
        return self.randrange(n)

    def randbits(self, k: int) -> int:
        return self.getrandbits(k)


@contextlib.contextmanager
def seeded_captcha_package(seed: int) -> Iterator[Any]:
    """The ``captcha`` package's image module, drawing reproducibly from ``seed`` while in the block."""
    from captcha import image as captcha_image
    saved = captcha_image.secrets
    captcha_image.secrets = SeededSecrets(seed)
    try:
        yield captcha_image
    finally:
        captcha_image.secrets = saved


@lru_cache(maxsize=None)
def font_files() -> tuple[Path, ...]:
    """The installed TrueType/OpenType fonts that draw digits, Latin and Cyrillic letters and arithmetic
    symbols (one of each kind is checked)."""
    found = {p.name: p for d in map(expanded, FONT_DIRS) if d.is_dir() for ext in ("ttf", "otf")
             for p in d.rglob(f"*.{ext}")}
    return tuple(found[name] for name in sorted(found) if _draws_all(found[name]))  # one per file name


def expanded(folder: Path) -> Path:
    """``folder`` with ``~`` expanded; as it is where no home folder can be found."""
    try:
        return folder.expanduser()
    except RuntimeError:
        return folder


def _draws_all(path: Path) -> bool:
    try:
        font = ImageFont.truetype(str(path), 24)
        notdef = font.getmask("\uffff").getbbox()
        return all(font.getmask(c).getbbox() not in (None, notdef) for c in "Ж7Qgя+")
    except OSError:
        return False


@lru_cache(maxsize=256)
def _font(path: Path, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(path), size)


def looks_text(rng: random.Random) -> str:
    """A random text: an arithmetic expression one time in eight, else 3-8 characters of one script."""
    if rng.random() < 0.125:
        op = rng.choice("+-x")
        return f"{rng.randint(0, 99)}{op}{rng.randint(0, 20)}" + ("=" if rng.random() < 0.7 else "")
    pool = rng.choice((string.digits, string.ascii_lowercase + string.digits, string.ascii_uppercase,
                       string.ascii_letters + string.digits, CYRILLIC + "2456789", string.ascii_lowercase))
    return "".join(rng.choice(pool) for _ in range(rng.randint(*LENGTHS)))


def _colour(rng: random.Random, light: bool) -> tuple[int, int, int]:
    lo, hi = (170, 255) if light else (0, 110)
    return rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi)


def _background(rng: random.Random, w: int, h: int) -> Image.Image:
    kind = rng.random()
    if kind < 0.4:
        return Image.new("RGB", (w, h), (255, 255, 255) if rng.random() < 0.5 else _colour(rng, True))
    a, b = np.array(_colour(rng, True), float), np.array(_colour(rng, True), float)
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None, None]
    arr = a + (b - a) * t + np.zeros((h, w, 3))  # (H, W, 3)
    if kind > 0.75:  # grainy
        arr += np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(5, 30), arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _glyph(rng: random.Random, char: str, font: ImageFont.FreeTypeFont, style: str) -> Image.Image:
    """One character as an L mask (255 = ink), rotated, plain, outlined, bold or dotted."""
    stroke = max(1, font.size // 14)
    pad = 2 * stroke + 2
    box = font.getbbox(char, stroke_width=stroke)
    w, h = box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad
    mask = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(mask)
    at = (pad - box[0], pad - box[1])
    if style == "outline":
        d.text(at, char, font=font, fill=255, stroke_width=stroke, stroke_fill=255)
        d.text(at, char, font=font, fill=0)
    else:
        d.text(at, char, font=font, fill=255, stroke_width=stroke if style == "bold" else 0, stroke_fill=255)
    if style == "dotted":
        arr = np.asarray(mask) > 0  # (h, w)
        gen = np.random.default_rng(rng.getrandbits(32))
        dots = Image.new("L", (w, h), 0)
        dd = ImageDraw.Draw(dots)
        ys, xs = np.nonzero(arr & (gen.random(arr.shape) < 0.12))
        r = max(1, font.size // 24)
        for y, x in zip(ys, xs):
            dd.ellipse((x - r, y - r, x + r, y + r), fill=255)
        mask = dots
    return mask.rotate(rng.uniform(-30, 30), resample=Image.BILINEAR, expand=True)


def _text_layer(rng: random.Random, text: str, h: int) -> tuple[Image.Image, list[tuple[int, int, int]]]:
    """The text as an L mask ``h`` high, and each glyph's colour."""
    fonts = font_files()
    size = int(h * rng.uniform(0.55, 0.85))
    one_font = rng.random() < 0.7
    font_path = rng.choice(fonts)
    style = rng.choices(("plain", "bold", "outline", "dotted"), (0.55, 0.2, 0.15, 0.1))[0]
    spacing = rng.uniform(-0.5, 0.1)
    glyphs = [_glyph(rng, c, _font(font_path if one_font else rng.choice(fonts), int(size * rng.uniform(0.85, 1.15))),
                     style) for c in text]
    width = sum(g.width for g in glyphs) + int(size * spacing * (len(text) - 1)) + 2 * size // 3
    layer = Image.new("L", (max(width, h), h), 0)
    x = size // 3
    for g in glyphs:
        y = (h - g.height) // 2 + rng.randint(-h // 8, h // 8)
        layer.paste(255, (x, y), g)
        x += g.width + int(size * spacing)
    text_colour = _colour(rng, False)
    colours = [text_colour if rng.random() < 0.6 else _colour(rng, False) for _ in text]
    return layer, colours


def _warp(img: Image.Image, rng: random.Random) -> Image.Image:
    """A wave distortion through PIL's mesh transform (rows and columns shifted by sines)."""
    w, h = img.size
    amp, period, phase = rng.uniform(0.03, 0.12) * h, rng.uniform(0.5, 2.0) * w, rng.uniform(0, 6.3)
    step = max(4, w // 24)
    mesh = []
    for x0 in range(0, w, step):
        x1 = min(w, x0 + step)
        dy0, dy1 = (amp * math.sin(2 * math.pi * x / period + phase) for x in (x0, x1))
        mesh.append(((x0, 0, x1, h), (x0, dy0, x0, h + dy0, x1, h + dy1, x1, dy1)))
    return img.transform(img.size, Image.MESH, mesh, Image.BILINEAR, fillcolor=img.getpixel((0, 0)))


def _noise(img: Image.Image, rng: random.Random, colour: tuple[int, int, int]) -> None:
    w, h = img.size
    d = ImageDraw.Draw(img)
    for _ in range(rng.choice((0, 1, 2, 3, 5))):
        c = colour if rng.random() < 0.5 else _colour(rng, rng.random() < 0.3)
        width = rng.randint(1, max(1, h // 15))
        if rng.random() < 0.5:
            d.line((rng.randint(0, w // 3), rng.randint(0, h), rng.randint(2 * w // 3, w), rng.randint(0, h)),
                   fill=c, width=width)
        else:
            r = rng.randint(h // 2, 2 * w)
            cx, cy = rng.randint(0, w), rng.choice((-r + rng.randint(h // 4, h), r + rng.randint(0, 3 * h // 4)))
            start = rng.uniform(0, 360)
            d.arc((cx - r, cy - r, cx + r, cy + r), start, start + rng.uniform(30, 180), fill=c, width=width)
    for _ in range(int(w * h * rng.choice((0, 0, 0.005, 0.02, 0.05)))):
        x, y = rng.randrange(w), rng.randrange(h)
        d.point((x, y), fill=_colour(rng, rng.random() < 0.5))


def _captcha_package(rng: random.Random, text: str, h: int) -> Image.Image:
    """The ``captcha`` package's look (warped, overlapping glyphs, a noise curve) in installed fonts."""
    fonts = [str(p) for p in rng.choices(font_files(), k=3)]
    width = int(h * rng.uniform(0.5, 0.8) * len(text)) + h // 2
    with seeded_captcha_package(rng.getrandbits(32)) as captcha_image:
        drawer = captcha_image.ImageCaptcha(width=width, height=h, fonts=fonts,
                                            font_sizes=tuple(int(h * f) for f in (0.7, 0.8, 0.9)))
        return drawer.generate_image(text)


def looks_captcha(text: str, seed: int) -> Image.Image:
    """A captcha of ``text`` in a random look, reproducible from ``seed``."""
    rng = random.Random(seed)
    h = rng.randint(32, 80)
    if rng.random() < 0.15:
        return _captcha_package(rng, text, h)
    layer, colours = _text_layer(rng, text, h)
    img = _background(rng, layer.width, h)
    ink = Image.new("RGB", layer.size, colours[0])
    if len(set(colours)) > 1:  # colour the glyphs in vertical bands, roughly one per character
        band = layer.width / len(colours)
        for i, c in enumerate(colours):
            ink.paste(c, (int(i * band), 0, int((i + 1) * band), h))
    img.paste(ink, (0, 0), layer)
    _noise(img, rng, colours[0])
    if rng.random() < 0.5:
        img = _warp(img, rng)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    if rng.random() < 0.1:
        grey = img.convert("L")
        img = grey.point(lambda v, t=rng.randint(110, 170): 255 if v > t else 0).convert("RGB")
    return img

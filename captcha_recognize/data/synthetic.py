"""The project's own synthetic captchas, drawn by the ``captcha`` package and reproducible
from a seed: single images, an endless training set (``--synthetic``), and labelled folders
(``make_captchas.py``, the tests and ``train_images/``)."""
from __future__ import annotations

import functools
import random
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from captcha_recognize.data.looks import looks_captcha, looks_text, seeded_captcha_package
from captcha_recognize.data.preprocess import Preprocess, image_to_array


_renderers: dict[tuple[int, int], object] = {}


def render_captcha(text: str, seed: int, width: int = 100, height: int = 40) -> Image.Image:
    """A synthetic captcha of ``text`` drawn by the ``captcha`` package, reproducible from ``seed``."""
    key = (width, height)
    with seeded_captcha_package(seed) as captcha_image:
        if key not in _renderers:
            sizes = tuple(int(height * f) for f in (0.75, 0.85, 0.95))
            _renderers[key] = captcha_image.ImageCaptcha(width=width, height=height, font_sizes=sizes)
        return _renderers[key].generate_image(text)


def random_text(rng: random.Random, alphabet: str, length: int) -> str:
    """``length`` characters drawn from ``alphabet``."""
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


def generate(out: str | Path, count: int, seed: int, alphabet: str = "0123456789", length: int = 4,
             size: tuple[int, int] = (50, 22), show: bool = True, looks: bool = False) -> list[Path]:
    """Write ``count`` captchas named by their labels to ``out`` (``<label>_<k>.png`` when a
    label repeats); returns their paths. ``looks``: captchas of many looks and texts
    (``data.looks``) instead of ``alphabet``, ``length`` and ``size``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths, used = [], set()
    for i in tqdm(range(count), desc=f"{out}", disable=None if show else True):
        text = looks_text(rng) if looks else random_text(rng, alphabet, length)
        img = (looks_captcha if looks else functools.partial(synthetic_captcha, size=size))(text, seed * 1_000_003 + i)
        name, k = f"{text}.png", 1
        while name in used or (out / name).exists():
            k += 1
            name = f"{text}_{k}.png"
        used.add(name)
        img.save(out / name, optimize=True)
        paths.append(out / name)
    return paths

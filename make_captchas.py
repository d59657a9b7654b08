"""Generate synthetic captchas, named by their labels, with the ``captcha`` package.

Usage:
    python make_captchas.py                                    # train_images/ and new_images/
    python make_captchas.py --out my_set --count 500 --seed 3 --alphabet 0123456789abc --length 5

Each image is drawn at twice the size and scaled down to ``--size``; files are named
``<label>.png`` (``<label>_<k>.png`` when a label repeats). The same seed gives the same
images.
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from dataset import HelpFormatter, random_text, synthetic_captcha

DEFAULT_SETS = (("train_images", 4000, 1), ("new_images", 100, 2))  # folder, count, seed


def generate(out: str | Path, count: int, seed: int, alphabet: str = "0123456789", length: int = 4,
             size: tuple[int, int] = (50, 22), show: bool = True) -> list[Path]:
    """Write ``count`` captchas to ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths, used = [], set()
    for i in tqdm(range(count), desc=f"{out}", disable=None if show else True):
        text = random_text(rng, alphabet, length)
        img = synthetic_captcha(text, seed * 1_000_003 + i, size)
        name, k = f"{text}.png", 1
        while name in used or (out / name).exists():
            k += 1
            name = f"{text}_{k}.png"
        used.add(name)
        img.save(out / name, optimize=True)
        paths.append(out / name)
    return paths


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Generate file-name-labelled synthetic captchas.",
                                formatter_class=HelpFormatter)
    p.add_argument("--out", help="folder to write (default: the project's train_images/ and new_images/)")
    p.add_argument("--count", type=int, default=1000, help="images to write with --out")
    p.add_argument("--seed", type=int, default=0, help="random seed (texts and drawing)")
    p.add_argument("--alphabet", default="0123456789", help="characters to draw from")
    p.add_argument("--length", type=int, default=4, help="characters per captcha")
    p.add_argument("--size", default="50x22", help="saved image size, WxH")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    sets = [(args.out, args.count, args.seed)] if args.out else DEFAULT_SETS
    for folder, count, seed in sets:
        generate(folder, count, seed, args.alphabet, args.length, (w, h))
        print(f"wrote {count} captchas to {folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

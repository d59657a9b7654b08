"""The ``make_captchas.py`` command line (console script ``captcha-make``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from captcha_recognize.cli.common import Parser, image_size, positive_int, run
from captcha_recognize.data.images import MAX_PIXELS
from captcha_recognize.data.looks import FONTS_HINT, font_files
from captcha_recognize.data.synthetic import generate
from captcha_recognize.labelling.files import label_problem
from captcha_recognize.runtime import check_writable

DEFAULT_SETS = (("train_images", 4000, 1), ("new_images", 100, 2))  # folder, count, seed
OUT_COUNT, OUT_SEED = 1000, 0  # with --out
MAX_SIDE = 4096  # pixels a side of a generated captcha, at most
DRAWN = {"alphabet": "0123456789", "length": 4, "size": (50, 22)}  # what is drawn, unless --looks


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Generate file-name-labelled synthetic captchas.")
    p.add_argument("--out", help="folder to write (default: the project's train_images/ and new_images/)")
    p.add_argument("--count", type=positive_int, metavar="N", help=f"images to write into --out (default: {OUT_COUNT})")
    p.add_argument("--seed", type=int, help=f"random seed of --out's texts and drawing (default: {OUT_SEED})")
    p.add_argument("--alphabet", help=f"characters to draw from (default: {DRAWN['alphabet']})")
    p.add_argument("--length", type=positive_int, metavar="N",
                   help=f"characters per captcha (default: {DRAWN['length']})")
    p.add_argument("--size", type=image_size, metavar="WxH",
                   help="saved image size (default: {}x{})".format(*DRAWN["size"]))
    p.add_argument("--looks", action="store_true",
                   help="captchas of many looks for the base model (fonts installed from font packages, 3-8 "
                        "digits, Latin or Cyrillic letters or arithmetic, each look its own size), without --alphabet, "
                        "--length and --size")
    args = p.parse_args(argv)
    if args.looks and (given := [f"--{k}" for k in DRAWN if getattr(args, k) is not None]):
        p.error(f"{' and '.join(given)}: --looks draws its own (3-8 characters of many kinds, each look its size)")
    for k, v in DRAWN.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.alphabet:
        p.error("argument --alphabet: give at least one character")
    if unfit := sorted({c for c in args.alphabet if label_problem(c)}):
        p.error(f"argument --alphabet: {', '.join(map(repr, unfit))} cannot be in a file name's label")
    if args.size[0] * args.size[1] > MAX_PIXELS or max(args.size) > MAX_SIDE:
        p.error(f"argument --size: at most {MAX_SIDE} pixels a side and {MAX_PIXELS} pixels in all, "
                f"got {args.size[0]}x{args.size[1]}")
    if args.looks and not args.out:
        p.error("--looks goes with --out: train_images/ and new_images/ hold the project's own 4-digit captchas")
    if args.looks and not font_files():
        p.error(f"--looks: no installed font draws digits, Latin and Cyrillic letters ({FONTS_HINT})")
    if args.out is None and (args.count is not None or args.seed is not None):
        p.error("--count and --seed go with --out; without it " +
                " and ".join(f"{d}/ ({n}, seed {s})" for d, n, s in DEFAULT_SETS) + " are written")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: make(parse_args(argv)))


def make(args: argparse.Namespace) -> int:
    """Write the captchas: into --out, or the project's two sets."""
    sets = [(args.out, args.count or OUT_COUNT, OUT_SEED if args.seed is None else args.seed)] if args.out \
        else DEFAULT_SETS
    for folder, _, _ in sets:  # a folder that cannot be written fails now, in one line
        check_writable("out", Path(folder) / "0.png")
    for folder, count, seed in sets:
        generate(folder, count, seed, args.alphabet, args.length, args.size, looks=args.looks)
        print(f"wrote {count} captchas to {folder}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())

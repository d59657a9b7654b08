"""Train the base model that trainings start from: captchas of many looks, then a CRNN on them.

Usage:
    python -m captcha_recognize.cli.base_model                    # base_images/, then the shipped base model
    python -m captcha_recognize.cli.base_model --minutes 90       # a longer training

The images are written to ``<images>.partial`` and renamed when all are there (an interrupted drawing
starts again; a folder already there is used as it is). The training runs in ``<images>-training/``,
where an interrupted one resumes from its last save point; ``--out`` is written only when it is done.
The base model accepts no reading (``--min-confidence`` overrides): a threshold set on generated
captchas does not hold on real sites.
The fonts are the installed ones that draw Latin and Cyrillic; the shipped base model saw those of
``apt-get install fonts-dejavu fonts-dejavu-extra fonts-freefont-ttf fonts-urw-base35 fonts-liberation
fonts-liberation2 fonts-crosextra-carlito fonts-linuxlibertine`` (92 font files).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from captcha_recognize.cli.common import Parser, positive_float, positive_int, run
from captcha_recognize.data.folders import list_images
from captcha_recognize.data.looks import BASE_ALPHABET, FONTS_HINT, font_files
from captcha_recognize.data.synthetic import generate
from captcha_recognize.errors import DataError
from captcha_recognize.files import atomic_write
from captcha_recognize.reading.calibration import accept_none
from captcha_recognize.reading.spec import BASE_CHECKPOINT
from captcha_recognize.training import TrainConfig, train
from captcha_recognize.training.config import last_path

INPUT = (128, 32)  # (W, H): a CRNN input of the usual height; taller inputs take its projection row by row


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Train the base model on generated captchas of many looks.")
    p.add_argument("--images", default="base_images", help="folder of the generated captchas")
    p.add_argument("--count", type=positive_int, default=40000, metavar="N", help="captchas to generate")
    p.add_argument("--seed", type=int, default=0, help="seed of the captchas and of the training")
    p.add_argument("--minutes", type=positive_float, default=45.0, help="training time budget")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="passes over the captchas (default: what the "
                                                                     "time budget holds)")
    p.add_argument("--out", default=str(BASE_CHECKPOINT), help="the base checkpoint to write")
    return p.parse_args(argv)


def images(folder: Path, count: int, seed: int) -> Path:
    """``folder`` with ``count`` captchas of many looks, generated now unless they are there."""
    if folder.is_dir():
        return folder
    if not font_files():
        raise DataError(f"no installed font draws digits, Latin and Cyrillic letters ({FONTS_HINT})")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # an interrupted generation starts again: each image is its seed's
    generate(partial, count, seed, looks=True)
    os.replace(partial, folder)
    return folder


def base_model(args: argparse.Namespace) -> int:
    folder = images(Path(args.images), args.count, args.seed)
    print(f"{len(list_images([folder]))} captchas in {folder}/")
    work = folder.with_name(folder.name + "-training") / "base.pth"  # --out is written once, when it is done
    work.parent.mkdir(parents=True, exist_ok=True)
    resume = "" if Path(last_path(work)).exists() else None
    train(TrainConfig(data=[str(folder)], alphabet=BASE_ALPHABET, case="keep", arch="crnn", ink="off",
                      img_size=INPUT, val_split=0.02, batch_size=64, time_budget=args.minutes, epochs=args.epochs,
                      seed=args.seed, out=str(work), from_scratch=True, resume=resume))
    accept_none(work)
    atomic_write(args.out, lambda tmp: shutil.copyfile(work, tmp))
    Path(last_path(work)).unlink(missing_ok=True)
    print(f"wrote {args.out} (its training's files are in {work.parent}/); it accepts no reading: its threshold "
          "was set on generated captchas, which cannot vouch for its answers on a real site (a model trained "
          "from it sets its own)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: base_model(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())

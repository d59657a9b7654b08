"""The ``torch_model_label.py`` command line (console script ``captcha-label``)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from captcha_recognize.cli.common import Parser, port, positive_int, run
from captcha_recognize.cli.train import train_args
from captcha_recognize.data.folders import labelled_files, list_images, load_images
from captcha_recognize.errors import DataError
from captcha_recognize.labelling.page import Session, Settings, create_app
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.runtime import check_port
from captcha_recognize.text import shown
from captcha_recognize.training.crossread import cross_read, suspects
from captcha_recognize.training.task import label_rules

HOST = "127.0.0.1"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Label captchas on a local web page: the model proposes, you confirm.")
    p.add_argument("images", nargs="?", help="folder of captchas to label (their names do not matter)")
    p.add_argument("--out", metavar="DIR", help="folder the labelled copies are written to (needed with IMAGES)")
    p.add_argument("--review", metavar="DIR", help="review the names of a labelled folder instead")
    p.add_argument("--checkpoint", metavar="CKPT", help="model that proposes readings and orders the queue "
                                                        "(default: the page's latest training, if any)")
    p.add_argument("--port", type=port, default=8001, help="port on 127.0.0.1")
    p.add_argument("--alphabet", help="the characters a label may have (default: letters and digits)")
    p.add_argument("--arch", choices=["auto", "cnn", "crnn"], default="auto",
                   help="model family trained from the page before there is a model, and for --review")
    p.add_argument("--folds", type=positive_int, default=5, metavar="N", help="--review: cross-reading parts")
    p.add_argument("--reread", action="store_true",
                   help="--review: cross-read again instead of resuming the stored review")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="more training flags (as torch_model_train.py takes them) for the page's trainings and "
                        "--review")
    args = p.parse_args(argv)
    if (args.review is None) == (args.images is None):
        p.error("give a folder to label (and --out DIR), or --review DIR")
    if args.images is not None:
        if args.out is None:
            p.error("--out DIR is needed: the folder the labelled images go to")
        if not Path(args.images).is_dir():
            p.error(f"no such folder: {args.images}")
        if Path(args.images).resolve() == Path(args.out).resolve():
            p.error("--out must be another folder than the images to label")
    elif not Path(args.review).is_dir():
        p.error(f"no such folder: {args.review}")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        p.error(f"no such checkpoint: {args.checkpoint}")
    return args


def cross_read_into(session: Session, args: argparse.Namespace) -> int:
    """``--review``: queue the images a held-out model reads differently from their names."""
    cfg, _ = train_args(args.train_args)
    cfg = replace(cfg, arch=args.arch, alphabet=args.alphabet or cfg.alphabet)
    _, files = load_images(labelled_files([args.review], cfg.alphabet, label_rules(cfg, None)))
    if not files:
        raise DataError(f"none of the labelled images in {args.review} could be read")
    with tempfile.TemporaryDirectory() as tmp:
        found = suspects(cross_read(files, args.folds, cfg, Path(tmp)))
    session.store.add_review(found)
    print(f"{len(found)} of {len(files)} images are read differently from their names", file=sys.stderr)
    return len(found)


def check_inputs(args: argparse.Namespace) -> None:
    """What would otherwise fail only once the page is up, checked before any state is written:
    the port, images to label, and a checkpoint that loads."""
    check_port(HOST, args.port)
    if args.images is not None and not list_images([args.images]):
        raise DataError(f"no images to label in {shown(Path(args.images))}")
    if args.checkpoint:
        CaptchaRecognizer(args.checkpoint)


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: label(parse_args(argv)))


def label(args: argparse.Namespace) -> int:
    """Check everything the page needs, cross-read a review, then serve the page until stopped."""
    import uvicorn

    _, flags = train_args(args.train_args)  # a bad --train-args flag stops here, not in the page's first training
    mode = "review" if args.review else "label"
    settings = Settings(mode=mode, out=Path(args.review or args.out), source=Path(args.images) if args.images else None,
                        checkpoint=Path(args.checkpoint) if args.checkpoint else None, alphabet=args.alphabet,
                        arch=args.arch, train_args=flags)
    check_inputs(args)
    session = Session(settings)
    if mode == "review" and (args.reread or not session.store.size()):
        cross_read_into(session, args)
    elif mode == "review":
        print("resuming the stored review (--reread cross-reads again)", file=sys.stderr)
    print(f"labelling page: http://{HOST}:{args.port}/ (Ctrl+C stops; the state is kept)", flush=True)
    uvicorn.run(create_app(session), host=HOST, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())

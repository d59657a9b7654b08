"""The ``check_labels.py`` command line (console script ``captcha-check-labels``)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from captcha_recognize import runtime
from captcha_recognize.cli.common import Parser, positive_int, run
from captcha_recognize.cli.train import train_args
from captcha_recognize.data.folders import labelled_files, load_images
from captcha_recognize.errors import DataError
from captcha_recognize.reading.report import contact_sheet
from captcha_recognize.runtime import check_writable
from captcha_recognize.training.crossread import cross_read, suspects


def format_suspects(found: Sequence[dict[str, Any]], n: int) -> str:
    """A ``file | label | read as | confidence`` table, then how many of ``n`` disagreed."""
    lines = []
    if found:
        w = max(4, *(len(Path(r["path"]).name) for r in found))
        lines.append(f"{'file':<{w}} | {'label':<10} | {'read as':<10} | confidence")
        lines += [f"{Path(r['path']).name:<{w}} | {r['label']:<10} | {r['prediction']:<10} | {r['confidence']:>10.4f}"
                  for r in found]
    lines.append(f"{len(found)} of {n} images read differently from their names "
                 f"({100 * len(found) / max(1, n):.2f}%)")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="List the images whose file name a held-out model reads differently.")
    p.add_argument("inputs", nargs="+", help="folders and/or image files named by their labels")
    p.add_argument("--folds", type=positive_int, default=5, metavar="N",
                   help="parts; each trains a model on the others")
    p.add_argument("--arch", choices=["auto", "cnn", "crnn"], default="auto",
                   help="model family to train (auto: as torch_model_train.py picks it)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and of training")
    p.add_argument("--sheet", metavar="PNG", help="write a contact sheet of the disagreeing images")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="more training flags (as torch_model_train.py takes them), e.g. --train-args='--epochs 20'")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.interrupt_on_sigterm()
    return run(lambda: check_labels(parse_args(argv)))


def check_labels(args: argparse.Namespace) -> int:
    """Cross-read the labelled images and list the ones read differently from their names."""
    cfg = replace(train_args(args.train_args)[0], arch=args.arch, seed=args.seed)
    if args.sheet:
        check_writable("sheet", args.sheet)
    _, labelled = load_images(labelled_files(args.inputs))  # warn about unreadable files once
    if not labelled:
        raise DataError(f"none of the labelled images in {', '.join(args.inputs)} could be read")
    with tempfile.TemporaryDirectory() as tmp:
        results = cross_read(labelled, args.folds, cfg, Path(tmp))
    found = suspects(results)
    print(format_suspects(found, len(results)))
    if args.sheet:
        contact_sheet([(r["path"], r["label"], r["prediction"], r["confidence"]) for r in found], args.sheet)
        print(f"wrote {len(found)} images to {args.sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

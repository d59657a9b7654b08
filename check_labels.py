"""Find likely mislabelled images: every image is read by a model that never trained on it.

Usage:
    python check_labels.py train_images                         # 5 folds, CNN, default recipe
    python check_labels.py ../shared/data/captcha-images-v2 --arch crnn
    python check_labels.py my_set --folds 3 --sheet suspects.png --train-args="--epochs 20"

The labelled images are split into ``--folds`` parts. For each part, a model trained with the
default recipe on the other parts reads the held-out part. The images read differently from
their file names are listed, the most confident reading first: a confident reading that
disagrees with the name is often a typo in the name (look at it in ``--sheet``), a doubtful one
a hard image. It takes ``--folds`` times as long as one training.
"""
from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import runtime  # noqa: F401  before anything loads torch: it sets how OpenMP threads wait
from checkpoint import CheckpointError
from cli import Parser, positive_int, train_config
from crossread import cross_read, suspects
from dataset import DataError, labelled_files, load_images
from metrics import contact_sheet
from runtime import ConfigError, check_writable


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
    p.add_argument("--folds", type=positive_int, default=5, metavar="N", help="parts; each trains a model on the others")
    p.add_argument("--arch", choices=["auto", "cnn", "crnn"], default="auto",
                   help="model family to train (auto: as torch_model_train.py picks it)")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and of training")
    p.add_argument("--sheet", metavar="PNG", help="write a contact sheet of the disagreeing images")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="extra torch_model_train.py flags, e.g. --train-args='--epochs 20'")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.safe_console()
    args = parse_args(argv)
    cfg = replace(train_config(shlex.split(args.train_args)), arch=args.arch, seed=args.seed)
    try:
        if args.sheet:
            check_writable("sheet", args.sheet)
        _, labelled = load_images(labelled_files(args.inputs))  # warn about unreadable files once
        if not labelled:
            raise DataError(f"none of the labelled images in {', '.join(args.inputs)} could be read")
        with tempfile.TemporaryDirectory() as tmp:
            results = cross_read(labelled, args.folds, cfg, Path(tmp))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    found = suspects(results)
    print(format_suspects(found, len(results)))
    if args.sheet:
        contact_sheet([(r["path"], r["label"], r["prediction"], r["confidence"]) for r in found], args.sheet)
        print(f"wrote {len(found)} images to {args.sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

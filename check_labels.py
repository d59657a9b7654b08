"""Find likely mislabelled images: every image is read by a model that never trained on it.

Usage:
    python check_labels.py train_images                         # 5 folds, CNN, default recipe
    python check_labels.py ../shared/data/captcha-images-v2 --arch crnn
    python check_labels.py my_set --folds 3 --sheet suspects.png --train-args="--epochs 20"

The labelled images are split into ``--folds`` parts. For each part, ``torch_model_train.py``
trains with its default recipe on the other parts, and the model reads the held-out part. The
images read differently from their file names are listed, the most confident reading first: a
confident reading that disagrees with the name is often a typo in the name (look at it in
``--sheet``), a doubtful one a hard image. It takes ``--folds`` times as long as one training.
"""
from __future__ import annotations

import argparse
import random
import shlex
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from benchmark import train_on
from dataset import DataError, HelpFormatter, labelled_files, load_images, parse_label
from torch_model_predict import CaptchaRecognizer, CheckpointError, contact_sheet, predict_files


def fold_files(files: Sequence[Path], folds: int, seed: int) -> list[list[Path]]:
    """``folds`` disjoint parts of ``files`` of near-equal size that together hold every file once."""
    if not 2 <= folds <= len(files):
        raise DataError(f"--folds must be between 2 and the number of labelled images ({len(files)}), got {folds}")
    order = list(files)
    random.Random(seed).shuffle(order)
    return [sorted(order[k::folds]) for k in range(folds)]


def common_length(files: Sequence[Path]) -> int:
    """The most common label length: the CNN's ``--length``, so that a label of another length
    (often a typo) is read and listed instead of stopping the CNN's training."""
    return Counter(len(parse_label(f) or "") for f in files).most_common(1)[0][0]


def cross_read(files: Sequence[Path], folds: int, arch: str, seed: int, workdir: Path,
               extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """``predict_files`` results for every file, each from the fold model that did not train on it."""
    parts = fold_files(files, folds, seed)
    if arch == "cnn":
        extra = ["--length", str(common_length(files)), *extra]  # the user's flags come last and win
    results = []
    for k, held in enumerate(parts):
        rest = [f for j, part in enumerate(parts) if j != k for f in part]
        out = workdir / f"fold{k}.pth"
        print(f"fold {k + 1}/{folds}: training on {len(rest)} images, then reading the other {len(held)}",
              file=sys.stderr)
        train_on(rest, arch, seed, out, extra)
        for r in predict_files(CaptchaRecognizer(out), held):
            label = parse_label(r["path"])  # also labels the fold model cannot read (length, characters)
            results.append({**r, "label": label, "correct": r["prediction"] == label})
    return results


def suspects(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The readings that disagree with their file name, the most confident first."""
    return sorted((r for r in results if r["correct"] is False), key=lambda r: -r["confidence"])


def print_suspects(found: Sequence[dict[str, Any]], n: int, out=sys.stdout) -> None:
    """A ``file | label | read as | confidence`` table, then how many of ``n`` disagreed."""
    if found:
        w = max(4, *(len(Path(r["path"]).name) for r in found))
        print(f"{'file':<{w}} | {'label':<10} | {'read as':<10} | confidence", file=out)
        for r in found:
            print(f"{Path(r['path']).name:<{w}} | {r['label']:<10} | {r['prediction']:<10} | {r['confidence']:>10.4f}",
                  file=out)
    print(f"{len(found)} of {n} images read differently from their names "
          f"({100 * len(found) / max(1, n):.2f}%)", file=out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="List the images whose file name a held-out model reads differently.",
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", help="folders and/or image files named by their labels")
    p.add_argument("--folds", type=int, default=5, metavar="N", help="parts; each trains a model on the others")
    p.add_argument("--arch", choices=["cnn", "crnn"], default="cnn", help="model family to train")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the split and of training")
    p.add_argument("--sheet", metavar="PNG", help="write a contact sheet of the disagreeing images")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="extra torch_model_train.py flags, e.g. --train-args='--epochs 20'")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        _, labelled = load_images(labelled_files(args.inputs))  # warn about unreadable files once
        if not labelled:
            raise DataError(f"none of the labelled images in {', '.join(args.inputs)} could be read")
        with tempfile.TemporaryDirectory() as tmp:
            results = cross_read(labelled, args.folds, args.arch, args.seed, Path(tmp),
                                 shlex.split(args.train_args))
    except (DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    found = suspects(results)
    print_suspects(found, len(results))
    if args.sheet:
        contact_sheet([(r["path"], r["label"], r["prediction"], r["confidence"]) for r in found], args.sheet)
        print(f"wrote {len(found)} images to {args.sheet}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

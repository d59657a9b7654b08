"""Read captchas with a trained checkpoint.

Usage:
    python torch_model_predict.py new_images                 # folder(s) and/or files
    python torch_model_predict.py new_images --json report.json
    python torch_model_predict.py a.png b.png --checkpoint my.pth --device cuda
    python torch_model_predict.py new_images --errors errors.png
    python torch_model_predict.py new_images --min-confidence 0.9

Prints one line per image (file, prediction, calibrated confidence, accept: whether the
confidence clears the checkpoint's accept threshold or --min-confidence). When the file
names are labels (``3568.png``), it also prints per-position accuracy, sequence accuracy and
how many characters were wrong. Exit status: 0 ok, 1 nothing could be read, 2 bad checkpoint.
From Python: ``from recognizer import CaptchaRecognizer``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

from checkpoint import CheckpointError
from cli import HelpFormatter, positive_int, probability
from dataset import DataError, list_images
from metrics import build_report, contact_sheet, format_results
from recognizer import CaptchaRecognizer, predict_files


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Read captcha images with a trained checkpoint.",
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", default=["new_images"], help="image folders and/or files")
    p.add_argument("--checkpoint", default="captcha_recognize.pth", help=".pth checkpoint or .onnx export")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-' for stdout)")
    p.add_argument("--errors", metavar="PNG", help="write a contact sheet of the misread images")
    p.add_argument("--min-confidence", type=probability, metavar="P",
                   help="accept readings of at least this confidence (default: the checkpoint's threshold; "
                        "without one every reading is accepted)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rec = CaptchaRecognizer(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                min_confidence=args.min_confidence)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        files = list_images(args.inputs)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = predict_files(rec, files)
    if not results:
        print(f"error: no readable images in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    report = build_report(results)
    report["summary"].update(temperature=rec.temperature, threshold=rec.threshold)
    print(format_results(results), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.errors:
        wrong = [r for r in results if r["correct"] is False]
        contact_sheet([(r["path"], r["label"], r["prediction"], r["confidence"]) for r in wrong], args.errors)
        print(f"wrote {len(wrong)} misread images to {args.errors}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into a reader that stopped early, e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)

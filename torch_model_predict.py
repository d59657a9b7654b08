"""Read captchas with a trained checkpoint.

Usage:
    python torch_model_predict.py new_images                 # folder(s) and/or files
    python torch_model_predict.py new_images --json report.json
    python torch_model_predict.py a.png b.png --checkpoint my.pth --device cuda
    python torch_model_predict.py new_images --errors errors.png --csv readings.csv
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
from typing import Sequence

import runtime  # noqa: F401  before anything loads torch: it sets how OpenMP threads wait
from checkpoint import DEFAULT_CHECKPOINT, CheckpointError
from cli import Parser, positive_int, probability
from dataset import DataError, list_images, shown
from metrics import build_report, contact_sheet, format_results, write_csv
from recognizer import CaptchaRecognizer, predict_files
from runtime import ConfigError, check_writable


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Read captcha images with a trained checkpoint.")
    p.add_argument("inputs", nargs="*", default=["new_images"], help="image folders and/or files")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT, help=".pth checkpoint or .onnx export")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write path, prediction, confidence, accept, label, correct per image")
    p.add_argument("--errors", metavar="PNG", help="write a contact sheet of the misread images")
    p.add_argument("--recursive", action="store_true", help="also read the images in the folders' subfolders")
    p.add_argument("--min-confidence", type=probability, metavar="P",
                   help="accept readings of at least this confidence (default: the checkpoint's threshold; "
                        "without one every reading is accepted)")
    return p.parse_args(argv)


def check_outputs(args: argparse.Namespace) -> None:
    """Make the report files' folders, or fail before reading anything."""
    for name in ("json", "csv", "errors"):
        path = getattr(args, name)
        if path and path != "-":
            check_writable(name, path)


def write_json(report: dict, path: str) -> None:
    text = json.dumps(report, indent=1)
    if path == "-":
        print(text)
        return
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.safe_console()
    args = parse_args(argv)
    try:
        check_outputs(args)
        rec = CaptchaRecognizer(args.checkpoint, device=args.device, batch_size=args.batch_size,
                                min_confidence=args.min_confidence)
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        files = list_images(args.inputs, args.recursive)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = predict_files(rec, files)
    if not results:
        print(f"error: no readable images in {', '.join(map(shown, args.inputs))}", file=sys.stderr)
        return 1
    report = build_report(results)
    report["summary"].update(temperature=rec.temperature, threshold=rec.threshold)
    print(format_results(results), file=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        write_json(report, args.json)
    if args.csv:
        write_csv(results, args.csv)
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

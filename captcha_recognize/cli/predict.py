"""The ``torch_model_predict.py`` command line (console script ``captcha-predict``)."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from captcha_recognize.cli.common import Parser, positive_int, probability, run
from captcha_recognize.data.folders import list_images
from captcha_recognize.errors import DataError
from captcha_recognize.reading.spec import DEFAULT_CHECKPOINT
from captcha_recognize.reading.recognizer import ACCEPTS_NOTHING, CaptchaRecognizer, predict_files
from captcha_recognize.reading.report import build_report, contact_sheet, format_results, write_csv, write_json
from captcha_recognize.runtime import check_writable
from captcha_recognize.text import shown


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Read captcha images with a trained checkpoint.")
    p.add_argument("inputs", nargs="*", default=["new_images"], help="image folders and/or files")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                   help=".pth checkpoint or .onnx export; 'base': the base model, untrained on any site")
    p.add_argument("--alphabet", help="read only these characters (default: all the model reads; with the base "
                                      "model, give the site's)")
    p.add_argument("--length", type=positive_int, metavar="N",
                   help="read exactly N characters (a CRNN; default: as trained, any length for the base model)")
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N", help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-' for stdout)")
    p.add_argument("--csv", metavar="FILE", help="write path, prediction, confidence, accept, label, correct per image")
    p.add_argument("--errors", metavar="PNG", help="write a contact sheet of the misread images")
    p.add_argument("--recursive", action="store_true", help="also read the images in the folders' subfolders")
    p.add_argument("--answer", action="store_true",
                   help="also give the value of each reading that is arithmetic (12+3=?, 8-5=, 10x6=), or say "
                        "why there is none")
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


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: predict(parse_args(argv)))


def predict(args: argparse.Namespace) -> int:
    """Read the images, print one line each and the summary, and write the reports asked for."""
    check_outputs(args)
    rec = CaptchaRecognizer(args.checkpoint, device=args.device, batch_size=args.batch_size,
                            min_confidence=args.min_confidence, alphabet=args.alphabet,
                            length=args.length)
    results = predict_files(rec, list_images(args.inputs, args.recursive), args.answer)
    if not results:
        raise DataError(f"no readable images in {', '.join(map(shown, args.inputs))}")
    report = build_report(results)
    report["summary"].update(temperature=rec.temperature, threshold=rec.threshold)
    print(format_results(results), file=sys.stderr if args.json == "-" else sys.stdout)
    if rec.accepts_nothing:
        print(f"note: {shown(args.checkpoint)} {ACCEPTS_NOTHING}; --min-confidence P accepts readings of at least P",
              file=sys.stderr)
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
    sys.exit(main())

"""The ``torch_model_export.py`` command line (console script ``captcha-export``)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from captcha_recognize.checks import Rule
from captcha_recognize.cli.common import Parser, flag_type, run
from captcha_recognize.errors import MissingPackage
from captcha_recognize.reading.checkpoint import DEFAULT_CHECKPOINT, load_checkpoint
from captcha_recognize.reading.export import (INT8_MIN_AGREEMENT, calibration_arrays, calibration_inputs, export_int8,
                                              export_onnx, verified, verify)
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.runtime import check_writable


OPSETS = Rule(lambda v: 9 <= v <= 20, "an opset from 9 (the GRU's) to 20 (the newest this exporter writes)")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Export a captcha checkpoint to ONNX and verify it.")
    p.add_argument("checkpoint", nargs="?", default=DEFAULT_CHECKPOINT, help=".pth checkpoint")
    p.add_argument("--out", help="ONNX file (default: the checkpoint's name with .onnx, or .int8.onnx)")
    p.add_argument("--verify", nargs="*", default=["new_images"], metavar="INPUT",
                   help="folders/files to compare PyTorch and ONNX predictions on (none: skip)")
    p.add_argument("--int8", action="store_true",
                   help="write a statically quantized int8 model (smaller, faster on CPU); it must read "
                        f"at least {100 * INT8_MIN_AGREEMENT:g}%% of the --verify images PyTorch accepts like PyTorch")
    p.add_argument("--calibrate", nargs="+", metavar="INPUT",
                   help="images to calibrate int8 activation ranges on (default: the checkpoint's "
                        "training data if it is still there, else the --verify images)")
    p.add_argument("--opset", type=flag_type(int, OPSETS), default=17, metavar="N", help="ONNX opset version")
    return p.parse_args(argv)


def output_path(args: argparse.Namespace) -> Path:
    """Where the export goes: ``--out``, or the checkpoint's name with .onnx / .int8.onnx."""
    return Path(args.out or Path(args.checkpoint).with_suffix(".int8.onnx" if args.int8 else ".onnx"))


def export(args: argparse.Namespace, out: Path) -> Path:
    """Export (and for ``--int8`` quantize) per ``args`` to ``out``; returns it."""
    if not args.int8:
        return export_onnx(args.checkpoint, out, args.opset)
    inputs = calibration_inputs(args.checkpoint, args.calibrate, args.verify)
    spec = ModelSpec.from_checkpoint(load_checkpoint(args.checkpoint))
    return export_int8(args.checkpoint, out, calibration_arrays(inputs, spec.preprocess), args.opset)


def export_verified(args: argparse.Namespace, out: Path) -> bool:
    """Export to a temporary file beside ``out``, compare its readings with PyTorch's, and put it
    in place only if they pass: a rejected model never takes the place of a good one."""
    tmp = out.with_name(f".unverified{os.getpid()}.{out.name}")  # keeps the suffix that says ONNX
    try:
        r = verify(args.checkpoint, export(args, tmp), args.verify)
        print(f"verify: {r['identical']}/{r['n']} identical texts ({r['accepted_identical']}/{r['accepted']} "
              f"of those PyTorch accepts), max confidence difference {r['max_confidence_diff']:.2e}")
        if not verified(r, args.int8):
            print(f"error: the {'int8 ' if args.int8 else ''}ONNX model reads differently from PyTorch; "
                  f"{out} not written", file=sys.stderr)
            return False
        os.replace(tmp, out)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    return run(lambda: export_command(parse_args(argv)))


def export_command(args: argparse.Namespace) -> int:
    """Export (and verify) per the flags; 1 when the export reads differently from PyTorch."""
    if args.out:
        check_writable("out", args.out)
    out = output_path(args)
    try:
        if not args.verify:
            export(args, out)
        elif not export_verified(args, out):
            return 1
    except ImportError as e:
        raise MissingPackage(f"{e.name} is needed: pip install onnx onnxruntime") from None
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

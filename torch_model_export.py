"""Export a checkpoint to ONNX and verify that it reads exactly what PyTorch reads.

Usage:
    python torch_model_export.py                                  # captcha_recognize.pth -> .onnx
    python torch_model_export.py my.pth --out my.onnx --verify ../my_captchas
    python torch_model_export.py --int8                           # -> captcha_recognize.int8.onnx

The ONNX model takes normalized images ``images: (batch, C, H, W)`` and returns ``logits``; the
alphabet, label length, architecture and preprocessing travel in its metadata, so
``CaptchaRecognizer("model.onnx")`` needs nothing else. ``--int8`` quantizes statically (int8
weights and activations, calibrated on real images), faster on a CPU; since it is no longer
exact, it must read at least 99% of the verify images like PyTorch. Needs ``onnx`` to export and
``onnxruntime`` to verify or quantize.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import runtime  # noqa: F401  before anything loads torch: it sets how OpenMP threads wait
from checkpoint import CheckpointError, ModelSpec, load_checkpoint
from cli import HelpFormatter, positive_int
from dataset import DataError
from export import INT8_MIN_AGREEMENT, calibration_arrays, calibration_inputs, export_int8, export_onnx, verify
from runtime import ConfigError, check_writable


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a captcha checkpoint to ONNX and verify it.",
                                formatter_class=HelpFormatter)
    p.add_argument("checkpoint", nargs="?", default="captcha_recognize.pth", help=".pth checkpoint")
    p.add_argument("--out", help="ONNX file (default: the checkpoint's name with .onnx, or .int8.onnx)")
    p.add_argument("--verify", nargs="*", default=["new_images"], metavar="INPUT",
                   help="folders/files to compare PyTorch and ONNX predictions on (none: skip)")
    p.add_argument("--int8", action="store_true",
                   help="write a statically quantized int8 model (smaller, faster on CPU); it must "
                        f"read at least {100 * INT8_MIN_AGREEMENT:g}%% of the --verify images like PyTorch")
    p.add_argument("--calibrate", nargs="+", metavar="INPUT",
                   help="images to calibrate int8 activation ranges on (default: the checkpoint's "
                        "training data if it is still there, else the --verify images)")
    p.add_argument("--opset", type=positive_int, default=17, metavar="N", help="ONNX opset version")
    return p.parse_args(argv)


def export(args: argparse.Namespace) -> Path:
    """Export (and for ``--int8`` quantize) per ``args``; returns the written file."""
    out = Path(args.out or Path(args.checkpoint).with_suffix(".int8.onnx" if args.int8 else ".onnx"))
    if not args.int8:
        return export_onnx(args.checkpoint, out, args.opset)
    inputs = calibration_inputs(args.checkpoint, args.calibrate, args.verify)
    spec = ModelSpec.from_checkpoint(load_checkpoint(args.checkpoint))
    return export_int8(args.checkpoint, out, calibration_arrays(inputs, spec.preprocess), args.opset)


def main(argv: Sequence[str] | None = None) -> int:
    runtime.safe_console()
    args = parse_args(argv)
    try:
        if args.out:
            check_writable("out", args.out)
        out = export(args)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        if args.verify:
            r = verify(args.checkpoint, out, args.verify)
            print(f"verify: {r['identical']}/{r['n']} identical texts, "
                  f"max confidence difference {r['max_confidence_diff']:.2e}")
            need = INT8_MIN_AGREEMENT if args.int8 else 1.0
            if r["identical"] < need * r["n"]:
                print(f"error: the {'int8 ' if args.int8 else ''}ONNX model reads differently from PyTorch",
                      file=sys.stderr)
                return 1
    except (CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"error: {e.name} is needed: pip install onnx onnxruntime", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

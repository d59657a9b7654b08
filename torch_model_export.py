"""Export a checkpoint to ONNX and verify that it reads exactly what PyTorch reads.

Usage:
    python torch_model_export.py                                  # captcha_recognize.pth -> .onnx
    python torch_model_export.py my.pth --out my.onnx --verify ../my_captchas
    python torch_model_export.py --int8                           # -> captcha_recognize.int8.onnx

The ONNX model takes normalized images ``images: (batch, C, H, W)`` (dynamic batch) and
returns ``logits``; the alphabet, label length, architecture and preprocessing are stored
as JSON in the metadata entry ``captcha``, so ``CaptchaRecognizer("model.onnx")`` needs
nothing else. ``--int8`` quantizes the export statically (int8 weights and activations,
calibrated on real images), faster on a CPU; since it is no longer exact, it
must read at least 99% of the verify images like PyTorch. Needs the ``onnx`` package to
export and ``onnxruntime`` to verify or quantize.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from dataset import DataError, HelpFormatter, Preprocess, list_images, load_images, normalize, to_arrays
from torch_model_predict import CaptchaRecognizer, CheckpointError, load_checkpoint, model_from_checkpoint

INT8_MIN_AGREEMENT = 0.99  # share of --verify images an int8 model must read like PyTorch


def export_onnx(ckpt_path: str | os.PathLike, out: str | os.PathLike, opset: int = 17) -> Path:
    """Write the checkpoint's model to ``out`` as ONNX (atomically), with its metadata."""
    import onnx

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt).to(memory_format=torch.contiguous_format)
    pre = ckpt["preprocess"]
    dummy = torch.zeros(2, pre["channels"], pre["height"], pre["width"])  # (B, C, H, W)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        meta = {"arch": ckpt["model_args"]["arch"], "alphabet": ckpt["alphabet"],
                "label_length": ckpt["label_length"], "preprocess": pre}
        entry = proto.metadata_props.add()
        entry.key, entry.value = "captcha", json.dumps(meta)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def quantize_int8(onnx_path: str | os.PathLike, out: str | os.PathLike, arrays: torch.Tensor,
                  batch_size: int = 32) -> Path:
    """Write a static int8 version of an exported model (atomically), calibrated on uint8
    images ``(N, C, H, W)``: per-channel int8 weights, uint8 activations at 7-bit range
    (no overflow in the int8 kernels of CPUs without VNNI), QDQ format. Layers ONNX
    Runtime cannot quantize (the GRU) stay fp32. Needs ``onnxruntime``."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(arrays), batch_size))

        def get_next(self) -> dict[str, Any] | None:
            i = next(self.batches, None)
            return None if i is None else {"images": normalize(arrays[i:i + batch_size]).contiguous().numpy()}

    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    pre = out.with_name(f".{out.name}.pre{os.getpid()}")
    try:
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        proto = onnx.load(str(tmp))
        for entry in onnx.load(str(onnx_path)).metadata_props:
            proto.metadata_props.add().CopyFrom(entry)
        onnx.save(proto, str(tmp))
        os.replace(tmp, out)
    finally:
        for f in (tmp, pre):
            if f.exists():
                f.unlink()
    return out


def verify(ckpt_path: str | os.PathLike, onnx_path: str | os.PathLike,
           inputs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Read the same images with PyTorch and ONNX Runtime; count identical texts."""
    torch_rec, onnx_rec = CaptchaRecognizer(ckpt_path), CaptchaRecognizer(onnx_path)
    images, _ = load_images(list_images(inputs))
    if not images:
        raise DataError(f"no readable images in {', '.join(map(str, inputs))}")
    arrays = to_arrays(images, torch_rec.spec)  # (N, C, H, W) uint8, the shared preprocessing
    a, b = torch_rec.predict_arrays(arrays), onnx_rec.predict_arrays(arrays)
    same = sum(ta == tb for (ta, _), (tb, _) in zip(a, b))
    diff = max(abs(ca - cb) for (_, ca), (_, cb) in zip(a, b))
    return {"n": len(a), "identical": same, "max_confidence_diff": diff}


def calibration_arrays(inputs: Sequence[str | os.PathLike], spec: Preprocess, limit: int = 256) -> torch.Tensor:
    """Up to ``limit`` images (evenly spread over the inputs) as uint8 ``(N, C, H, W)``."""
    files = list_images(inputs)
    files = files[::max(1, len(files) // limit)][:limit]
    images, _ = load_images(files)
    if not images:
        raise DataError(f"no readable images to calibrate on in {', '.join(map(str, inputs))}")
    return to_arrays(images, spec)


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
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    return p.parse_args(argv)


def export(args: argparse.Namespace) -> Path:
    """Export (and for ``--int8`` quantize) per ``args``; returns the written file."""
    suffix = ".int8.onnx" if args.int8 else ".onnx"
    out = Path(args.out or Path(args.checkpoint).with_suffix(suffix))
    if not args.int8:
        return export_onnx(args.checkpoint, out, args.opset)
    ckpt = load_checkpoint(args.checkpoint)
    trained_on = [d for d in ckpt.get("config", {}).get("data") or [] if Path(d).exists()]
    inputs = args.calibrate or trained_on or args.verify
    if not inputs:
        raise DataError("--int8 needs images to calibrate on: give --calibrate INPUT")
    return export_int8(args.checkpoint, out, calibration_arrays(inputs, Preprocess(**ckpt["preprocess"])),
                       args.opset)


def export_int8(ckpt_path: str | os.PathLike, out: str | os.PathLike, arrays: torch.Tensor,
                opset: int = 17) -> Path:
    """Export to ONNX and quantize to int8 (calibrated on ``arrays``) in one step."""
    out = Path(out)
    fp32 = out.with_name(f".{out.name}.fp32{os.getpid()}")
    try:
        export_onnx(ckpt_path, fp32, opset)
        return quantize_int8(fp32, out, arrays)
    finally:
        fp32.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
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
    except CheckpointError as e:
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

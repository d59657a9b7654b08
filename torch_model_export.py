"""Export a checkpoint to ONNX and verify that it reads exactly what PyTorch reads.

Usage:
    python torch_model_export.py                                  # captcha_recognize.pth -> .onnx
    python torch_model_export.py my.pth --out my.onnx --verify ../my_captchas

The ONNX model takes normalized images ``images: (batch, C, H, W)`` (dynamic batch) and
returns ``logits``; the alphabet, label length, architecture and preprocessing are stored
as JSON in the metadata entry ``captcha``, so ``CaptchaRecognizer("model.onnx")`` needs
nothing else. Needs the ``onnx`` package to export and ``onnxruntime`` to verify.
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

from dataset import DataError, list_images, load_images, to_arrays
from torch_model_predict import CaptchaRecognizer, CheckpointError, load_checkpoint, model_from_checkpoint


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


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Export a captcha checkpoint to ONNX and verify it.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("checkpoint", nargs="?", default="captcha_recognize.pth", help=".pth checkpoint")
    p.add_argument("--out", help="ONNX file (default: the checkpoint's name with .onnx)")
    p.add_argument("--verify", nargs="*", default=["new_images"], metavar="INPUT",
                   help="folders/files to compare PyTorch and ONNX predictions on (none: skip)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or str(Path(args.checkpoint).with_suffix(".onnx"))
    try:
        export_onnx(args.checkpoint, out, args.opset)
        print(f"wrote {out} ({Path(out).stat().st_size / 1e6:.1f} MB)")
        if args.verify:
            r = verify(args.checkpoint, out, args.verify)
            print(f"verify: {r['identical']}/{r['n']} identical texts, "
                  f"max confidence difference {r['max_confidence_diff']:.2e}")
            if r["identical"] != r["n"]:
                print("error: the ONNX model reads differently from PyTorch", file=sys.stderr)
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

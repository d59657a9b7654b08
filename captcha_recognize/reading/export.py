"""ONNX export of a checkpoint (exact fp32, or static int8) and its verification against PyTorch.

The ONNX model takes normalized images ``images: (batch, C, H, W)`` (dynamic batch) and returns
``logits``; the checkpoint's ``ModelSpec`` is stored as JSON in the metadata entry ``captcha``.
Needs the ``onnx`` package to export and ``onnxruntime`` to verify or quantize.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from captcha_recognize.data.arrays import normalize, to_arrays
from captcha_recognize.data.folders import list_images, load_images
from captcha_recognize.data.preprocess import Preprocess
from captcha_recognize.errors import DataError
from captcha_recognize.files import atomic_write
from captcha_recognize.reading.checkpoint import build_from_checkpoint, load_checkpoint
from captcha_recognize.reading.onnx_file import ONNX_META_KEY, ONNX_SHA_KEY, graph_and_metadata, model_sha256
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.reading.spec import ModelSpec

INT8_MIN_AGREEMENT = 0.99  # share of the verify images PyTorch accepts that an int8 model must read alike


def export_onnx(ckpt_path: str | os.PathLike, out: str | os.PathLike, opset: int = 17) -> Path:
    """Write the checkpoint's model to ``out`` as ONNX (atomically), with its metadata."""
    import onnx

    ckpt = load_checkpoint(ckpt_path)
    spec = ModelSpec.from_checkpoint(ckpt)
    model = build_from_checkpoint(ckpt).to(memory_format=torch.contiguous_format)
    pre = spec.preprocess
    dummy = torch.zeros(2, pre.in_channels, pre.height, pre.width)  # (B, C, H, W)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings():  # the TorchScript exporter needs no onnxscript; its deprecation is noise
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(tmp), input_names=["images"], output_names=["logits"],
                              dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                              opset_version=opset, dynamo=False)
        proto = onnx.load(str(tmp))
        set_metadata(proto, json.dumps(spec.to_meta()))
        onnx.save(proto, str(tmp))
    return atomic_write(out, write)


def set_metadata(proto: Any, spec_json: str) -> None:
    """Replace the model's metadata with its spec's JSON and the SHA-256 over its graph and that JSON."""
    graph, _ = graph_and_metadata(proto.SerializeToString())
    entries = {ONNX_META_KEY: spec_json, ONNX_SHA_KEY: model_sha256(graph, spec_json)}
    del proto.metadata_props[:]
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


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
    pre = out.with_name(f".{out.name}.pre{os.getpid()}")

    def write(tmp: Path) -> None:
        quant_pre_process(str(onnx_path), str(pre))
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)
        proto = onnx.load(str(tmp))
        set_metadata(proto, {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}[ONNX_META_KEY])
        onnx.save(proto, str(tmp))
    try:
        return atomic_write(out, write)
    finally:
        pre.unlink(missing_ok=True)


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


def calibration_arrays(inputs: Sequence[str | os.PathLike], preprocess: Preprocess, limit: int = 256) -> torch.Tensor:
    """Up to ``limit`` images (evenly spread over the inputs) as uint8 ``(N, C, H, W)``."""
    files = list_images(inputs)
    files = files[::max(1, len(files) // limit)][:limit]
    images, _ = load_images(files)
    if not images:
        raise DataError(f"no readable images to calibrate on in {', '.join(map(str, inputs))}")
    return to_arrays(images, preprocess)


def calibration_inputs(ckpt_path: str | os.PathLike, calibrate: Sequence[str] | None,
                       verify: Sequence[str]) -> list[str]:
    """Images to calibrate int8 ranges on: ``calibrate``, else the checkpoint's training data
    if it is still there, else the verify images."""
    trained_on = [d for d in load_checkpoint(ckpt_path).get("config", {}).get("data") or [] if Path(d).exists()]
    inputs = list(calibrate or trained_on or verify)
    if not inputs:
        raise DataError("--int8 needs images to calibrate on: give --calibrate INPUT")
    return inputs


def verify(ckpt_path: str | os.PathLike, onnx_path: str | os.PathLike,
           inputs: Sequence[str | os.PathLike]) -> dict[str, Any]:
    """Read the same images with PyTorch and ONNX Runtime; count identical texts, in all and
    among the images whose PyTorch reading clears the accept threshold."""
    torch_rec, onnx_rec = CaptchaRecognizer(ckpt_path), CaptchaRecognizer(onnx_path)
    images, _ = load_images(list_images(inputs))
    if not images:
        raise DataError(f"no readable images in {', '.join(map(str, inputs))}")
    arrays = to_arrays(images, torch_rec.preprocess)  # (N, C, H, W) uint8, the shared preprocessing
    a, b = torch_rec.predict_arrays(arrays), onnx_rec.predict_arrays(arrays)
    same = [ta == tb for (ta, _), (tb, _) in zip(a, b)]
    accepted = [torch_rec.accepts(ca) for _, ca in a]
    diff = max(abs(ca - cb) for (_, ca), (_, cb) in zip(a, b))
    return {"n": len(a), "identical": sum(same), "max_confidence_diff": diff, "accepted": sum(accepted),
            "accepted_identical": sum(s and k for s, k in zip(same, accepted))}


def verified(r: dict[str, Any], int8: bool) -> bool:
    """Whether a ``verify`` result passes: an fp32 export reads every image like PyTorch; an int8
    one (no longer exact) at least ``INT8_MIN_AGREEMENT`` of the images PyTorch accepts, or of
    all images when it accepts none. Images PyTorch itself is unsure of may flip either way."""
    if not int8:
        return r["identical"] == r["n"]
    n, same = (r["accepted"], r["accepted_identical"]) if r["accepted"] else (r["n"], r["identical"])
    return same >= INT8_MIN_AGREEMENT * n

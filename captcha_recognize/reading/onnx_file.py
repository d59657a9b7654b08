"""ONNX exports as the reader loads them: an onnxruntime session and the ``ModelSpec`` stored as
JSON in the model's metadata entry ``captcha``, with the weights checked against their SHA-256."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from captcha_recognize.errors import CheckpointError
from captcha_recognize.reading.spec import ModelSpec

ONNX_META_KEY = "captcha"
ONNX_SHA_KEY = "captcha_weights_sha256"


def onnx_weights_sha256(proto: Any) -> str:
    """SHA-256 over an ONNX model's initializers (names and bytes), in name order."""
    from onnx import numpy_helper

    h = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        h.update(init.name.encode() + b"|")
        h.update(numpy_helper.to_array(init).tobytes())
    return h.hexdigest()


def load_onnx(path: str | os.PathLike, threads: int = 1) -> tuple[Any, ModelSpec]:
    """An onnxruntime session for an export of this toolkit, and its ``ModelSpec``; the weights
    are checked against the SHA-256 in the metadata."""
    try:
        import onnx
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("reading .onnx files needs onnx and onnxruntime: pip install onnx onnxruntime") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ONNX model at {path}")
    try:
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        spec = ModelSpec.from_meta(json.loads(meta[ONNX_META_KEY]))
    except Exception as e:
        raise CheckpointError(f"{path} is not an ONNX export of this toolkit ({type(e).__name__})") from None
    if ONNX_SHA_KEY in meta and onnx_weights_sha256(proto) != meta[ONNX_SHA_KEY]:
        raise CheckpointError(f"{path} is corrupted: its weights do not match the SHA-256 stored with them")
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise CheckpointError(f"{path} could not be loaded by onnxruntime ({type(e).__name__})") from None
    return session, spec

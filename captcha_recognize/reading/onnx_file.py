"""ONNX exports as the reader loads them, with onnxruntime alone (no PyTorch, no ``onnx`` package):
the ``ModelSpec`` stored as JSON in the model's metadata entry ``captcha``, checked against the
SHA-256 stored beside it, which covers the graph (weights included) and that JSON, so a changed
byte in either is an error rather than a silent misreading."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from captcha_recognize.errors import CheckpointError, MissingPackage
from captcha_recognize.reading.spec import ModelSpec

ONNX_META_KEY = "captcha"
ONNX_SHA_KEY = "captcha_sha256"  # over the graph's bytes and the spec's JSON
GRAPH_FIELD, METADATA_FIELD = 7, 14  # ModelProto's field numbers (onnx.proto)


def varint(data: bytes, i: int) -> tuple[int, int]:
    """A protobuf varint at ``data[i:]``: its value and where the next field starts."""
    value = shift = 0
    while True:
        if i >= len(data):
            raise ValueError("truncated varint")
        byte = data[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if byte < 0x80:
            return value, i


def fields(data: bytes) -> Iterator[tuple[int, bytes | int]]:
    """The top-level fields of a protobuf message: ``(field number, bytes or integer)``."""
    i = 0
    while i < len(data):
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            size, i = varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, i = data[i:i + size], i + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, value


def graph_and_metadata(model: bytes) -> tuple[bytes, dict[str, str]]:
    """An ONNX model's serialized graph and its metadata entries."""
    graph, meta = b"", {}
    for number, value in fields(model):
        if number == GRAPH_FIELD:
            graph = value
        elif number == METADATA_FIELD:
            entry = dict(fields(value))
            meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return graph, meta


def model_sha256(graph: bytes, spec_json: str) -> str:
    """The SHA-256 an export carries: over its graph and the JSON of its spec."""
    return hashlib.sha256(b"graph" + graph + b"spec" + spec_json.encode()).hexdigest()


def read_export(path: str | os.PathLike) -> tuple[bytes, ModelSpec]:
    """An export's bytes and its ``ModelSpec``, checked against the SHA-256 in its metadata."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ONNX model at {path}")
    data = path.read_bytes()
    try:
        graph, meta = graph_and_metadata(data)
        spec = ModelSpec.from_meta(json.loads(meta[ONNX_META_KEY]))
    except Exception as e:
        raise CheckpointError(f"{path} is not an ONNX export of this toolkit ({type(e).__name__})") from None
    if meta.get(ONNX_SHA_KEY) != model_sha256(graph, meta[ONNX_META_KEY]):
        why = "has no SHA-256 of this toolkit's exports (export it again)" if ONNX_SHA_KEY not in meta else \
            "is corrupted: its graph or spec does not match the SHA-256 stored with them"
        raise CheckpointError(f"{path} {why}")
    return data, spec


class OnnxModel:
    """An ``.onnx`` export ready to read on onnxruntime: its ``ModelSpec`` and its logits. One
    intra-op thread per session: ``CaptchaRecognizer`` runs chunks in parallel instead."""
    device = "cpu"

    def __init__(self, path: str | os.PathLike, threads: int = 1):
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingPackage("reading .onnx files needs onnxruntime: pip install onnxruntime") from None
        data, self.spec = read_export(path)
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise CheckpointError(f"{path} could not be loaded by onnxruntime ({type(e).__name__})") from None

    def logits(self, x: Any) -> np.ndarray:
        """Logits ``(B, T|P, K)`` of a normalized batch ``(B, C, H, W)``."""
        return self.session.run(None, {"images": np.ascontiguousarray(np.asarray(x), dtype=np.float32)})[0]

    @staticmethod
    def threads() -> int:
        return os.cpu_count() or 1

    @staticmethod
    def one_core_per_thread(cpu: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    @staticmethod
    def worker_setup(cpu: bool) -> Callable[[], None] | None:
        return None

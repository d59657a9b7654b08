"""The checkpoint format, in one place.

A checkpoint is one dict saved with ``torch.save``: the unwrapped model's ``state_dict`` under
``model``, the ``ModelConfig`` fields under ``model_args``, and what reading needs besides the
weights (alphabet, label length, preprocessing, calibration), which ``ModelSpec`` carries. An
ONNX export stores the same ``ModelSpec`` as JSON in its metadata entry ``captcha``, so a
``.pth`` and an ``.onnx`` file rebuild the same converter, preprocessing and confidence.
"""
from __future__ import annotations

import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from dataset import LabelConverter, Preprocess
from model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model

CHECKPOINT_FORMAT = "captcha-recognize/1"
REQUIRED_KEYS = ("format", "model", "model_args", "alphabet", "label_length", "preprocess")
ONNX_META_KEY = "captcha"


class CheckpointError(RuntimeError):
    """Missing, unreadable, unsafe or incompatible checkpoint: shown as one line, exit 2."""


@dataclass
class ModelSpec:
    """Everything a trained model needs besides its weights to read an image, and to say how
    far to trust the reading: the calibration temperature (``calibration.py``; 1 = raw
    softmax) and the accept threshold (None: not calibrated, every answer is accepted)."""
    arch: str
    alphabet: str
    label_length: int | None
    preprocess: Preprocess
    temperature: float = 1.0
    threshold: float | None = None

    @property
    def converter(self) -> LabelConverter:
        return LabelConverter(self.alphabet, self.label_length, ctc=self.arch == "crnn")

    def to_meta(self) -> dict[str, Any]:
        """The JSON-able form (the ONNX metadata entry)."""
        return {"arch": self.arch, "alphabet": self.alphabet, "label_length": self.label_length,
                "preprocess": asdict(self.preprocess), "temperature": self.temperature,
                "threshold": self.threshold}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelSpec:
        """The spec from ``to_meta``'s form; files written before calibration existed get temperature 1
        and no threshold."""
        return cls(meta["arch"], meta["alphabet"], meta["label_length"], Preprocess(**meta["preprocess"]),
                   float(meta.get("temperature", 1.0)), meta.get("threshold"))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ModelSpec:
        return cls.from_meta({**ckpt, "arch": ckpt["model_args"]["arch"]})


def checkpoint_dict(state_dict: dict[str, torch.Tensor], model_args: dict[str, Any], spec: ModelSpec,
                    **extra: Any) -> dict[str, Any]:
    """The one checkpoint dict: weights, model config, the spec's fields, and ``extra``
    (training's config, epoch, scores, history; optimizer state in the resumable one)."""
    meta = spec.to_meta()
    del meta["arch"]  # model_args holds it
    return {"format": CHECKPOINT_FORMAT, "model": state_dict, "model_args": dict(model_args), **meta, **extra}


def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (pickled code is refused) and checked."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path} (train one with: python torch_model_train.py)")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; text, images, ... are not
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (not a torch.save file)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise CheckpointError(f"refused {path}: it holds pickled objects that a weights-only load "
                              f"does not allow ({first})") from None
    except Exception as e:  # corrupt zip, truncated file, not a torch file ...
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a captcha checkpoint of this toolkit "
                              f"(expected format {CHECKPOINT_FORMAT!r})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}")
    ckpt["model_args"].setdefault("cnn_channels", CLASSIC_CNN_CHANNELS)  # saved before the fields existed
    ckpt["model_args"].setdefault("crnn_channels", CLASSIC_CRNN_CHANNELS)
    return ckpt


def build_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model rebuilt from ``model_args`` with the checkpoint's weights, in eval mode."""
    try:
        model = build_model(ModelConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {str(e).splitlines()[0]}") from None
    return model.to(device, memory_format=torch.channels_last).eval()


def load_onnx(path: str | os.PathLike, threads: int = 1) -> tuple[Any, ModelSpec]:
    """An onnxruntime session for an export of this toolkit, and its ``ModelSpec``."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CheckpointError("reading .onnx files needs onnxruntime: pip install onnxruntime") from None
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no ONNX model at {path}")
    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        spec = ModelSpec.from_meta(json.loads(session.get_modelmeta().custom_metadata_map[ONNX_META_KEY]))
    except Exception as e:
        raise CheckpointError(f"{path} is not an ONNX export of this toolkit ({type(e).__name__})") from None
    return session, spec

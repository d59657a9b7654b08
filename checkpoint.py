"""The checkpoint format, in one place.

A checkpoint is one dict saved with ``torch.save``: the unwrapped model's ``state_dict`` under
``model``, the ``ModelConfig`` fields under ``model_args``, and what reading needs besides the
weights (alphabet, label length, preprocessing, calibration), which ``ModelSpec`` carries. An
ONNX export stores the same ``ModelSpec`` as JSON in its metadata entry ``captcha``, so a
``.pth`` and an ``.onnx`` file rebuild the same converter, preprocessing and confidence.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from dataset import LabelConverter, LabelRules, Preprocess
from model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model

CHECKPOINT_FORMAT = "captcha-recognize/1"
DEFAULT_CHECKPOINT = "captcha_recognize.pth"  # the shipped model; what train_images/ trains and the scripts read
REQUIRED_KEYS = ("format", "model", "model_args", "alphabet", "label_length", "preprocess")
ONNX_META_KEY = "captcha"
ONNX_SHA_KEY = "captcha_weights_sha256"


class CheckpointError(RuntimeError):
    """Missing, unreadable, unsafe or incompatible checkpoint: shown as one line, exit 2."""


class OutputBusy(RuntimeError):
    """Another run is writing the same checkpoint: shown as one line, exit 1."""


@dataclass
class ModelSpec:
    """Everything a trained model needs besides its weights to read an image, and to say how
    far to trust the reading: the calibration temperature (``calibration.py``; 1 = raw
    softmax) and the accept threshold (None: not calibrated, every answer is accepted)."""
    arch: str
    alphabet: str
    label_length: int | None
    preprocess: Preprocess
    rules: LabelRules = LabelRules()  # how file names become labels (case, label map)
    temperature: float = 1.0
    threshold: float | None = None
    fixed_length: bool = False  # CRNN: every reading has label_length characters

    @property
    def converter(self) -> LabelConverter:
        return LabelConverter(self.alphabet, self.label_length, ctc=self.arch == "crnn", fixed=self.fixed_length)

    def to_meta(self) -> dict[str, Any]:
        """The JSON-able form (the ONNX metadata entry)."""
        return {"arch": self.arch, "alphabet": self.alphabet, "label_length": self.label_length,
                "preprocess": asdict(self.preprocess), **self.rules.as_dict(), "temperature": self.temperature,
                "threshold": self.threshold, "fixed_length": self.fixed_length}

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ModelSpec:
        """From ``to_meta``'s form; fields added later take their defaults when absent (files written
        before calibration existed get temperature 1 and no threshold, a CRNN reads any length)."""
        return cls(meta["arch"], meta["alphabet"], meta["label_length"], Preprocess(**meta["preprocess"]),
                   LabelRules.from_dict(meta), float(meta.get("temperature", 1.0)), meta.get("threshold"),
                   bool(meta.get("fixed_length", False)))

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> ModelSpec:
        return cls.from_meta({**ckpt, "arch": ckpt["model_args"]["arch"]})


def checkpoint_dict(state_dict: dict[str, torch.Tensor], model_args: dict[str, Any], spec: ModelSpec,
                    **extra: Any) -> dict[str, Any]:
    """The one checkpoint dict: weights, model config, the spec's fields, and ``extra``
    (training's config, epoch, scores, history; optimizer state in the resumable one)."""
    meta = spec.to_meta()
    del meta["arch"]  # model_args holds it
    return {"format": CHECKPOINT_FORMAT, "model": state_dict, "model_args": dict(model_args),
            "weights_sha256": weights_sha256(state_dict), **meta, **extra}


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def temporary_name(path: Path) -> Path:
    """Where ``atomic_save`` writes before the rename: a hidden file next to ``path``."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed save of ``path`` left behind (call while holding
    ``output_lock(path)``, so no live run is writing them); returns what was removed."""
    path = Path(path)
    stale = list(path.parent.glob(f".{glob_escape(path.name)}.tmp*")) if path.parent.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold a lock next to ``path`` while a run writes it: a second run that would write the same
    file refuses at its start instead of overwriting the first one's checkpoints."""
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            who = f.read().strip()
            raise OutputBusy(f"another training{f' (pid {who})' if who else ''} is writing {path}: wait for it "
                             "to finish or give another --out") from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``obj`` to a temporary file next to ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
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
        out = "" if path.name == DEFAULT_CHECKPOINT else f" --out {path}"
        raise CheckpointError(f"no checkpoint at {path} (train one with: python torch_model_train.py{out})")
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
    if "weights_sha256" in ckpt and weights_sha256(ckpt["model"]) != ckpt["weights_sha256"]:
        raise CheckpointError(f"{path} is corrupted: its weights do not match the SHA-256 stored with them")
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

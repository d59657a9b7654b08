"""The checkpoint format, in one place.

A checkpoint is one dict saved with ``torch.save``: the unwrapped model's ``state_dict`` under
``model``, the ``ModelConfig`` fields under ``model_args``, and what reading needs besides the
weights (alphabet, label length, preprocessing, calibration), which ``ModelSpec`` carries.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from captcha_recognize.data.preprocess import Preprocess
from captcha_recognize.errors import CheckpointError
from captcha_recognize.files import atomic_write
from captcha_recognize.model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model
from captcha_recognize.reading.spec import BASE_NAME, DEFAULT_CHECKPOINT, ModelSpec, model_path

CHECKPOINT_FORMAT = "captcha-recognize/1"
REQUIRED_KEYS = ("format", "model", "model_args", "alphabet", "label_length", "preprocess")
# everything reading depends on besides the weights: the SHA-256 a checkpoint carries covers these too
READING_KEYS = ("model_args", "alphabet", "label_length", "preprocess", "case", "label_map", "temperature",
                "threshold", "fixed_length")


def checkpoint_dict(state_dict: dict[str, torch.Tensor], model_args: dict[str, Any], spec: ModelSpec,
                    **record: Any) -> dict[str, Any]:
    """The one checkpoint dict: weights, model config, the spec's fields, and the training's ``record``
    (training's config, epoch, scores, history; optimizer state in the resumable one), sealed with the
    SHA-256 of all reading depends on (``seal``). Weights that are not finite are refused."""
    bad = not_finite(state_dict)
    if bad:
        raise CheckpointError(f"the weights are not finite ({bad}): the training diverged (give a lower --lr); "
                              "they were not saved")
    meta = spec.to_meta()
    del meta["arch"]  # model_args holds it
    return seal({"format": CHECKPOINT_FORMAT, "model": state_dict, "model_args": dict(model_args), **meta, **record})


def seal(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` with the SHA-256 of its weights and of everything reading depends on (``READING_KEYS``),
    after any change to those (calibration)."""
    ckpt["weights_sha256"] = weights_sha256(ckpt["model"])
    ckpt["sha256"] = reading_sha256(ckpt)
    return ckpt


def reading_sha256(ckpt: dict[str, Any]) -> str:
    """SHA-256 over the weights and the ``READING_KEYS`` values: a changed threshold or alphabet reads
    silently wrong, as a changed weight does."""
    reading = json.dumps({k: ckpt.get(k) for k in READING_KEYS}, sort_keys=True, default=list)
    return hashlib.sha256((weights_sha256(ckpt["model"]) + reading).encode()).hexdigest()


def not_finite(state_dict: dict[str, torch.Tensor]) -> str:
    """The first weight tensor that holds a NaN or an infinity, by name; "" when all are finite."""
    return next((name for name, t in state_dict.items() if t.is_floating_point() and not torch.isfinite(t).all()),
                "")


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the weights' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def atomic_save(obj: dict[str, Any], path: str | os.PathLike) -> None:
    """Save ``obj`` with ``torch.save`` to a temporary file next to ``path``, then rename it into place."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (pickled code is refused) and checked;
    ``base`` is the shipped base model (``spec.model_path``)."""
    path = model_path(path)
    if not path.is_file():
        out = "" if path.name == DEFAULT_CHECKPOINT else f" --out {path}"
        make = "python -m captcha_recognize.cli.base_model" if path == model_path(BASE_NAME) else \
            f"python torch_model_train.py{out}"
        raise CheckpointError(f"no checkpoint at {path} (train one with: {make})")
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
    if "sha256" in ckpt and reading_sha256(ckpt) != ckpt["sha256"]:
        raise CheckpointError(f"{path} is corrupted: its weights or what reading needs (alphabet, preprocessing, "
                              "calibration) do not match the SHA-256 stored with them")
    if "weights_sha256" in ckpt and weights_sha256(ckpt["model"]) != ckpt["weights_sha256"]:
        raise CheckpointError(f"{path} is corrupted: its weights do not match the SHA-256 stored with them")
    bad = not_finite(ckpt["model"])
    if bad:
        raise CheckpointError(f"{path} holds weights that are not finite ({bad}): the training diverged")
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


def untrained_checkpoint(path: str | os.PathLike, arch: str = "cnn", alphabet: str = "0123456789", length: int = 4,
                         preprocess: Preprocess = Preprocess(50, 22, 3), seed: int = 0) -> Path:
    """A freshly initialised checkpoint of the given shape, written as training writes one: for tests,
    and for speed measurements, which do not depend on the weights."""
    torch.manual_seed(seed)
    cfg = ModelConfig(arch=arch, n_classes=len(alphabet), n_positions=length, in_channels=preprocess.in_channels,
                      img_h=preprocess.height, img_w=preprocess.width)
    atomic_save(checkpoint_dict(build_model(cfg).state_dict(), asdict(cfg), ModelSpec(arch, alphabet, length,
                                                                                     preprocess)), path)
    return Path(path)

"""``ModelSpec``: everything a trained model needs besides its weights to read an image. A ``.pth``
checkpoint and an ``.onnx`` export carry the same one, so both rebuild the same label codec,
preprocessing and confidence."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.labels import LabelRules
from captcha_recognize.data.preprocess import Preprocess

DEFAULT_CHECKPOINT = "captcha_recognize.pth"  # the shipped model; what train_images/ trains and the scripts read
BASE_NAME = "base"  # names the base model wherever a checkpoint is asked for
BASE_CHECKPOINT = Path(__file__).resolve().parents[1] / "base_model.pth"  # trained on captchas of many looks


def model_path(name: str | os.PathLike) -> Path:
    """The model file ``name`` names: ``base`` is the shipped base model, unless a file of that name exists."""
    return BASE_CHECKPOINT if str(name) == BASE_NAME and not Path(name).is_file() else Path(name)


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

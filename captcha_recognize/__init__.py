"""captcha-recognize: train a captcha reader on images named by their text, and read new captchas.

The folders, by concern (imports run downwards only: a folder imports those listed above it):

* ``errors``, ``text``, ``runtime``: error types and exit statuses, console text, start-up settings
* ``model``: the networks and ``ModelConfig``
* ``data/``: labels, the label codec, images, the one preprocessing path, folders, augmentation,
  generated captchas
* ``reading/``: the checkpoint format, ``CaptchaRecognizer``, scores, calibration, ONNX export
* ``training/``: ``TrainConfig`` and ``train()``, the recipe, the loop, its plan, self-training
* ``serve/``: the HTTP service; ``labelling/``: the labelling page; ``cli/``: the command lines

``from captcha_recognize import CaptchaRecognizer`` reads captchas; ``from captcha_recognize.training
import TrainConfig, train`` trains.
"""
from __future__ import annotations

from typing import Any

from captcha_recognize import runtime  # noqa: F401  before anything loads torch: it sets how OpenMP threads wait

__version__ = "1.0.0"


def __getattr__(name: str) -> Any:
    """``CaptchaRecognizer``, ``Prediction`` and ``answer`` on first use, so that importing the package loads
    nothing heavy."""
    if name in ("CaptchaRecognizer", "Prediction"):
        from captcha_recognize.reading import recognizer
        return getattr(recognizer, name)
    if name == "answer":
        from captcha_recognize.reading.answer import answer
        return answer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

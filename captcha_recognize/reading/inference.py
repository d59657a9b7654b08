"""The one inference loop: normalize a batch of uint8 images, get the model's logits, decode them.
Validation during training, prediction, the benchmarks and the ONNX export's verification all run
it, with whichever model gives the logits."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.preprocess import normalize_array

LogitsFn = Callable[[np.ndarray], np.ndarray]


def all_logits(logits_fn: LogitsFn, arrays: Any, batch_size: int = 256) -> np.ndarray:
    """Logits ``(N, T|P, K)`` for uint8 images ``(N, C, H, W)`` (an array or a CPU tensor) at the model's
    input size, ``batch_size`` at a time."""
    parts = [logits_fn(normalize_array(np.asarray(arrays[i:i + batch_size])))
             for i in range(0, len(arrays), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, 0, 0), np.float32)


def infer(logits_fn: LogitsFn, converter: LabelConverter, arrays: Any, batch_size: int = 256,
          temperature: float = 1.0) -> tuple[list[str], list[float]]:
    """Texts and confidences (at ``temperature``) for uint8 images ``(N, C, H, W)`` at the input size."""
    if not len(arrays):
        return [], []
    return converter.decode(all_logits(logits_fn, arrays, batch_size), temperature)

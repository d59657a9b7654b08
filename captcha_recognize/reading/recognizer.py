"""Reading captchas with a trained model: the Python API and the one batched inference loop.

    from captcha_recognize import CaptchaRecognizer
    r = CaptchaRecognizer("captcha_recognize.pth")      # or an exported .onnx file
    text, confidence = r.predict("new_images/3568.png")  # path, bytes, PIL image or array
    results = r.predict_batch([...])
    p = r.predict_details(image)                         # Prediction(text, confidence, accept)

``infer`` is the loop that validation during training, prediction, the benchmarks and the
ONNX export's verification all run: normalize a batch of uint8 images, get logits, decode.
Confidences are calibrated by the checkpoint's temperature; ``accept`` compares them with its
threshold (or ``min_confidence``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval

from captcha_recognize.data.arrays import normalize, to_arrays
from captcha_recognize.data.codec import LabelConverter
from captcha_recognize.data.folders import decode_files, warn_skipped
from captcha_recognize.data.images import ImageInput, open_image
from captcha_recognize.data.labels import parse_label
from captcha_recognize.data.preprocess import image_to_array
from captcha_recognize.device import pick_device
from captcha_recognize.reading.checkpoint import build_from_checkpoint, load_checkpoint
from captcha_recognize.reading.onnx_file import load_onnx
from captcha_recognize.reading.spec import ModelSpec

CPU_CHUNK = 64  # images per worker task on the CPU
T, R = TypeVar("T"), TypeVar("R")


def fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode ``model`` with each BatchNorm folded into the conv before it: the same logits
    up to float rounding, with one layer less to run per conv block."""
    for seq in model.modules():
        if isinstance(seq, torch.nn.Sequential):
            for i in range(len(seq) - 1):
                if isinstance(seq[i], torch.nn.Conv2d) and isinstance(seq[i + 1], torch.nn.BatchNorm2d):
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(seq[i], seq[i + 1]), torch.nn.Identity()
    return model.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class Prediction:
    """One reading: the text, its calibrated confidence, and whether it clears the accept threshold."""
    text: str
    confidence: float
    accept: bool


def all_logits(logits_fn: Callable[[torch.Tensor], torch.Tensor], arrays: torch.Tensor,
               batch_size: int = 256) -> torch.Tensor:
    """Logits for uint8 images ``(N, C, H, W)`` at the model's input size, ``batch_size`` at a time."""
    parts = [logits_fn(normalize(arrays[i:i + batch_size])) for i in range(0, len(arrays), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0)  # (N, T|P, K)


def infer(logits_fn: Callable[[torch.Tensor], torch.Tensor], converter: LabelConverter, arrays: torch.Tensor,
          batch_size: int = 256, temperature: float = 1.0) -> tuple[list[str], list[float]]:
    """Texts and confidences (at ``temperature``) for uint8 images ``(N, C, H, W)`` at the input size."""
    if not len(arrays):
        return [], []
    return converter.decode(all_logits(logits_fn, arrays, batch_size), temperature)


@torch.inference_mode()
def evaluate(model: torch.nn.Module, converter: LabelConverter, arrays: torch.Tensor,
             device: torch.device | str = "cpu", batch_size: int = 256,
             temperature: float = 1.0) -> tuple[list[str], list[float]]:
    """``infer`` with a PyTorch model in eval mode (its training mode is restored after)."""
    was_training = model.training
    model.eval()
    try:
        return infer(lambda x: model(x.to(device)), converter, arrays, batch_size, temperature)
    finally:
        model.train(was_training)


class CaptchaRecognizer:
    """A trained model ready to read captchas: ``.pth`` checkpoints (PyTorch) or ``.onnx``
    exports (onnxruntime). Preprocessing and decoding are the training ones. ``min_confidence``
    overrides the checkpoint's accept threshold."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 256,
                 workers: int | None = None, min_confidence: float | None = None):
        self.path, self.batch_size = Path(path), batch_size
        self.device = pick_device(device)
        self.workers = workers or torch.get_num_threads()
        self.model, self.session = None, None
        if self.path.suffix == ".onnx":
            self.session, self.spec = load_onnx(self.path, threads=1)  # parallel over chunks instead
        else:
            ckpt = load_checkpoint(self.path)
            self.spec = ModelSpec.from_checkpoint(ckpt)
            self.model = fold_batch_norm(build_from_checkpoint(ckpt, self.device))
        self.converter = self.spec.converter
        self.preprocess = self.spec.preprocess
        self.arch = self.spec.arch
        self.temperature = self.spec.temperature
        self.threshold = self.spec.threshold if min_confidence is None else min_confidence

    def accepts(self, confidence: float) -> bool:
        """Whether a reading of this confidence is to be trusted (always, without a threshold)."""
        return self.threshold is None or confidence >= self.threshold

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits for a normalized batch ``(B, C, H, W)``."""
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"images": x.contiguous().numpy()})[0])
        with torch.inference_mode():
            return self.model(x.to(self.device)).cpu()

    def predict_arrays(self, arrays: torch.Tensor) -> list[tuple[str, float]]:
        """Texts and confidences for uint8 images ``(N, C, H, W)`` already at the input size."""
        return list(zip(*infer(self.logits, self.converter, arrays, self.batch_size, self.temperature)))

    def prepare(self, image: ImageInput, max_pixels: int | None = None) -> np.ndarray:
        """One image as the model's uint8 input ``(C, H, W)``; see ``data.images.open_image`` for ``max_pixels``."""
        return image_to_array(open_image(image, max_pixels), self.preprocess)

    def map_chunks(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` on consecutive chunks of ``items``, in order, run by ``self.workers`` threads.

        On the CPU each thread decodes its chunk and runs the model on it with one core, so
        decoding (Python and Pillow, one core) never waits for the model nor the model for it,
        and the cores are not oversubscribed. Chunks are small so all cores stay busy to the end.
        """
        cpu = self.device.type == "cpu"
        size = min(self.batch_size, CPU_CHUNK) if cpu else self.batch_size
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        if len(parts) <= 1 or self.workers <= 1:
            return [fn(p) for p in parts]
        threads = torch.get_num_threads()

        def work(part: Sequence[T]) -> R:
            if cpu and self.session is None:
                torch.set_num_threads(1)
            return fn(part)

        try:
            with ThreadPoolExecutor(self.workers) as pool:
                return list(pool.map(work, parts))
        finally:  # OpenMP builds keep the setting per thread; other thread pools share it
            torch.set_num_threads(threads)

    def predict_batch(self, images: Sequence[ImageInput]) -> list[tuple[str, float]]:
        """Read several images at once: ``[(text, confidence), ...]``."""
        def run(part: Sequence[ImageInput]) -> list[tuple[str, float]]:
            return self.predict_arrays(to_arrays([open_image(im) for im in part], self.preprocess))
        return [r for chunk in self.map_chunks(run, images) for r in chunk]

    def predict(self, image: ImageInput) -> tuple[str, float]:
        """Read one image: ``(text, confidence)``."""
        return self.predict_batch([image])[0]

    def predict_batch_details(self, images: Sequence[ImageInput]) -> list[Prediction]:
        """``predict_batch`` with ``accept``: ``[Prediction(text, confidence, accept), ...]``."""
        return [Prediction(t, c, self.accepts(c)) for t, c in self.predict_batch(images)]

    def predict_details(self, image: ImageInput) -> Prediction:
        """Read one image: ``Prediction(text, confidence, accept)``."""
        return self.predict_batch_details([image])[0]

    def label_of(self, path: str | os.PathLike) -> str | None:
        """The label in a file name, if it is one this model could read."""
        label = parse_label(path, self.converter.alphabet, self.spec.rules)
        return label if label is not None and self.converter.accepts(label) else None


def predict_files(rec: CaptchaRecognizer, files: Sequence[Path]) -> list[dict[str, Any]]:
    """One result dict per readable file (unreadable ones are skipped with one warning):
    ``path``, ``prediction``, ``confidence``, ``accept``, and ``label`` / ``correct`` when the name is a label."""
    def run(part: Sequence[Path]) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
        images, ok, bad = decode_files(part)
        if not images:
            return [], bad
        results = []
        for path, (text, conf) in zip(ok, rec.predict_arrays(to_arrays(images, rec.preprocess))):
            label = rec.label_of(path)
            results.append({"path": str(path), "prediction": text, "confidence": round(conf, 6),
                            "accept": rec.accepts(conf), "label": label,
                            "correct": None if label is None else text == label})
        return results, bad
    chunks = rec.map_chunks(run, files)
    warn_skipped([b for _, bad in chunks for b in bad])
    return [r for results, _ in chunks for r in results]

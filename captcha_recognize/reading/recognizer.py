"""Reading captchas with a trained model: the Python API.

    from captcha_recognize import CaptchaRecognizer
    r = CaptchaRecognizer("captcha_recognize.pth")      # or an exported .onnx file
    text, confidence = r.predict("new_images/3568.png")  # path, bytes, PIL image or array
    results = r.predict_batch([...])
    p = r.predict_details(image)                         # Prediction(text, confidence, accept)

It reads through ``inference.infer``, the loop that validation during training, prediction, the
benchmarks and the ONNX export's verification all run. Confidences are calibrated by the
checkpoint's temperature; ``accept`` compares them with its threshold (or ``min_confidence``). This
module needs no PyTorch: an ``.onnx`` export is read with onnxruntime, NumPy and Pillow alone; a
``.pth`` checkpoint loads PyTorch (``torch_model``).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from captcha_recognize.data.codec import LabelConverter, look_alike
from captcha_recognize.data.folders import decode_files, warn_skipped
from captcha_recognize.data.images import MAX_PIXELS, ImageInput, open_image
from captcha_recognize.data.labels import parse_label
from captcha_recognize.data.preprocess import image_to_array, images_to_array
from captcha_recognize.reading.inference import infer
from captcha_recognize.errors import ConfigError, MissingPackage
from captcha_recognize.reading.answer import Answer
from captcha_recognize.reading.answer import answer as evaluate
from captcha_recognize.reading.onnx_file import OnnxModel
from captcha_recognize.reading.spec import model_path

CPU_CHUNK = 64  # images per worker task on the CPU
T, R = TypeVar("T"), TypeVar("R")


@dataclass(frozen=True)
class Prediction:
    """One reading: the text, its calibrated confidence, whether it clears the accept threshold, and
    when asked for, the value of an arithmetic reading (``answer.Answer``)."""
    text: str
    confidence: float
    accept: bool
    answer: Answer | None = None


def load_model(path: Path, device: str) -> Any:
    """The model behind a file: an ``.onnx`` export on onnxruntime, else a ``.pth`` checkpoint on PyTorch."""
    if path.suffix == ".onnx":
        return OnnxModel(path)
    try:
        from captcha_recognize.reading.torch_model import TorchModel  # PyTorch only for PyTorch checkpoints
    except ModuleNotFoundError as e:
        raise MissingPackage(f"{path} is a PyTorch checkpoint, and reading it needs {e.name}: pip install torch, "
                             "or read an .onnx export of it (torch_model_export.py)") from None
    return TorchModel(path, device)


ACCEPTS_NOTHING = ("accepts no reading: no labelled images of these captchas vouch for any confidence (too few in its "
                   "validation split, as its training said, or none: the base model has seen no site)")


class CaptchaRecognizer:
    """A trained model ready to read captchas: ``.pth`` checkpoints (PyTorch) or ``.onnx``
    exports (onnxruntime). Preprocessing and decoding are the training ones. ``min_confidence``
    overrides the checkpoint's accept threshold; ``alphabet`` restricts the readings to those characters
    (the base model, ``base``, reads digits, Latin and Cyrillic letters and arithmetic: give it the site's),
    and ``length`` makes a CRNN read exactly that many characters."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 256,
                 workers: int | None = None, min_confidence: float | None = None, alphabet: str | None = None,
                 length: int | None = None):
        self.path, self.batch_size = model_path(path), batch_size
        self.model = load_model(self.path, device)
        self.device = self.model.device
        self.workers = workers or self.model.threads()
        self.spec = self.model.spec
        self.converter = self.spec.converter
        if length is not None and length != self.converter.fixed_length:
            if not self.converter.ctc:
                raise ConfigError("length", f"this CNN reads {self.converter.length} characters, not {length}")
            self.converter = LabelConverter(self.converter.alphabet, length, ctc=True, fixed=True)
        self.preprocess = self.spec.preprocess
        self.arch = self.spec.arch
        self.temperature = self.spec.temperature
        self.threshold = self.spec.threshold if min_confidence is None else min_confidence
        self.alphabet = alphabet or self.converter.alphabet  # what the readings hold
        self.only, self.renamed = self.restrict(alphabet) if alphabet is not None else (None, {})

    def restrict(self, alphabet: str) -> tuple[np.ndarray, dict[int, str]]:
        """The class mask ``(K,)`` of ``alphabet``, and the characters read as a look-alike the model knows
        (Cyrillic ``е`` as Latin ``e``), to be renamed in the readings."""
        if not alphabet:
            raise ConfigError("alphabet", "give the characters to read, or leave it out to read all the model reads")
        known = self.converter.alphabet
        alike = {c: twin for c in alphabet if (twin := look_alike(c, known)) and twin not in alphabet}  # wanted: read
        try:
            mask = self.converter.class_mask("".join(alike.get(c, c) for c in alphabet))
        except ValueError as e:
            raise ConfigError("alphabet", str(e)) from None
        return mask, {ord(read): c for c, read in alike.items()}

    @property
    def accepts_nothing(self) -> bool:
        """Whether the threshold lies above every confidence: training's validation could vouch for none."""
        return self.threshold is not None and self.threshold > 1.0

    def accepts(self, confidence: float) -> bool:
        """Whether a reading of this confidence is to be trusted (always, without a threshold)."""
        return self.threshold is None or confidence >= self.threshold

    def logits(self, x: Any) -> np.ndarray:
        """Model logits ``(B, T|P, K)`` for a normalized batch ``(B, C, H, W)`` (an array, or a tensor for
        PyTorch models); classes outside ``alphabet`` never win."""
        logits = self.model.logits(x)
        return logits if self.only is None else np.where(self.only, logits, np.float32(-1e4))

    def predict_arrays(self, arrays: Any) -> list[tuple[str, float]]:
        """Texts and confidences for uint8 images ``(N, C, H, W)`` already at the input size."""
        return self.renaming(*infer(self.logits, self.converter, arrays, self.batch_size, self.temperature))

    def read_logits(self, logits: np.ndarray, temperature: float) -> list[tuple[str, float]]:
        """Texts and confidences (at ``temperature``) of this model's logits ``(N, T|P, K)``."""
        return self.renaming(*self.converter.decode(logits, temperature))

    def renaming(self, texts: Sequence[str], confidences: Sequence[float]) -> list[tuple[str, float]]:
        """``(text, confidence)`` pairs, each character read as a look-alike renamed to the one asked for."""
        return [(t.translate(self.renamed), c) for t, c in zip(texts, confidences)]

    def prepare(self, image: ImageInput, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
        """One image as the model's uint8 input ``(C, H, W)``; see ``data.images.open_image`` for ``max_pixels``."""
        return image_to_array(open_image(image, max_pixels), self.preprocess)

    def map_chunks(self, fn: Callable[[Sequence[T]], R], items: Sequence[T]) -> list[R]:
        """``fn`` on consecutive chunks of ``items``, in order, run by ``self.workers`` threads.

        On the CPU each thread decodes its chunk and runs the model on it with one core, so
        decoding (Python and Pillow, one core) never waits for the model nor the model for it,
        and the cores are not oversubscribed. Chunks are small so all cores stay busy to the end.
        """
        cpu = self.device == "cpu"
        size = min(self.batch_size, CPU_CHUNK) if cpu else self.batch_size
        parts = [items[i:i + size] for i in range(0, len(items), size)]
        if len(parts) <= 1 or self.workers <= 1:
            return [fn(p) for p in parts]
        with self.model.one_core_per_thread(cpu):
            with ThreadPoolExecutor(self.workers, initializer=self.model.worker_setup(cpu)) as pool:
                return list(pool.map(fn, parts))

    def predict_batch(self, images: Sequence[ImageInput]) -> list[tuple[str, float]]:
        """Read several images at once: ``[(text, confidence), ...]``."""
        def run(part: Sequence[ImageInput]) -> list[tuple[str, float]]:
            return self.predict_arrays(images_to_array([open_image(im) for im in part], self.preprocess))
        return [r for chunk in self.map_chunks(run, images) for r in chunk]

    def predict(self, image: ImageInput) -> tuple[str, float]:
        """Read one image: ``(text, confidence)``."""
        return self.predict_batch([image])[0]

    def predict_batch_details(self, images: Sequence[ImageInput], answer: bool = False) -> list[Prediction]:
        """``predict_batch`` with ``accept`` (and with ``answer``, each reading's arithmetic value):
        ``[Prediction(text, confidence, accept, answer), ...]``."""
        return [self.prediction(t, c, answer) for t, c in self.predict_batch(images)]

    def predict_details(self, image: ImageInput, answer: bool = False) -> Prediction:
        """Read one image: ``Prediction(text, confidence, accept, answer)``."""
        return self.predict_batch_details([image], answer)[0]

    def prediction(self, text: str, confidence: float, answer: bool = False) -> Prediction:
        """A reading as a ``Prediction``; with ``answer``, its value as arithmetic."""
        return Prediction(text, confidence, self.accepts(confidence), evaluate(text) if answer else None)

    def label_of(self, path: str | os.PathLike) -> str | None:
        """The label in a file name, if it is one this model could read."""
        label = parse_label(path, self.alphabet, self.spec.rules)
        fits = label is not None and set(label) <= set(self.alphabet)
        return label if fits and self.converter.fixed_length in (None, len(label)) else None


def predict_files(rec: CaptchaRecognizer, files: Sequence[Path], answer: bool = False) -> list[dict[str, Any]]:
    """One result dict per readable file (unreadable ones are skipped with one warning):
    ``path``, ``prediction``, ``confidence``, ``accept``, ``label`` / ``correct`` when the name is a label,
    and with ``answer`` the reading's arithmetic value (``answer``, or None and ``answer_error``)."""
    def run(part: Sequence[Path]) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
        images, ok, bad = decode_files(part)
        if not images:
            return [], bad
        results = []
        for path, (text, conf) in zip(ok, rec.predict_arrays(images_to_array(images, rec.preprocess))):
            label = rec.label_of(path)
            results.append({"path": str(path), "prediction": text, "confidence": round(conf, 6),
                            "accept": rec.accepts(conf), "label": label,
                            "correct": None if label is None else text == label})
            if answer:
                value = evaluate(text)
                results[-1].update(answer=value.value, answer_error=value.why)
        return results, bad
    chunks = rec.map_chunks(run, files)
    warn_skipped([b for _, bad in chunks for b in bad])
    return [r for results, _ in chunks for r in results]

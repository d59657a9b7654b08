"""Read captchas with a trained checkpoint.

Usage:
    python torch_model_predict.py new_images                 # folder(s) and/or files
    python torch_model_predict.py new_images --json report.json
    python torch_model_predict.py a.png b.png --checkpoint my.pth --device cuda
    python torch_model_predict.py new_images --errors errors.png

Prints one line per image (file, prediction, confidence). When the file names are labels
(``3568.png``), it also prints per-position accuracy, sequence accuracy and how many
characters were wrong. Exit status: 0 ok, 1 nothing could be read, 2 bad checkpoint.

Python API:
    from torch_model_predict import CaptchaRecognizer
    r = CaptchaRecognizer("captcha_recognize.pth")      # or an exported .onnx file
    text, confidence = r.predict("new_images/3568.png")  # path, bytes, PIL image or array
    results = r.predict_batch([...])
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
import zipfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import torch

from dataset import (DataError, HelpFormatter, ImageInput, LabelConverter, Preprocess, decode_files, list_images,
                     normalize, open_image, parse_label, to_arrays, warn_skipped)
from model import CLASSIC_CNN_CHANNELS, CLASSIC_CRNN_CHANNELS, ModelConfig, build_model

CHECKPOINT_FORMAT = "captcha-recognize/1"
REQUIRED_KEYS = ("format", "model", "model_args", "alphabet", "label_length", "preprocess")
CPU_CHUNK = 64  # images per worker task on the CPU
T, R = TypeVar("T"), TypeVar("R")


class CheckpointError(RuntimeError):
    """Missing, unreadable, unsafe or incompatible checkpoint: shown as one line, exit 2."""


# ------------------------------------------------------------------------- checkpoints

def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint dict, loaded with ``weights_only=True`` (pickled code is refused)."""
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


def converter_from(ckpt: dict[str, Any]) -> LabelConverter:
    """The label converter the checkpoint was trained with."""
    return LabelConverter(ckpt["alphabet"], ckpt["label_length"], ctc=ckpt["model_args"]["arch"] == "crnn")


def model_from_checkpoint(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> torch.nn.Module:
    """The model rebuilt from ``model_args`` with the checkpoint's weights, in eval mode."""
    try:
        model = build_model(ModelConfig(**ckpt["model_args"]))
        model.load_state_dict(ckpt["model"])
    except (TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {str(e).splitlines()[0]}") from None
    return model.to(device, memory_format=torch.channels_last).eval()


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if present, then mps, else cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


# -------------------------------------------------------------------- running a model

@torch.inference_mode()
def evaluate(model: torch.nn.Module, converter: LabelConverter, arrays: torch.Tensor,
             device: torch.device | str = "cpu", batch_size: int = 256) -> tuple[list[str], list[float]]:
    """Predictions and confidences for uint8 images ``(N, C, H, W)``.

    The one validation path, shared by training (validation) and prediction.
    """
    was_training = model.training
    model.eval()
    texts: list[str] = []
    confs: list[float] = []
    for i in range(0, len(arrays), batch_size):
        x = normalize(arrays[i:i + batch_size]).to(device)  # (B, C, H, W)
        t, c = converter.decode(model(x))
        texts += t
        confs += c
    model.train(was_training)
    return texts, confs


# ---------------------------------------------------------------------------- metrics

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def score(preds: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Sequence, character and per-position accuracy of predictions against labels.

    Characters wrong are counted as edit distance (a CTC model may drop or add one);
    position ``i`` is right when the prediction has the label's character at ``i``.
    """
    n = len(labels)
    n_pos = max((len(s) for s in labels), default=0)
    pos_right = [0] * n_pos
    pos_total = [0] * n_pos
    for p, t in zip(preds, labels):
        for i, ch in enumerate(t):
            pos_total[i] += 1
            pos_right[i] += i < len(p) and p[i] == ch
    chars = sum(len(t) for t in labels)
    wrong = sum(edit_distance(p, t) for p, t in zip(preds, labels))
    correct = sum(p == t for p, t in zip(preds, labels))
    return {
        "n": n,
        "correct": correct,
        "sequence_accuracy": correct / n if n else 0.0,
        "characters": chars,
        "characters_wrong": wrong,
        "character_accuracy": max(0.0, 1 - wrong / chars) if chars else 0.0,
        "position_accuracy": [r / t for r, t in zip(pos_right, pos_total)],
    }


def format_scores(s: dict[str, Any]) -> str:
    """``Accuracy 1: 0.9683, ... | sequence 140/149 (94.0%) | character 98.3%``"""
    pos = ", ".join(f"Accuracy {i}: {a:.4f}" for i, a in enumerate(s["position_accuracy"], 1))
    return (f"{pos} | sequence {s['correct']}/{s['n']} ({100 * s['sequence_accuracy']:.1f}%)"
            f" | character {100 * s['character_accuracy']:.2f}%")


def confused_pairs(preds: Sequence[str], labels: Sequence[str], top: int = 5) -> list[tuple[str, str, int]]:
    """Most frequent (truth, predicted) character swaps at equal positions."""
    pairs = Counter((t[i], p[i]) for p, t in zip(preds, labels) if len(p) == len(t)
                    for i in range(len(t)) if p[i] != t[i])
    return [(a, b, n) for (a, b), n in pairs.most_common(top)]


def mistakes_table(names: Sequence[str], labels: Sequence[str], preds: Sequence[str],
                   confs: Sequence[float], limit: int = 10) -> str:
    """``Ground truth | Prediction | Confidence | ok`` rows for the misread images."""
    rows = [(n, t, p, c) for n, t, p, c in zip(names, labels, preds, confs) if p != t][:limit]
    if not rows:
        return "no mistakes"
    w = max(12, *(len(t) for _, t, _, _ in rows))
    lines = [f"{'Ground truth':<{w}} | {'Prediction':<{w}} | Confidence | ok | file"]
    lines += [f"{t:<{w}} | {p:<{w}} | {c:>10.4f} | {'no':<2} | {n}" for n, t, p, c in rows]
    return "\n".join(lines)


def contact_sheet(items: Sequence[tuple[ImageInput, str, str, float]], path: str | os.PathLike,
                  columns: int = 6, tile_h: int = 50) -> None:
    """A PNG grid of images, each captioned ``truth -> prediction (confidence)``."""
    from PIL import Image, ImageDraw

    tiles = []
    for src, truth, pred, conf in items:
        img = open_image(src).convert("RGB")
        img = img.resize((max(1, round(img.width * tile_h / img.height)), tile_h), Image.NEAREST)
        tiles.append((img, f"{truth} -> {pred} ({conf:.2f})"))
    tile_w = max(160, max((im.width for im, _ in tiles), default=160)) + 8
    rows = max(1, math.ceil(len(tiles) / columns))
    sheet = Image.new("RGB", (tile_w * min(columns, max(1, len(tiles))), rows * (tile_h + 22)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption) in enumerate(tiles):
        x, y = (i % columns) * tile_w + 4, (i // columns) * (tile_h + 22)
        sheet.paste(img, (x, y + 2))
        draw.text((x, y + tile_h + 5), caption, fill=(200, 0, 0))
    if not tiles:
        draw.text((4, 4), "no misread images", fill=(0, 120, 0))
    sheet.save(path)


# ------------------------------------------------------------------------ recognizer

class CaptchaRecognizer:
    """A trained model ready to read captchas: ``.pth`` checkpoints (PyTorch) or ``.onnx``
    exports (onnxruntime). Preprocessing and decoding are the training ones."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 256,
                 workers: int | None = None):
        self.path, self.batch_size = Path(path), batch_size
        self.device = pick_device(device)
        self.workers = workers or torch.get_num_threads()
        if self.path.suffix == ".onnx":
            self._init_onnx()
        else:
            ckpt = load_checkpoint(self.path)
            self.converter = converter_from(ckpt)
            self.spec = Preprocess(**ckpt["preprocess"])
            self.arch = ckpt["model_args"]["arch"]
            self.model = model_from_checkpoint(ckpt, self.device)
            self.session = None

    def _init_onnx(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise CheckpointError("reading .onnx files needs onnxruntime: pip install onnxruntime") from None
        if not self.path.is_file():
            raise CheckpointError(f"no ONNX model at {self.path}")
        try:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1  # parallel over chunks instead: see map_chunks
            self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
            meta = json.loads(self.session.get_modelmeta().custom_metadata_map["captcha"])
        except Exception as e:
            raise CheckpointError(f"{self.path} is not an ONNX export of this toolkit ({type(e).__name__})") from None
        self.converter = LabelConverter(meta["alphabet"], meta["label_length"], ctc=meta["arch"] == "crnn")
        self.spec = Preprocess(**meta["preprocess"])
        self.arch = meta["arch"]
        self.model = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits for a normalized batch ``(B, C, H, W)``."""
        if self.session is not None:
            out = self.session.run(None, {"images": x.contiguous().numpy()})[0]
            return torch.from_numpy(out)
        with torch.inference_mode():
            return self.model(x.to(self.device)).cpu()

    def predict_arrays(self, arrays: torch.Tensor) -> list[tuple[str, float]]:
        """Texts and confidences for uint8 images ``(N, C, H, W)`` already at the input size."""
        out: list[tuple[str, float]] = []
        for i in range(0, len(arrays), self.batch_size):
            texts, confs = self.converter.decode(self.logits(normalize(arrays[i:i + self.batch_size])))
            out += zip(texts, confs)
        return out

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
        """Read several images at once."""
        def run(part: Sequence[ImageInput]) -> list[tuple[str, float]]:
            return self.predict_arrays(to_arrays([open_image(im) for im in part], self.spec))
        return [r for chunk in self.map_chunks(run, images) for r in chunk]

    def predict(self, image: ImageInput) -> tuple[str, float]:
        """Read one image: ``(text, confidence)``."""
        return self.predict_batch([image])[0]

    def label_of(self, path: str | os.PathLike) -> str | None:
        """The label in a file name, if it is one this model could read."""
        label = parse_label(path, self.converter.alphabet)
        return label if label is not None and self.converter.accepts(label) else None


# -------------------------------------------------------------------------------- CLI

def predict_files(rec: CaptchaRecognizer, files: Sequence[Path]) -> list[dict[str, Any]]:
    """One result dict per readable file (unreadable ones are skipped with one warning)."""
    def run(part: Sequence[Path]) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
        images, ok, bad = decode_files(part)
        if not images:
            return [], bad
        arrays = to_arrays(images, rec.spec)  # (N, C, H, W) uint8
        results = []
        for path, (text, conf) in zip(ok, rec.predict_arrays(arrays)):
            label = rec.label_of(path)
            results.append({"path": str(path), "prediction": text, "confidence": round(conf, 6),
                            "label": label, "correct": None if label is None else text == label})
        return results, bad
    chunks = rec.map_chunks(run, files)
    warn_skipped([b for _, bad in chunks for b in bad])
    return [r for results, _ in chunks for r in results]


def build_report(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``--json`` report: files plus a summary (accuracies only over labelled files)."""
    summary: dict[str, Any] = {"n": len(results)}
    labelled = [r for r in results if r["label"] is not None]
    if labelled:
        s = score([r["prediction"] for r in labelled], [r["label"] for r in labelled])
        summary.update({k: s[k] for k in ("sequence_accuracy", "character_accuracy", "position_accuracy")})
        summary.update(labelled=s["n"], characters=s["characters"], characters_wrong=s["characters_wrong"])
    return {"files": results, "summary": summary}


def print_results(results: list[dict[str, Any]], out=sys.stdout) -> None:
    """One line per image, then the accuracy report when names are labels."""
    w = max(len(r["path"]) for r in results)
    print(f"{'file':<{w}}  {'prediction':<10} confidence", file=out)
    for r in results:
        mark = "" if r["correct"] is None else ("  ok" if r["correct"] else f"  WRONG (label {r['label']})")
        print(f"{r['path']:<{w}}  {r['prediction']:<10} {r['confidence']:>10.4f}{mark}", file=out)
    labelled = [r for r in results if r["label"] is not None]
    if not labelled:
        return
    preds, labels = [r["prediction"] for r in labelled], [r["label"] for r in labelled]
    s = score(preds, labels)
    print(f"\n{len(labelled)} of {len(results)} file names are labels:", file=out)
    print(format_scores(s), file=out)
    print(f"{s['characters_wrong']} of {s['characters']} characters wrong", file=out)
    pairs = confused_pairs(preds, labels)
    if pairs:
        print("most confused (truth -> predicted): "
              + ", ".join(f"{a}->{b} x{n}" for a, b, n in pairs), file=out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Read captcha images with a trained checkpoint.",
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="*", default=["new_images"], help="image folders and/or files")
    p.add_argument("--checkpoint", default="captcha_recognize.pth", help=".pth checkpoint or .onnx export")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    p.add_argument("--json", metavar="FILE", help="write a JSON report to FILE ('-' for stdout)")
    p.add_argument("--errors", metavar="PNG", help="write a contact sheet of the misread images")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        rec = CaptchaRecognizer(args.checkpoint, device=args.device, batch_size=args.batch_size)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        files = list_images(args.inputs)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    results = predict_files(rec, files)
    if not results:
        print(f"error: no readable images in {', '.join(args.inputs)}", file=sys.stderr)
        return 1
    report = build_report(results)
    print_results(results, out=sys.stderr if args.json == "-" else sys.stdout)
    if args.json:
        text = json.dumps(report, indent=1)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    if args.errors:
        wrong = [r for r in results if r["correct"] is False]
        contact_sheet([(r["path"], r["label"], r["prediction"], r["confidence"]) for r in wrong], args.errors)
        print(f"wrote {len(wrong)} misread images to {args.errors}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # output piped into a reader that stopped early, e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        sys.exit(1)

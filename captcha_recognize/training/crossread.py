"""Cross-reading: every labelled image is read by a model that never trained on it, so the
images whose names a held-out model reads differently (often typos in the names) stand out.
Used by ``check_labels.py``, the labelling page's review mode and the labelling benchmark."""
from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from captcha_recognize.data.folders import read_labelled
from captcha_recognize.data.labels import LabelRules, name_text
from captcha_recognize.errors import DataError
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training import train
from captcha_recognize.training.task import choose_arch, label_rules


def fold_files(files: Sequence[Path], folds: int, seed: int) -> list[list[Path]]:
    """``folds`` disjoint parts of ``files`` of near-equal size that together hold every file once."""
    if not 2 <= folds <= len(files):
        raise DataError(f"--folds must be between 2 and the number of labelled images ({len(files)}), got {folds}")
    order = list(files)
    random.Random(seed).shuffle(order)
    return [sorted(order[k::folds]) for k in range(folds)]


def common_length(files: Sequence[Path], rules: LabelRules | None = None) -> int:
    """The most common label length: the CNN's length, so that a label of another length
    (often a typo) is read and listed instead of stopping the CNN's training."""
    return Counter(len(named(f, rules)) for f in files).most_common(1)[0][0]


def named(path: str | Path, rules: LabelRules | None) -> str:
    """What the file name says the captcha reads, as training reads names (case, label map),
    also when no fold model could read it (a character or length it never saw)."""
    return (rules or LabelRules()).apply(name_text(path))


def train_on(files: Sequence[Path], cfg: TrainConfig, out: Path) -> float:
    """Train ``cfg`` quietly on ``files`` into ``out``; returns the wall time in seconds, reading
    the images included."""
    t0 = time.perf_counter()
    train(replace(cfg, data=[str(f) for f in files], out=str(out), plot="none", quiet=True))
    return time.perf_counter() - t0


def cross_read(files: Sequence[Path], folds: int, cfg: TrainConfig, workdir: Path) -> list[dict[str, Any]]:
    """``predict_files`` results for every file, each from the fold model that did not train on it."""
    parts = fold_files(files, folds, cfg.seed)
    rules = label_rules(cfg, None)
    if cfg.arch == "auto" and cfg.length is None:  # decided on the common length: a typo must not decide it
        n = common_length(files, rules)
        same = [f for f in files if len(named(f, rules)) == n]
        arch, why = choose_arch(read_labelled(same, cfg.alphabet, rules, cfg.recursive), cfg)
        print(f"arch auto: {arch}, as {why}", file=sys.stderr)
        cfg = replace(cfg, arch=arch)
    if cfg.arch == "cnn" and cfg.length is None:
        cfg = replace(cfg, length=common_length(files, rules))
    results = []
    for k, held in enumerate(parts):
        rest = [f for j, part in enumerate(parts) if j != k for f in part]
        out = workdir / f"fold{k}.pth"
        print(f"fold {k + 1}/{folds}: training on {len(rest)} images, then reading the other {len(held)}",
              file=sys.stderr)
        train_on(rest, cfg, out)
        for r in predict_files(CaptchaRecognizer(out), held):
            label = named(r["path"], rules)
            results.append({**r, "label": label, "correct": r["prediction"] == label})
    return results


def suspects(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The readings that disagree with their file name, the most confident first."""
    return sorted((r for r in results if r["correct"] is False), key=lambda r: -r["confidence"])

"""Accuracy benchmark: default training recipe on the real datasets, scored on untouched images.

Usage:
    python benchmark.py                                   # everything (long: about 2 hours on 2 cores)
    python benchmark.py --datasets percent4-digits --archs cnn --seeds 0 1 2
    python benchmark.py --sizes 100 200 400 all           # the few-labels curve
    python benchmark.py --quick                           # smoke run on generated captchas
    python benchmark.py --archs crnn --train-args="--ema 0.99"   # a non-default recipe

For each seed the dataset is split once: 20% is held out as the test split that training
never touches; the training images (all, or the first N of a seeded shuffle) go to
``torch_model_train.py`` with default flags, which holds out its own 10% for picking the
best epoch. The table gives whole-captcha accuracy mean and worst over seeds, per-position
and character accuracy (means), the mean accuracy of the int8 ONNX export (calibrated on the
training images; needs onnx and onnxruntime), training wall time and model size. If ddddocr
is installed, its zero-shot reading of the same test splits is added, restricted to the
dataset's alphabet. A ``Machine:`` line after the table names the CPU and the vector kernels
PyTorch used: reruns on the same machine give the same results, on other CPUs a few test
images can differ.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from dataset import HelpFormatter, infer_alphabet, list_images, parse_label, split_indices
from torch_model_predict import CaptchaRecognizer, predict_files, score
from torch_model_train import parse_args as train_args, train

DATASETS = {"percent4-digits": "../shared/data/percent4-digits",
            "captcha-images-v2": "../shared/data/captcha-images-v2"}


def split_files(files: Sequence[Path], seed: int, n_train: int | None) -> tuple[list[Path], list[Path]]:
    """(training files, untouched test files) for one seed; the test split does not depend on n_train."""
    pool, test = split_indices(len(files), [0.2], seed)
    random.Random(seed + 1000).shuffle(pool)
    chosen = pool if n_train is None else pool[:n_train]
    return [files[i] for i in sorted(chosen)], [files[i] for i in test]


def train_on(files: Sequence[Path], arch: str, seed: int, out: Path, extra: Sequence[str] = ()) -> float:
    """``torch_model_train.py`` with default flags (plus ``extra``) on ``files`` into ``out``, without
    its per-epoch lines and plot; returns the training wall time in seconds."""
    args = train_args(["--data", *map(str, files), "--arch", arch, "--seed", str(seed), "--out", str(out),
                       "--plot", "none", *extra])
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        train(args)
    return time.perf_counter() - t0


def run_one(files: Sequence[Path], test: Sequence[Path], arch: str, seed: int, workdir: Path,
            extra: Sequence[str]) -> dict[str, Any]:
    """Train with default flags on ``files``; score the checkpoint on ``test``."""
    out = workdir / f"{arch}-{seed}-{len(files)}.pth"
    seconds = train_on(files, arch, seed, out, extra)
    rec = CaptchaRecognizer(out)
    s = test_score(rec, test)
    return {**s, "seconds": seconds, "size_mb": out.stat().st_size / 1e6, "int8": int8_score(out, rec, files, test)}


def test_score(rec: CaptchaRecognizer, test: Sequence[Path]) -> dict[str, Any]:
    """``score`` on ``test``, plus ``wrong``: the misread files as ``name->prediction``."""
    results = predict_files(rec, test)
    preds, labels = [r["prediction"] for r in results], [parse_label(r["path"]) for r in results]
    wrong = [f"{Path(r['path']).name}->{p}" for r, p, t in zip(results, preds, labels) if p != t]
    return {**score(preds, labels), "wrong": wrong}


def int8_score(ckpt: Path, rec: CaptchaRecognizer, train_files: Sequence[Path], test: Sequence[Path]) -> float | None:
    """Whole-captcha test accuracy of the int8 ONNX export calibrated on the training images
    (``torch_model_export.py --int8``), or None without onnx/onnxruntime."""
    try:
        from torch_model_export import calibration_arrays, export_int8
        int8 = export_int8(ckpt, ckpt.with_suffix(".int8.onnx"), calibration_arrays(train_files, rec.spec))
    except ImportError:
        return None
    return test_score(CaptchaRecognizer(int8), test)["sequence_accuracy"]


def machine() -> str:
    """One line naming what a table was measured on: CPU, cores, PyTorch and the kernels it picked.

    Training follows a different floating-point path on CPUs with other vector kernels (AVX2,
    AVX512), so accuracies rerun elsewhere can differ by a few test images.
    """
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        names = [ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"Machine: {cpu}, {os.cpu_count()} cores, PyTorch {torch.__version__} "
            f"({torch.backends.cpu.get_cpu_capability()} kernels, {torch.get_num_threads()} threads){gpu}")


def ddddocr_scores(test: Sequence[Path], alphabet: str) -> dict[str, Any] | None:
    try:
        import ddddocr
    except ImportError:
        return None
    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.set_ranges(alphabet)
    preds = [ocr.classification(f.read_bytes()) for f in test]
    return score(preds, [parse_label(f) for f in test])


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seq = [r["sequence_accuracy"] for r in runs]
    pos = [statistics.mean(r["position_accuracy"][i] for r in runs) for i in range(len(runs[0]["position_accuracy"]))]
    return {"mean": statistics.mean(seq), "worst": min(seq), "pos": pos,
            "char": statistics.mean(r["character_accuracy"] for r in runs),
            "seconds": statistics.mean(r.get("seconds", 0) for r in runs),
            "size_mb": runs[0].get("size_mb"), "test": runs[0]["n"],
            "int8": statistics.mean(r["int8"] for r in runs) if all(r.get("int8") is not None for r in runs)
            else None}


def print_table(rows: list[tuple[str, str, str, list[int], dict[str, Any]]]) -> None:
    print("| dataset | arch | train images | seeds | test images | whole-captcha acc. mean / worst | "
          "per-position acc. | char. acc. | int8 ONNX acc. mean | train time | model size |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ds, arch, n, seeds, s in rows:
        pos = " / ".join(f"{p:.3f}" for p in s["pos"])
        t = f"{s['seconds']:.0f} s" if s["seconds"] else "none"
        size = f"{s['size_mb']:.1f} MB" if s["size_mb"] else "pretrained"
        int8 = f"{100 * s['int8']:.2f}%" if s["int8"] is not None else "n/a"
        print(f"| {ds} | {arch} | {n} | {','.join(map(str, seeds))} | {s['test']} | "
              f"{100 * s['mean']:.2f}% / {100 * s['worst']:.2f}% | {pos} | {100 * s['char']:.2f}% | {int8} | {t} | {size} |")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Accuracy of the default recipe on real captchas.",
                                formatter_class=HelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="dataset names under ../shared/data")
    p.add_argument("--archs", nargs="+", default=["cnn", "crnn"], help="architectures")
    p.add_argument("--sizes", nargs="+", default=["all"], help="training set sizes ('all' or a number)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (split, init, augmentation)")
    p.add_argument("--quick", action="store_true", help="smoke run: generated captchas, 1 seed, 2 epochs")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="extra torch_model_train.py flags to measure instead of the default recipe, "
                        "e.g. --train-args='--ema 0.99'; shown in the arch column")
    args = p.parse_args(argv)
    extra = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folders = {name: DATASETS.get(name, name) for name in args.datasets}
        if args.quick:
            from make_captchas import generate
            generate(workdir / "generated", 60, seed=4, show=False)
            folders, args.seeds = {"generated": str(workdir / "generated")}, args.seeds[:1]
            extra = ["--epochs", "2", *extra]
        rows = []
        for name, folder in folders.items():
            files = list_images([folder])
            if not files:
                print(f"error: no images in {folder}", file=sys.stderr)
                return 1
            alphabet = infer_alphabet(parse_label(f) or "" for f in files)
            for size in args.sizes:
                n = None if size == "all" else int(size)
                for arch in args.archs:
                    runs = []
                    for seed in args.seeds:
                        train_files, test = split_files(files, seed, n)
                        runs.append(run_one(train_files, test, arch, seed, workdir, extra))
                        print(f"  {name} {arch} n={len(train_files)} seed {seed}: "
                              f"{100 * runs[-1]['sequence_accuracy']:.2f}% in {runs[-1]['seconds']:.0f}s; "
                              f"wrong: {' '.join(runs[-1]['wrong']) or 'none'}", file=sys.stderr)
                    label = f"{arch} {args.train_args}".strip()
                    rows.append((name, label, str(len(train_files)), args.seeds, summarize(runs)))
            dd = [ddddocr_scores(split_files(files, seed, None)[1], alphabet) for seed in args.seeds]
            if all(dd):
                rows.append((name, "ddddocr (zero-shot)", "0", args.seeds, summarize(dd)))
        print_table(rows)
        print(f"\n{machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Accuracy benchmark: the default training recipe on real captchas, scored on untouched images.

Usage:
    python benchmarks/accuracy.py                                   # everything (long: hours on 2 cores)
    python benchmarks/accuracy.py --datasets percent4-digits --archs cnn --seeds 0 1 2
    python benchmarks/accuracy.py --sizes 100 200 400 all           # the few-labels curve
    python benchmarks/accuracy.py --sizes 50 200 --compare-scratch --plot docs/base_curve.png  # the base model's worth
    python benchmarks/accuracy.py --zero-shot                       # the base model and ddddocr, no training
    python benchmarks/accuracy.py --quick                           # smoke run on generated captchas
    python benchmarks/accuracy.py --archs crnn --train-args="--ema 0.99"   # a non-default recipe
    python benchmarks/accuracy.py ... --markdown docs/results.md    # also write the table there
    python benchmarks/accuracy.py ... --errors errors/              # and pictures of the misread test images

For each seed the dataset is split once: 20% is held out as the test split that training never
touches; the training images (all, or the first N of a seeded shuffle) are trained on with
default flags, which hold out their own 10% for picking the best epoch. The table gives
whole-captcha accuracy mean and worst over seeds, per-position and character accuracy (means),
the mean accuracy of the int8 ONNX export (calibrated on the training images; needs onnx and
onnxruntime), training wall time and model size, and the confidence calibration on the test
split: expected calibration error at temperature 1 and at the temperature training stored, and
at the stored accept threshold the share of test captchas accepted and the accuracy on those.
The base model's zero-shot reading of the same test splits (no training), and ddddocr's if it is
installed, are added, both restricted to the dataset's alphabet (the base model also to its label
length, where the labels have one).
"""
from __future__ import annotations

import argparse
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from functools import partial
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from captcha_recognize.bench import DATASETS, machine, publish, split_files, test_score, true_label

from captcha_recognize.reading.calibration import held_out_report
from captcha_recognize.cli.common import Parser
from captcha_recognize.cli.train import train_config
from captcha_recognize.data.labels import infer_alphabet
from captcha_recognize.data.folders import list_images, load_images
from captcha_recognize.data.arrays import to_arrays
from captcha_recognize.reading.report import contact_sheet
from captcha_recognize.reading.scores import score
from captcha_recognize.reading.inference import all_logits
from captcha_recognize.reading.recognizer import CaptchaRecognizer
from captcha_recognize.reading.spec import BASE_CHECKPOINT
from captcha_recognize.errors import CheckpointError, ConfigError
from captcha_recognize.data.synthetic import generate
from captcha_recognize.training import TrainConfig, TrainResult, train


def int8_score(ckpt: Path, rec: CaptchaRecognizer, train_files: Sequence[Path], test: Sequence[Path]) -> float | None:
    """Whole-captcha test accuracy of the int8 ONNX export calibrated on the training images
    (``torch_model_export.py --int8``), or None without onnx/onnxruntime."""
    try:
        from captcha_recognize.reading.export import calibration_arrays, export_int8
        int8 = export_int8(ckpt, ckpt.with_suffix(".int8.onnx"), calibration_arrays(train_files, rec.preprocess))
    except ImportError:
        return None
    return test_score(CaptchaRecognizer(int8), test)["sequence_accuracy"]


def calibration_score(rec: CaptchaRecognizer, test: Sequence[Path]) -> dict[str, Any]:
    """``held_out_report`` on ``test``: ECE before (temperature 1) and after (the stored temperature),
    share accepted at the stored threshold and accuracy on those."""
    images, ok = load_images(test)
    logits = all_logits(rec.logits, to_arrays(images, rec.preprocess), rec.batch_size)  # (N, T|P, K)
    texts, raw = zip(*rec.read_logits(logits, 1.0)) if len(logits) else ((), ())
    _, calibrated = zip(*rec.read_logits(logits, rec.temperature)) if len(logits) else ((), ())
    return held_out_report(raw, calibrated, [t == true_label(f) for t, f in zip(texts, ok)], rec.threshold)


def hide_names(files: Sequence[Path], folder: Path) -> dict[str, str]:
    """Copy ``files`` into ``folder``, emptied first (another set's images must not stay in the pool),
    under names that are no labels; returns new name -> true label."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    truth = {}
    for i, f in enumerate(files):
        name = f"img{i:05d}{f.suffix}"
        shutil.copyfile(f, folder / name)
        truth[name] = true_label(f)
    return truth


def pseudo_label_report(result: TrainResult, truth: dict[str, str]) -> str:
    """Per self-training round: how many pseudo-labels it trained on and how many were right."""
    parts = []
    for h in result.rounds[1:]:
        right = sum(truth[f] == t for f, t in zip(h["pseudo_files"], h["pseudo_labels"]))
        parts.append(f"round {h['round']} {right}/{h['pseudo']} pseudo-labels right, val {100 * h['val']:.1f}%")
    first = result.rounds[0] if result.rounds else {}
    again = (f"; round 0 trained twice, try {first.get('kept_try')} kept (val {100 * first['again_val']:.1f}% "
             "the second time)" if first.get("tries", 1) > 1 else "")
    return ("; ".join(parts) or "no round beyond the labelled-only one") + again


def run_one(files: Sequence[Path], test: Sequence[Path], cfg: TrainConfig, workdir: Path,
            unlabelled: Sequence[Path] = ()) -> dict[str, Any]:
    """Train ``cfg`` on ``files`` (and ``unlabelled`` with their names hidden); score on ``test``."""
    out = workdir / f"{cfg.arch}-{cfg.seed}-{len(files)}{'-scratch' if cfg.from_scratch else ''}.pth"
    note = ""
    if unlabelled:
        truth = hide_names(unlabelled, workdir / f"unlabelled-{cfg.seed}-{len(files)}")
        cfg = replace(cfg, unlabelled=str(workdir / f"unlabelled-{cfg.seed}-{len(files)}"))
    t0 = time.perf_counter()
    result = train(replace(cfg, data=[str(f) for f in files], out=str(out), plot="none", quiet=True))
    seconds = time.perf_counter() - t0
    if unlabelled:
        note = pseudo_label_report(result, truth)
    rec = CaptchaRecognizer(out)
    s = test_score(rec, test)
    return {**s, "arch": rec.arch, "seconds": seconds, "size_mb": out.stat().st_size / 1e6,
            "int8": int8_score(out, rec, files, test), "note": note, **calibration_score(rec, test)}


def ddddocr_scores(test: Sequence[Path], alphabet: str) -> dict[str, Any] | None:
    try:
        import ddddocr
    except ImportError:
        return None
    ocr = ddddocr.DdddOcr(show_ad=False)
    ocr.set_ranges(alphabet)
    preds = [ocr.classification(f.read_bytes()) for f in test]
    return score(preds, [true_label(f) for f in test])


def base_scores(test: Sequence[Path], alphabet: str, length: int | None) -> dict[str, Any] | None:
    """The base model's zero-shot reading of ``test``, restricted to the dataset's alphabet and, where all its
    labels have one, length (None without a base model)."""
    try:
        rec = CaptchaRecognizer(BASE_CHECKPOINT, alphabet=alphabet, length=length)
    except (CheckpointError, ConfigError):  # no base model, or characters it does not read
        return None
    return {**test_score(rec, test), **calibration_score(rec, test)}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    seq = [r["sequence_accuracy"] for r in runs]
    pos = [statistics.mean(r["position_accuracy"][i] for r in runs) for i in range(len(runs[0]["position_accuracy"]))]
    return {"mean": statistics.mean(seq), "worst": min(seq), "pos": pos,
            "char": statistics.mean(r["character_accuracy"] for r in runs),
            "seconds": statistics.mean(r.get("seconds", 0) for r in runs),
            "size_mb": runs[0].get("size_mb"), "test": runs[0]["n"],
            "int8": statistics.mean(r["int8"] for r in runs) if all(r.get("int8") is not None for r in runs)
            else None, **{k: mean_of(runs, k) for k in CALIBRATION_KEYS}}


CALIBRATION_KEYS = ("ece_before", "ece_after", "accepted_share", "accepted_accuracy")


def mean_of(runs: list[dict[str, Any]], key: str) -> float | None:
    """Mean of ``key`` over the runs that have it (ddddocr has no confidence; nothing accepted has no accuracy)."""
    values = [r[key] for r in runs if r.get(key) is not None]
    return statistics.mean(values) if values else None


def percent(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def format_table(rows: list[tuple[str, str, str, list[int], dict[str, Any]]]) -> str:
    lines = ["| dataset | arch | train images | seeds | test images | whole-captcha acc. mean / worst | "
             "per-position acc. | char. acc. | int8 ONNX acc. mean | train time | model size | "
             "ECE before / after calibration | accepted at threshold | acc. on accepted |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, arch, n, seeds, s in rows:
        pos = " / ".join(f"{p:.3f}" for p in s["pos"])
        t = f"{s['seconds']:.0f} s" if s["seconds"] else "none"
        size = f"{s['size_mb']:.1f} MB" if s["size_mb"] else "pretrained"
        int8 = percent(s["int8"])
        lines.append(f"| {ds} | {arch} | {n} | {','.join(map(str, seeds))} | {s['test']} | "
                     f"{100 * s['mean']:.2f}% / {100 * s['worst']:.2f}% | {pos} | {100 * s['char']:.2f}% | {int8} "
                     f"| {t} | {size} | {percent(s['ece_before'])} / {percent(s['ece_after'])} | "
                     f"{percent(s['accepted_share'])} | {percent(s['accepted_accuracy'])} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Accuracy of the default recipe on real captchas.")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS),
                   help="dataset names under ../shared/data, or folders")
    p.add_argument("--archs", nargs="+", default=["auto"], choices=["auto", "cnn", "crnn"],
                   help="architectures (auto: as training picks it, named in the table)")
    p.add_argument("--sizes", nargs="+", default=["all"], help="training set sizes ('all' or a number)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (split, init, augmentation)")
    p.add_argument("--unlabelled", action="store_true",
                   help="give the rest of each seed's training pool as unlabelled images (names hidden): "
                        "self-training rows")
    p.add_argument("--compare-scratch", action="store_true",
                   help="train each row twice: as the default does (from the base model where it applies) and "
                        "with --from-scratch")
    p.add_argument("--zero-shot", action="store_true",
                   help="only the zero-shot rows (the base model and ddddocr, no training): minutes, not hours")
    p.add_argument("--plot", metavar="PNG", help="also plot whole-captcha accuracy against training images, one "
                                                 "panel per dataset, zero-shot readers at 0")
    p.add_argument("--quick", action="store_true", help="smoke run: generated captchas, 1 seed, 2 epochs")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="extra torch_model_train.py flags to measure instead of the default recipe, "
                        "e.g. --train-args='--ema 0.99'; shown in the arch column")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    p.add_argument("--errors", metavar="DIR", help="write a contact sheet of each run's misread test images to "
                                                   "DIR/<dataset>-<arch>-<train images>-seed<seed>.png "
                                                   "(<dataset>: a folder's own name)")
    return p.parse_args(argv)


def errors_sheet(folder: str, name: str, arch: str, n: int, seed: int) -> Path:
    """Where ``--errors`` puts a run's contact sheet; a dataset given as a folder is named by its last part."""
    return Path(folder) / f"{Path(name).resolve().name}-{arch}-{n}-seed{seed}.png"


def bench_folder(name: str, folder: str, args: argparse.Namespace, base: TrainConfig,
                 workdir: Path) -> list[tuple[str, str, str, list[int], dict[str, Any]]]:
    """Table rows for one dataset: every size and arch over the seeds, then the zero-shot readers'."""
    files = list_images([folder])
    alphabet = infer_alphabet(true_label(f) or "" for f in files)
    rows = []
    for size in [] if args.zero_shot else args.sizes:
        n = None if size == "all" else int(size)
        starts = (False, True) if args.compare_scratch else (False,)  # --from-scratch or not; the CNN always is
        trained_as: set[str] = set()  # the archs the row before trained
        for arch, scratch in ((a, s) for a in args.archs for s in starts):
            if scratch and (arch == "cnn" or trained_as == {"cnn"}):
                continue  # the CNN starts from random weights anyway: the same run again
            runs = []
            for seed in args.seeds:
                train_files, test = split_files(files, seed, n)
                pool = split_files(files, seed, None)[0] if args.unlabelled else []
                chosen = set(train_files)
                rest = [f for f in pool if f not in chosen]
                cfg = replace(base, arch=arch, seed=seed, from_scratch=base.from_scratch or scratch)
                runs.append(run_one(train_files, test, cfg, workdir, rest))
                if args.errors:
                    sheet = errors_sheet(args.errors, name, arch + "-scratch" * scratch, len(train_files), seed)
                    sheet.parent.mkdir(parents=True, exist_ok=True)
                    contact_sheet(runs[-1]["misread"], sheet)
                print(f"  {name} {arch} n={len(train_files)} seed {seed}: "
                      f"{100 * runs[-1]['sequence_accuracy']:.2f}% in {runs[-1]['seconds']:.0f}s; "
                      f"wrong: {' '.join(runs[-1]['wrong']) or 'none'}"
                      + (f"; {runs[-1]['note']}" if runs[-1]["note"] else ""), file=sys.stderr)
            trained_as = {r["arch"] for r in runs}
            shown_arch = f"auto ({'/'.join(sorted(trained_as))})" if arch == "auto" else arch
            label = " ".join(part for part in (shown_arch + (f" + {len(rest)} unlabelled" if args.unlabelled else ""),
                                               args.train_args, "--from-scratch" if scratch else "") if part)
            rows.append((name, label, str(len(train_files)), args.seeds, summarize(runs)))
    tests = [split_files(files, seed, None)[1] for seed in args.seeds]
    lengths = {len(true_label(f) or "") for f in files}
    length = lengths.pop() if len(lengths) == 1 else None
    for label, reader in (("base model (zero-shot)", partial(base_scores, length=length)),
                          ("ddddocr (zero-shot)", ddddocr_scores)):
        runs = [reader(test, alphabet) for test in tests]
        if all(runs):
            rows.append((name, label, "0", args.seeds, summarize(runs)))
    return rows


def plot_rows(rows: list[tuple[str, str, str, list[int], dict[str, Any]]], path: str) -> None:
    """Mean whole-captcha accuracy against training images: a panel per dataset, a line per reader."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    datasets = list(dict.fromkeys(r[0] for r in rows))
    cols = min(4, len(datasets))
    rows_ = -(-len(datasets) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4 * cols, 3.2 * rows_), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        lines: dict[str, list[tuple[int, float]]] = {}
        for name, label, n, _, s in rows:
            if name == ds:
                lines.setdefault(label.split(" (")[0] if n == "0" else label, []).append((int(n), 100 * s["mean"]))
        for label, points in lines.items():
            xs, ys = zip(*sorted(points))
            ax.plot(xs, ys, "o-" if len(points) > 1 else "s", label=label)
        ax.set_title(ds)
        ax.set_xlabel("labelled training images")
        ax.set_ylabel("test accuracy %")
        ax.set_ylim(0, 101)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    extra = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folders = {name: str(DATASETS.get(name, name)) for name in args.datasets}
        if args.quick:
            generate(workdir / "generated", 60, seed=4, show=False)
            folders, args.seeds = {"generated": str(workdir / "generated")}, args.seeds[:1]
            extra = ["--epochs", "2", *extra]
        base = train_config(extra)
        rows = []
        for name, folder in folders.items():
            if not Path(folder).is_dir() or not list_images([folder]):
                print(f"error: no images in {folder}", file=sys.stderr)
                return 1
            rows += bench_folder(name, folder, args, base, workdir)
    if args.plot:
        plot_rows(rows, args.plot)
    return publish(f"{format_table(rows)}\n\n{machine()}", args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())

"""The accept flag on images it never saw: of each set's test answers, how many the threshold accepts,
how many of those are right, and how many of the right answers it lets through; coverage-precision
curves.

Usage:
    python benchmarks/accept.py                                   # every set, 50 / 200 / all labels, seed 0
    python benchmarks/accept.py --datasets percent4-digits --sizes all --seeds 0 1 2
    python benchmarks/accept.py --plot docs/accept_curves.png --markdown docs/results.md

Each model is the one the default training command makes from the set's training split (``--sizes``
labels of its 80%; trained once and kept in ``bench_out/models/``, ``bench.trained_model``). A copy of
it is calibrated again by this code on the validation images its training held out, so that a change
to the confidence or the threshold is measured without training anew; then the 20% test split, never
used for training nor for the threshold, is read. Columns: accuracy, the share of answers accepted,
the accepted answers' accuracy (precision), the share of right answers accepted (recall), the wrong
answers accepted, and the threshold. ``--plot`` draws, per set and label count, precision against
coverage as the threshold falls, with the point where the stored threshold sits.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from captcha_recognize.bench import DATASETS, machine, publish, trained_model, true_label, validation_of
from captcha_recognize.cli.common import Parser
from captcha_recognize.data.arrays import to_arrays
from captcha_recognize.data.folders import load_images
from captcha_recognize.reading.calibration import calibrate_checkpoint
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files

PRECISION, RECALL, FLOOR = 0.995, 0.95, 0.99  # the targets: on sets read at >= 98%, and on every row
GOOD_SET = 0.98


def answers(ckpt: Path, test: Sequence[Path], workdir: Path) -> dict[str, Any]:
    """Calibrate a copy of ``ckpt`` on its validation images, then read ``test``: each answer's
    confidence and whether it is right, and the threshold."""
    files, labels = validation_of(ckpt)
    images, ok = load_images(files)
    labels = [lab for f, lab in zip(files, labels) if f in set(ok)]
    copy = Path(shutil.copy(ckpt, workdir / ckpt.name))
    rec = CaptchaRecognizer(copy)
    cal = calibrate_checkpoint(copy, to_arrays(images, rec.preprocess), labels)
    rec = CaptchaRecognizer(copy)
    results = predict_files(rec, test)
    right = [r["prediction"] == true_label(r["path"]) for r in results]
    return {"confidence": [r["confidence"] for r in results], "right": right,
            "accept": [r["accept"] for r in results], "threshold": rec.threshold, "n_val": cal.n}


def row(name: str, size: str, seed: int, a: dict[str, Any]) -> dict[str, Any]:
    """One table row from ``answers``."""
    n, right = len(a["right"]), sum(a["right"])
    accepted = [ok for ok, acc in zip(a["right"], a["accept"]) if acc]
    return {"dataset": name, "labels": size, "seed": seed, "n": n, "n_val": a["n_val"], "accuracy": right / n,
            "coverage": len(accepted) / n, "precision": sum(accepted) / len(accepted) if accepted else None,
            "recall": sum(accepted) / right if right else None, "wrong_accepted": len(accepted) - sum(accepted),
            "threshold": a["threshold"], "curve": curve(a["confidence"], a["right"])}


def curve(confidence: Sequence[float], right: Sequence[bool]) -> list[tuple[float, float]]:
    """(coverage, precision) as the threshold falls from the most confident answer to the least."""
    pairs = sorted(zip(confidence, right), key=lambda p: -p[0])
    out, ok = [], 0
    for i, (_, r) in enumerate(pairs, 1):
        ok += r
        out.append((i / len(pairs), ok / i))
    return out


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


def format_table(rows: list[dict[str, Any]]) -> str:
    head = ("| dataset | labels | seed | test images | validation images | accuracy | accepted | accepted right "
            "(precision) | right answers accepted (recall) | wrong accepted | threshold |")
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in rows:
        t = r["threshold"]
        threshold = "none" if t is None or t > 1 else f"{t:.4f}"
        lines.append(f"| {r['dataset']} | {r['labels']} | {r['seed']} | {r['n']} | {r['n_val']} | {pct(r['accuracy'])} "
                     f"| {pct(r['coverage'])} | {pct(r['precision'])} | {pct(r['recall'])} | {r['wrong_accepted']} "
                     f"| {threshold} |")
    return "\n".join(lines)


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """Each target with its numbers, met or missed: precision and recall on every row read at
    ``GOOD_SET`` or better, then the precision floor over all rows in one line."""
    out = []
    for r in rows:
        if r["accuracy"] >= GOOD_SET:
            p, c = r["precision"], r["recall"] or 0.0
            precision = "nothing accepted" if p is None else \
                f"precision {pct(p)} (target >= 99.5%: {'met' if p >= PRECISION else 'missed'})"
            out.append(f"- {r['dataset']}, {r['labels']} labels, seed {r['seed']} (read {pct(r['accuracy'])}): "
                       f"{precision}, recall {pct(r['recall'])} (target >= 95%: {'met' if c >= RECALL else 'missed'})")
    low = [r for r in rows if r["precision"] is not None and r["precision"] < FLOOR]
    none = sum(r["precision"] is None for r in rows)
    missed = "; missed: " + ", ".join(f"{r['dataset']} {r['labels']} labels seed {r['seed']} {pct(r['precision'])}"
                                      for r in low) if low else ""
    out.append(f"- accepted answers >= 99% right on every row: met on {len(rows) - len(low)} of {len(rows)} "
               f"({none} accepting nothing){missed}")
    return out


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """Precision against coverage per set (one panel per label count), the stored threshold marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    sizes = list(dict.fromkeys(r["labels"] for r in rows))
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4.2), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for r in (r for r in rows if r["labels"] == size):
            xs, ys = zip(*r["curve"])
            (line,) = ax.plot(xs, ys, label=f"{r['dataset']} s{r['seed']}", linewidth=1.2)
            if r["coverage"]:
                ax.plot([r["coverage"]], [r["precision"]], "o", color=line.get_color())
        ax.axhline(PRECISION, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"{size} labels", xlabel="share of answers accepted", ylabel="accepted answers right",
               ylim=(0.8, 1.002), xlim=(0, 1.01))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="lower left")
    fig.suptitle("Coverage and precision on test splits (dots: the stored threshold)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS), metavar="NAME",
                   help="sets under ../shared/data")
    p.add_argument("--sizes", nargs="+", default=["50", "200", "all"], metavar="N",
                   help="labelled training images ('all': the whole 80%%)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="S", help="splits and training seeds")
    p.add_argument("--plot", metavar="PNG", help="coverage-precision curves")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.datasets:
            if not DATASETS[name].is_dir():
                print(f"  {name}: not under ../shared/data, skipped", file=sys.stderr)
                continue
            for size in args.sizes:
                for seed in args.seeds:
                    ckpt, test = trained_model(name, DATASETS[name], seed, None if size == "all" else int(size))
                    rows.append(row(name, size, seed, answers(ckpt, test, Path(tmp))))
                    print(f"  {name} {size} seed {seed}: read {pct(rows[-1]['accuracy'])}, accepted "
                          f"{pct(rows[-1]['coverage'])}, precision {pct(rows[-1]['precision'])}", file=sys.stderr)
    if args.plot:
        plot(rows, args.plot)
    notes = ["Models: the default training command's, on --sizes labels of each set's training split (cached in "
             "bench_out/models/); calibrated again by this code on the validation images their training held out; "
             "read on the set's 20% test split."]
    shown = f"\n\nCurves: `{args.plot}`.\n\n![coverage and precision]({Path(args.plot).name})" if args.plot else ""
    table = "\n".join([format_table(rows), "", *targets(rows), "", *notes]) + shown + "\n\n" + machine()
    return publish(table, args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())

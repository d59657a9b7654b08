"""Labelling benchmark: what model proposals and their order save a labeller, on real captchas.

Usage:
    python benchmarks/labelling.py                                  # both real sets (long: many trainings)
    python benchmarks/labelling.py --datasets percent4-digits --retrain-every 100 --max-labels 300
    python benchmarks/labelling.py --quick                          # smoke run on generated captchas
    python benchmarks/labelling.py ... --plot docs/labelling_benchmark.png --markdown docs/results.md

A simulated labeller knows each captcha's true text and labels the training part of the split
(``common.split_files``; the 20% test split is never labelled nor trained on), ``--retrain-every``
captchas at a time. It presses Enter (1 key) when the page's proposal is right, else types the
text and Enter (its length + 1 keys). After each batch a model is trained with the default
recipe on everything labelled so far, scored on the test split, and reads the rest of the pool
for the next proposals. Three labellers:

* (a) no model, random order: every captcha typed;
* (b) proposals, random order: the same captchas as (a) in the same order, so the same
  trainings and test accuracies; only the keystrokes differ;
* (c) proposals, least confident first: each batch is the pool's least confident readings.

The table gives keystrokes per labelled captcha, how many captchas were labelled when the test
accuracy first reached ``--target``, and the last test accuracy; the plot the curves.
"""
from __future__ import annotations

import argparse
import os
import random
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

from captcha_recognize.bench import test_score, true_label
from captcha_recognize.bench import DATASETS, machine, publish, split_files

from captcha_recognize.cli.common import Parser, positive_int, probability
from captcha_recognize.cli.train import train_config
from captcha_recognize.training.crossread import train_on
from captcha_recognize.data.labels import infer_alphabet
from captcha_recognize.data.folders import list_images
from captcha_recognize.reading.recognizer import CaptchaRecognizer, predict_files
from captcha_recognize.data.synthetic import generate
from captcha_recognize.training import TrainConfig

ARCH = {"percent4-digits": "cnn", "captcha-images-v2": "crnn"}  # the family that reads each set best
LABELLERS = {"a": "no model, random order", "b": "proposals, random order", "c": "proposals, least confident first"}


def keystrokes(proposal: str | None, truth: str) -> int:
    """Enter when the proposal is right, else the text and Enter."""
    return 1 if proposal == truth else len(truth) + 1


@dataclass
class Run:
    """One labeller's walk through the pool."""
    order: str  # "random" or "uncertain"
    points: list[tuple[int, float]] = field(default_factory=list)  # (labelled, test accuracy) after each training
    keys: list[int] = field(default_factory=list)  # cumulative keystrokes after each label, with proposals
    typed: list[int] = field(default_factory=list)  # cumulative keystrokes after each label, typing everything
    accepted: int = 0


class Trainer:
    """Trainings by the set of files labelled, so labellers that labelled the same captchas share one."""

    def __init__(self, cfg: TrainConfig, test: Sequence[Path], workdir: Path):
        self.cfg, self.test, self.workdir = cfg, test, workdir
        self.done: dict[tuple[str, ...], tuple[CaptchaRecognizer, float]] = {}
        self.seconds = 0.0

    def __call__(self, files: Sequence[Path]) -> tuple[CaptchaRecognizer, float]:
        key = tuple(sorted(str(f) for f in files))
        if key not in self.done:
            out = self.workdir / f"{self.cfg.arch}-{len(self.done)}.pth"
            self.seconds += train_on(files, self.cfg, out)
            rec = CaptchaRecognizer(out)
            self.done[key] = rec, test_score(rec, self.test)["sequence_accuracy"]
        return self.done[key]


def walk(pool: Sequence[Path], order: str, trainer: Trainer, every: int, max_labels: int, seed: int,
         name: str) -> Run:
    """Label up to ``max_labels`` of ``pool``, ``every`` at a time, retraining after each batch."""
    run, rest, labelled = Run(order), list(pool), []
    random.Random(seed).shuffle(rest)
    proposals: dict[Path, tuple[str, float]] = {}
    keys = typed = 0
    t0 = time.perf_counter()
    while rest and len(labelled) < max_labels:
        if order == "uncertain" and proposals:
            rest.sort(key=lambda f: proposals[f][1])  # stable: ties keep the random order
        batch, rest = rest[:min(every, max_labels - len(labelled))], rest[min(every, max_labels - len(labelled)):]
        for f in batch:
            truth, proposal = true_label(f), proposals.get(f, (None, 0.0))[0]
            keys, typed = keys + keystrokes(proposal, truth), typed + keystrokes(None, truth)
            run.keys.append(keys)
            run.typed.append(typed)
            run.accepted += proposal == truth
        labelled += batch
        rec, acc = trainer(labelled)
        run.points.append((len(labelled), acc))
        proposals = {Path(r["path"]): (r["prediction"], r["confidence"]) for r in predict_files(rec, rest)}
        print(f"  {name} {order}: {len(labelled)} labelled, test {100 * acc:.2f}%, "
              f"{keys / len(labelled):.2f} keys per captcha ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return run


def reached(points: Sequence[tuple[int, float]], target: float) -> str:
    """The first number labelled at which the test accuracy reached ``target``."""
    n = next((n for n, acc in points if acc >= target), None)
    if n is not None:
        return str(n)
    best_n, best = max(points, key=lambda p: p[1])
    return f"not reached (best {100 * best:.2f}% at {best_n})"


def rows_for(name: str, arch: str, runs: dict[str, Run], target: float) -> list[str]:
    """Table rows (a), (b), (c) for one dataset."""
    out = []
    for key, run, keys, accepted in (("a", runs["random"], runs["random"].typed, None),
                                     ("b", runs["random"], runs["random"].keys, runs["random"].accepted),
                                     ("c", runs["uncertain"], runs["uncertain"].keys, runs["uncertain"].accepted)):
        n = len(keys)
        acc = "–" if accepted is None else f"{100 * accepted / n:.1f}%"
        out.append(f"| {name} | {arch} | ({key}) {LABELLERS[key]} | {n} | {keys[-1] / n:.2f} | {acc} | "
                   f"{reached(run.points, target)} | {100 * run.points[-1][1]:.2f}% |")
    return out


def plot(curves: dict[str, dict[str, Run]], target: float, path: str) -> None:
    """Per dataset: test accuracy and cumulative keystrokes against captchas labelled."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, len(curves), figsize=(6 * len(curves), 8), squeeze=False)
    for col, (name, runs) in enumerate(curves.items()):
        acc, keys = axes[0][col], axes[1][col]
        for label, run, style in (("(a), (b) random order", runs["random"], "o-"),
                                  ("(c) least confident first", runs["uncertain"], "s--")):
            acc.plot(*zip(*[(n, 100 * a) for n, a in run.points]), style, label=label)
        acc.axhline(100 * target, color="grey", linestyle=":", label=f"{100 * target:.0f}%")
        acc.set(title=name, xlabel="captchas labelled", ylabel="test accuracy (%)")
        for label, series in (("(a) no model", runs["random"].typed), ("(b) proposals, random", runs["random"].keys),
                              ("(c) proposals, least confident first", runs["uncertain"].keys)):
            keys.plot(range(1, len(series) + 1), series, label=label)
        keys.set(xlabel="captchas labelled", ylabel="keystrokes")
        acc.legend()
        keys.legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = Parser(description="Keystrokes and labels needed with and without the labelling "
                                            "page's proposals and order.")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), help="dataset names under ../shared/data")
    p.add_argument("--retrain-every", type=positive_int, default=50, metavar="N", help="captchas per batch")
    p.add_argument("--max-labels", type=positive_int, default=None, metavar="N",
                   help="stop after N labels (default: the whole training part)")
    p.add_argument("--target", type=probability, default=0.98, help="test accuracy to reach")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the random order and training")
    p.add_argument("--train-args", default="", metavar="FLAGS",
                   help="extra torch_model_train.py flags (default: the default recipe)")
    p.add_argument("--plot", default="bench_out/labelling.png", metavar="PNG", help="where the curves go")
    p.add_argument("--quick", action="store_true", help="smoke run: 60 generated captchas, batches of 12, 8 epochs")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    extra = shlex.split(args.train_args)
    with tempfile.TemporaryDirectory() as tmp:
        folders = {name: DATASETS.get(name, Path(name)) for name in args.datasets}
        if args.quick:
            generate(Path(tmp) / "generated", 60, seed=4, show=False)
            folders, args.retrain_every = {"generated": Path(tmp) / "generated"}, 12
            args.max_labels, extra = args.max_labels or 36, ["--epochs", "8", *extra]
        base = train_config(extra)
        rows, curves, seconds = [], {}, 0.0
        for name, folder in folders.items():
            files = list_images([folder]) if Path(folder).is_dir() else []
            if not files:
                print(f"error: no images in {folder}", file=sys.stderr)
                return 1
            pool, test = split_files(files, args.seed, None)
            arch = ARCH.get(name, base.arch)
            cfg = replace(base, arch=arch, seed=args.seed, alphabet=infer_alphabet(true_label(f) or "" for f in files))
            workdir = Path(tmp) / "models" / name
            workdir.mkdir(parents=True)
            trainer = Trainer(cfg, test, workdir)
            curves[name] = {order: walk(pool, order, trainer, args.retrain_every, args.max_labels or len(pool),
                                        args.seed, name) for order in ("random", "uncertain")}
            rows += rows_for(name, arch, curves[name], args.target)
            seconds += trainer.seconds
            print(f"  {name}: {len(trainer.done)} trainings, {trainer.seconds:.0f} s", file=sys.stderr)
        plot(curves, args.target, args.plot)
    head = [f"| dataset | arch | labeller | labelled | keystrokes per captcha | proposals accepted | "
            f"labelled when test accuracy first >= {100 * args.target:.0f}% | last test accuracy |",
            "|---|---|---|---|---|---|---|---|"]
    recipe = f"`{shlex.join(extra)}`" if extra else "default-recipe"
    note = (f"Batches of {args.retrain_every}, a {recipe} training after each ({seconds:.0f} s of training in all); "
            f"test split: 20% of each set, never labelled. Curves: `{args.plot}`.")
    curves_png = f"\n\n![labelling curves]({plot_link(args.plot, args.markdown)})" if args.markdown else ""
    return publish("\n".join(head + rows) + f"\n\n{note}{curves_png}\n\n{machine()}", args.markdown, argv)


def plot_link(plot: str, markdown: str) -> str:
    """The plot's path as a link from the markdown file's folder."""
    return Path(os.path.relpath(Path(plot).resolve(), Path(markdown).resolve().parent)).as_posix()


if __name__ == "__main__":
    sys.exit(main())

"""Training beyond one process: the same flags with 1 and with 2 processes (torchrun, Gloo on the
CPU) reach the same accuracy, as the processes share each step's batch.

Usage:
    python benchmarks/distributed.py                          # percent4-digits, CNN, 1 and 2 processes
    python benchmarks/distributed.py --epochs 10 --quick      # generated captchas, seconds
    python benchmarks/distributed.py --markdown docs/results.md

The real set is split as in ``accuracy.py`` (20% held out, seed 0); each run trains on the rest with
``--arch cnn --device cpu`` (and ``--epochs N`` when given) and the toolkit's other defaults, and is
scored on the held-out images. Its seconds come from the training's own ``done`` event.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from captcha_recognize import CaptchaRecognizer
from captcha_recognize.bench import DATASETS, machine, publish, split_files, test_score
from captcha_recognize.cli.common import Parser, positive_int
from captcha_recognize.data.folders import list_images
from captcha_recognize.data.synthetic import generate
from captcha_recognize.runtime import child_env
from captcha_recognize.training.recipe import process_batch


def train_with(processes: int, data: Path, out: Path, epochs: int | None, seed: int) -> tuple[float, int]:
    """Train with ``processes`` processes; the seconds and epochs the training reported."""
    flags = ["--data", str(data), "--arch", "cnn", *(["--epochs", str(epochs)] if epochs else []), "--device", "cpu",
             "--seed", str(seed),
             "--out", str(out), "--plot", "none", "--show-errors", "0", "--events", str(out.with_suffix(".jsonl"))]
    launcher = [sys.executable, "-m", "captcha_recognize.cli.train"] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "-m",
         "captcha_recognize.cli.train"]
    env = child_env({"TQDM_DISABLE": "1", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))})
    subprocess.run(launcher + flags, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   text=True, timeout=3600)
    events = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    done = next(e for e in events if e["event"] == "done")
    return done["seconds"], done["epochs_trained"]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="percent4-digits", choices=list(DATASETS), help="real set to train on")
    p.add_argument("--epochs", type=positive_int, metavar="N", help="epochs of every run (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of training")
    p.add_argument("--processes", type=positive_int, nargs="+", default=[1, 2], metavar="N",
                   help="process counts to compare")
    p.add_argument("--quick", action="store_true", help="200 generated captchas instead of a real set")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = generate(work / "gen", 200, seed=4, show=False) if args.quick else \
            list_images([DATASETS[args.dataset]])
        name = "generated" if args.quick else args.dataset
        train_files, test = split_files(source, args.seed, None)
        (work / "train").mkdir()
        for f in train_files:
            (work / "train" / f.name).symlink_to(f.resolve())
        rows = ["| dataset | processes | batch per process | epochs | train images | test images | "
                "test accuracy | train time |", "|---|---|---|---|---|---|---|---|"]
        for n in args.processes:
            out = work / f"p{n}" / "model.pth"
            seconds, epochs = train_with(n, work / "train", out, args.epochs, args.seed)
            accuracy = test_score(CaptchaRecognizer(out), test)["sequence_accuracy"]
            print(f"  {n} process(es): {100 * accuracy:.2f}% in {seconds:.0f} s", file=sys.stderr)
            rows.append(f"| {name} | {n} | {process_batch(32, n)} of 32 | {epochs} | {len(train_files)} | "
                        f"{len(test)} | {100 * accuracy:.2f}% | {seconds:.0f} s |")
    given = f"--arch cnn{f' --epochs {args.epochs}' if args.epochs else ''} --device cpu"
    what = (f"`{given}` (other flags at their defaults), seed {args.seed}; "
            "more processes on 2 cores do not train faster here: the table shows that they learn alike")
    return publish("\n".join([what, "", *rows, "", machine()]), args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())

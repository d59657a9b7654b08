"""Training next to other work: how long the same short training takes with the cores free and
with another process keeping one core busy, for OpenMP wait policies and thread counts.

Usage:
    python benchmarks/contention.py                  # 6 epochs on 1000 generated captchas per row
    python benchmarks/contention.py --quick          # one small row each, seconds
    python benchmarks/contention.py --markdown docs/results.md

Each row runs the training command line in a fresh process (the wait policy is read when torch
loads). "automatic" leaves ``OMP_WAIT_POLICY`` unset, so the program chooses (``runtime.py``:
passive when a core is busy as it starts); "libgomp default" sets it empty, so the threads spin a
while before sleeping; the busy process is a bounded pure-Python loop pinned to no core.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from captcha_recognize.bench import machine, publish

from captcha_recognize.cli.common import Parser, positive_int
from captcha_recognize.runtime import child_env
from captcha_recognize.text import plural
from captcha_recognize.data.synthetic import generate

POLICIES = {"automatic (the default)": None, "libgomp default": "", "passive": "PASSIVE", "active": "ACTIVE"}
BUSY = "import time\nt = time.time() + {limit}\nwhile time.time() < t:\n    pass\n"


def timed_training(data: Path, out: Path, epochs: int, policy: str | None, threads: int | None, busy: bool,
                   limit: float) -> float:
    """Seconds per epoch of one CNN training process (``policy`` None: no ``OMP_WAIT_POLICY``); with
    ``busy``, beside a process that spins on one core. Per epoch, from the training's ``done`` event,
    because a run may extend its schedule (validation still improving), and runs that differ only in
    thread count round differently and so may train a different number of epochs."""
    env = child_env({"TQDM_DISABLE": "1"})
    env.pop("OMP_NUM_THREADS", None)
    env.pop("OMP_WAIT_POLICY", None)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    hog = subprocess.Popen([sys.executable, "-c", BUSY.format(limit=limit)]) if busy else None
    try:
        cmd = [sys.executable, "-m", "captcha_recognize.cli.train", "--data", str(data), "--epochs", str(epochs),
               "--arch", "cnn", "--out", str(out), "--plot", "none", "--show-errors", "0", "--events", "-"]
        if threads:
            cmd += ["--threads", str(threads)]
        done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True, timeout=limit)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    summary = next((e for e in events if e["event"] == "done"), None)
    if summary is None:
        raise RuntimeError(f"the training reported no end: {done.stderr[-300:]}")
    return summary["seconds"] / summary["epochs_trained"]


def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=positive_int, default=1000, metavar="N", help="generated captchas to train on")
    p.add_argument("--epochs", type=positive_int, default=6, metavar="N", help="epochs per timed training")
    p.add_argument("--limit", type=float, default=900, metavar="S", help="give up on a row after S seconds")
    p.add_argument("--quick", action="store_true", help="128 images, 2 epochs, three rows")
    p.add_argument("--markdown", metavar="FILE", help="also write the table into FILE (e.g. docs/results.md)")
    args = p.parse_args(argv)
    rows = [(name, policy, threads) for name, policy in POLICIES.items() for threads in (None, 1)]
    if args.quick:
        args.images, args.epochs, rows = 128, 2, rows[0:1] + rows[2:3] + rows[4:5]
    lines = ["| OpenMP wait policy | threads | cores free: s per epoch | one core busy: s per epoch | slowdown |",
             "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        generate(data, args.images, seed=5, show=False)
        # untimed: the first process pays for cold file caches, which no row should carry
        timed_training(data, Path(tmp) / "m.pth", 1, None, None, False, args.limit)
        for name, policy, threads in rows:
            free, busy = (timed_training(data, Path(tmp) / "m.pth", args.epochs, policy, threads, b, args.limit)
                          for b in (False, True))
            print(f"  {name}, threads {threads or 'per core'}: {free:.2f} s per epoch free, {busy:.2f} s busy",
                  file=sys.stderr)
            lines.append(f"| {name} | {threads or f'{os.cpu_count()} (one per core)'} | {free:.2f} | {busy:.2f} | "
                         f"{busy / free:.1f}x |")
    what = (f"{plural(args.epochs, 'epoch')} (planned) on {args.images} generated 50x22 captchas, CNN, default recipe; "
            "seconds per epoch trained, validation included")
    return publish("\n".join([what, "", *lines, "", machine()]), args.markdown, argv)


if __name__ == "__main__":
    sys.exit(main())

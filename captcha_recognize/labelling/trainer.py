"""Training from the labelling page: the training command line in a subprocess, so the page's
server stays responsive, followed through the JSON events it writes (never its printed text)."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from captcha_recognize.labelling.files import Conflict
from captcha_recognize.runtime import child_env

TRAIN = "captcha_recognize.cli.train"


@dataclass
class TrainState:
    """A training run as the page shows it."""
    state: Literal["idle", "running", "done", "failed"] = "idle"
    epoch: int | None = None
    epochs: int | None = None
    accuracy: float | None = None  # latest validation sequence accuracy, percent
    message: str = ""


def follow(line: str, s: TrainState) -> None:
    """Update ``s`` from one line of the training's events (JSON); other lines are not events."""
    try:
        event = json.loads(line)
    except ValueError:
        return
    if not isinstance(event, dict):
        return
    kind = event.get("event")
    if kind == "start":
        s.epochs, s.message = event.get("epochs"), "starting"
    elif kind == "epoch":
        s.epoch, s.epochs = event.get("epoch"), event.get("epochs")
        s.message = f"epoch {s.epoch}/{s.epochs}"
        if event.get("sequence_accuracy") is not None:
            s.accuracy = round(100 * event["sequence_accuracy"], 1)
    elif kind == "error":
        s.message = event.get("text", "error")


def train_command(data: Path, ckpt: Path, arch: str, alphabet: str | None, train_args: list[str]) -> list[str]:
    """The training command line on the labelled folder, its events on standard output."""
    return [sys.executable, "-m", TRAIN, "--data", str(data), "--out", str(ckpt), "--arch", arch,
            *(["--alphabet", alphabet] if alphabet else []), *train_args, "--events", "-"]


def last_line(log: Path) -> str:
    """The last line of a training's log, as the page shows a failure that sent no ``error`` event."""
    try:
        lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip()[:300] if lines else "no output"


class Trainer:
    """Runs the training command line in a subprocess, follows its events and, when it succeeds,
    hands the new checkpoint to ``on_done`` (which returns a line to show). Its log (what a person
    reads) goes to ``<checkpoint>.log``."""

    def __init__(self, command: Callable[[Path], list[str]], folder: Path, on_done: Callable[[Path], str]):
        self.command, self.folder, self.on_done = command, folder, on_done
        self.lock = threading.Lock()
        self.now = TrainState()
        self.proc: subprocess.Popen | None = None

    def status(self) -> TrainState:
        with self.lock:
            return TrainState(**vars(self.now))

    def next_checkpoint(self) -> Path:
        """``model-<n>.pth``, one more than the highest ``n`` in the folder."""
        n = 1 + max((int(p.stem.split("-")[1]) for p in self.folder.glob("model-*.pth")
                     if p.stem.split("-")[1].isdigit()), default=0)
        return self.folder / f"model-{n}.pth"

    def start(self) -> Path:
        """Start a run into the next ``model-<n>.pth``; refused while one is running."""
        with self.lock:
            if self.now.state == "running":
                raise Conflict("a training is already running")
            self.folder.mkdir(parents=True, exist_ok=True)
            ckpt = self.next_checkpoint()
            with open(ckpt.with_suffix(".log"), "w") as log:
                self.proc = subprocess.Popen(self.command(ckpt), stdout=subprocess.PIPE, stderr=log, text=True,
                                             env=child_env({"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}))
            self.now = TrainState("running", message="starting")
        threading.Thread(target=self._follow, args=(self.proc, ckpt), daemon=True).start()
        return ckpt

    def _follow(self, proc: subprocess.Popen, ckpt: Path) -> None:
        t0 = time.time()
        for line in proc.stdout:
            with self.lock:
                follow(line, self.now)
        rc = proc.wait()
        if rc == 0 and ckpt.is_file():
            try:
                msg = self.on_done(ckpt)
                state = "done"
            except Exception as e:  # a checkpoint that cannot be loaded is shown, not fatal
                msg, state = f"could not use {ckpt.name}: {e}", "failed"
        else:
            msg = self.now.message if self.now.message.startswith("error") else \
                f"training stopped (exit {rc}): {last_line(ckpt.with_suffix('.log'))}"
            state = "failed"
        with self.lock:
            self.now.state = state
            self.now.message = f"{msg} ({time.time() - t0:.0f} s)"

    def stop(self) -> None:
        """End a running training (the page's server is stopping)."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

"""The best epoch and the save points: the best weights so far are kept in memory, and the best
checkpoint and the resumable latest state are written together, after the first epoch, at the end,
and otherwise at most every ``SAVE_EVERY`` seconds, so the two files always agree."""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from captcha_recognize.reading.checkpoint import atomic_save, checkpoint_dict, load_checkpoint
from captcha_recognize.reading.spec import ModelSpec
from captcha_recognize.training.config import last_path
from captcha_recognize.training.state import ModelState

SAVE_EVERY = 20.0  # seconds between save points: Ctrl-C loses at most this much training


def is_best(s: dict[str, Any], best: dict[str, Any], epoch: int, epochs: int) -> bool:
    """Whether validation scores ``s`` of ``epoch`` make it the best epoch so far.

    Ties go to the later epoch: small validation splits tie often, and later weights have
    had more steps at a lower learning rate. For the same reason the second half of the
    schedule starts afresh: a lucky early epoch on a small validation split must not win
    over the annealed weights.
    """
    if epoch == epochs // 2 + 1:
        return True
    return s["sequence_accuracy"] > best["sequence_accuracy"] or (
        s["sequence_accuracy"] == best["sequence_accuracy"]
        and s["character_accuracy"] >= best.get("character_accuracy", -1))


class BestSaver:
    """Picks the best epoch (``is_best``) and writes the save points of one run to ``out`` (the best
    epoch's weights, as when that epoch ended) and ``<out>_last.pth`` (the latest state, to resume).
    Only the main process writes."""

    def __init__(self, out: str, model_args: dict[str, Any], spec: ModelSpec, writes: bool = True):
        self.out, self.model_args, self.spec, self.writes = out, model_args, spec, writes
        self.best: dict[str, Any] = {"sequence_accuracy": -1.0}  # the best epoch's validation scores
        self.best_state: dict[str, torch.Tensor] | None = None  # its weights
        self.saved = False  # a checkpoint of this run exists
        self.saved_at = 0.0  # when the last save point was written (time.time())
        self.saved_epoch = 0  # the epoch it was written after
        self.unsaved = False  # a new best epoch since then, kept in ``best_state`` only

    def observe(self, epoch: int, scores: dict[str, Any] | None, planned: int, weights: torch.nn.Module) -> bool:
        """Whether ``epoch`` with validation ``scores`` (None: no validation split, every epoch is the
        best) is the best so far; if so its ``weights`` are kept."""
        if scores is not None and not is_best(scores, self.best, epoch, planned):
            return False
        self.best = {"epoch": epoch, **(scores or {"sequence_accuracy": 0.0})}
        self.best_state = copy.deepcopy(weights.state_dict())
        return True

    def resumed(self, resume: dict[str, Any]) -> None:
        """Continue the save points of a resumed run: its best so far, and the best checkpoint's weights."""
        self.best = resume["best"]
        if self.writes and self.out and Path(self.out).is_file():
            self.best_state = load_checkpoint(self.out)["model"]
        self.saved, self.saved_at, self.saved_epoch = True, time.time(), resume["epoch"]

    def save_point(self, epoch: int, improved: bool, state: ModelState, record: dict[str, Any],
                   final: bool = False) -> None:
        """Write both files if it is time: after the first epoch, when ``final``, and otherwise at most
        every ``SAVE_EVERY`` seconds. ``record`` is what the checkpoints store of the run (config,
        history, image count, plan); a new best between save points waits in memory."""
        if not self.writes:
            return
        self.unsaved = self.unsaved or improved
        if final and self.saved_epoch == epoch:
            return
        if self.saved and not final and time.time() - self.saved_at < SAVE_EVERY:
            return
        payload = {**record, "epoch": epoch, "best": self.best}
        if self.unsaved and self.best_state is not None:
            best = self.best["epoch"]  # the best file as it was when that epoch ended
            history = [h for h in record["history"] if h["epoch"] <= best]
            atomic_save(checkpoint_dict(self.best_state, self.model_args, self.spec,
                                        **{**payload, "epoch": best, "history": history},
                                        optimizer=None, scheduler=None, ema=None), self.out)
        atomic_save(checkpoint_dict(state.raw_model.state_dict(), self.model_args, self.spec, **payload,
                                    **state.resume_state()), last_path(self.out))
        self.saved, self.saved_at, self.saved_epoch, self.unsaved = True, time.time(), epoch, False

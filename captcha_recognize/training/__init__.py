"""Training, callable from Python without building argv strings:

    from captcha_recognize.training import TrainConfig, train
    result = train(TrainConfig(data=["../my_captchas"], arch="crnn", out="runs/my.pth"))
    print(result.best["sequence_accuracy"], result.out)

The modules, in the order a run uses them: ``config`` (``TrainConfig``, its checks and outputs),
``resume``, ``task`` (the data, the architecture, the alphabet and input), ``base`` (starting from
the base model's weights), ``recipe`` (the defaults the data decides), ``state`` (model, optimizer,
weight average, batches), ``loop`` (one epoch), ``plan`` (how long, decided after each epoch),
``saver`` (the best epoch and the save points), ``supervised`` (a whole run), ``selftrain``
(``--unlabelled``), ``crossread`` (each image read by a model that never saw it), ``events`` (what a
run reports), ``distributed`` (torchrun).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from captcha_recognize.errors import UserError
from captcha_recognize.runtime import check_writable
from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.distributed import ProcessGroup
from captcha_recognize.training.events import Events, Listener, json_lines
from captcha_recognize.training.result import TrainResult
from captcha_recognize.training.selftrain import self_train
from captcha_recognize.training.supervised import train_supervised

__all__ = ["TrainConfig", "TrainResult", "train"]


def train(cfg: TrainConfig, on_event: Listener | None = None) -> TrainResult:
    """Train per ``cfg`` (which is not changed): on labelled images, or with ``cfg.unlabelled`` also
    on pseudo-labels of unlabelled ones. ``on_event`` gets every event of the run (see ``events``);
    ``cfg.events`` writes them as JSON lines (a file written anew, or ``-``). Writes checkpoints on rank 0.

    Raises ``ConfigError`` for settings that cannot work (before anything is read), ``DataError``
    for unusable data, ``CheckpointError`` for a bad checkpoint and ``OutputBusy`` when another
    run is writing the same ``out``; the events get an ``error`` event first.
    """
    with run_events(cfg, on_event) as events:
        try:
            if cfg.unlabelled:
                return self_train(cfg, events)
            return train_supervised(cfg, events)
        except UserError as e:
            events.quiet()("error", f"error: {e}")  # the caller says it on the console: said once
            raise


@contextlib.contextmanager
def run_events(cfg: TrainConfig, on_event: Listener | None = None) -> Iterator[Events]:
    """The run's events: its log on the console (standard error when the events take standard
    output, none when ``cfg.quiet``), JSON lines to ``cfg.events``, and ``on_event``."""
    listeners = [on_event] if on_event is not None else []
    console = None if cfg.quiet else sys.stderr if cfg.events == "-" else sys.stdout
    with contextlib.ExitStack() as stack:
        if not ProcessGroup().main:  # under torchrun the first process speaks for all
            yield Events(None)
            return
        if cfg.events == "-":
            listeners.append(json_lines(sys.stdout))
        elif cfg.events:
            check_writable("events", cfg.events)
            listeners.append(json_lines(stack.enter_context(open(cfg.events, "w", encoding="utf-8"))))
        yield Events(console, listeners)

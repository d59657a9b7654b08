"""What a training run reports, as events: ``start``, ``epoch``, ``note``, ``trained``, ``calibrated``,
``mistakes``, then ``done`` (or ``interrupted``; self-training adds ``rounds_done``). Each is a dict with its
``event`` name, its numbers and its ``text``, the line a person reads. The console prints the text;
``--events FILE`` (or ``on_event`` from Python) gets the whole event: the labelling page and the
benchmarks read those, never the printed text.
"""
from __future__ import annotations

import sys
from typing import IO, Any, Callable

from captcha_recognize.text import json_text

Event = dict[str, Any]
Listener = Callable[[Event], None]


class Events:
    """Where one run's events go: ``console`` (a stream for their text, None: not shown) and ``listeners``."""

    def __init__(self, console: IO[str] | None | str = "stdout", listeners: list[Listener] | None = None):
        self.console = sys.stdout if console == "stdout" else console  # the stream of now, not of the import
        self.listeners = list(listeners or [])

    def __call__(self, event: str, text: str = "", **fields: Any) -> None:
        """Report ``event`` with its ``text`` and ``fields``."""
        if self.console is not None and text:
            print(text, file=self.console, flush=True)
        for listen in self.listeners:
            listen({"event": event, **fields, "text": text})

    def note(self, text: str) -> None:
        """A line for the person training: a choice the run made, a warning, what changed."""
        self("note", text)

    def quiet(self) -> Events:
        """The same listeners, nothing on the console."""
        return Events(None, self.listeners)


def json_lines(stream: IO[str]) -> Listener:
    """A listener writing each event as one line of JSON to ``stream``."""
    def write(event: Event) -> None:
        stream.write(json_text(event, ensure_ascii=False, default=str) + "\n")
        stream.flush()
    return write


def silent() -> Events:
    """Events that go nowhere (the other processes of a distributed run)."""
    return Events(None)

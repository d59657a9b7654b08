"""Start-up concerns of every entry point: settings for running next to other work (imported
before torch), a console that never fails on odd text, and checks of settings and output paths
that fail in one line before any work.

OpenMP worker threads normally spin while they wait for work. When another process holds a core,
the spinning threads and that process take turns, and every parallel region waits for a thread
that is not running: training slowed about tenfold. Waiting passively (sleeping) costs little when
the cores are free and avoids that. A user's own ``OMP_WAIT_POLICY`` is kept.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def safe_console() -> None:
    """Text that the console's encoding cannot show (a non-UTF-8 file name, Cyrillic labels on an
    ASCII console) is written as escapes instead of stopping the program."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def default_threads() -> int:
    """Threads for the CPU: ``OMP_NUM_THREADS`` when set, else one per core this process may use."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ConfigError(ValueError):
    """A setting that cannot work, found before anything is loaded: ``--flag: what is wrong``, exit 2."""

    def __init__(self, name: str, message: str):
        super().__init__(f"--{name.replace('_', '-')}: {message}")


def check_writable(name: str, path: str | os.PathLike) -> None:
    """Create ``path``'s folder, and fail now rather than after the work if it cannot be written."""
    folder = Path(path).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(name, f"cannot create the folder {folder}: {e.strerror}") from None
    try:  # a real write: permission bits say nothing to root, nor about read-only or special file systems
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise ConfigError(name, f"{path} cannot be written: {folder} is not writable ({e.strerror})") from None
    if Path(path).is_dir():
        raise ConfigError(name, f"{path} is a folder; give a file name")

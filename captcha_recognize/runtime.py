"""Start-up concerns of every entry point: settings for running next to other work (imported
before torch), a console that never fails on odd text, and checks of settings and output paths
that fail in one line before any work.

OpenMP worker threads normally spin while they wait for work. When another process holds a core,
the spinning threads and that process take turns, and every parallel region waits for a thread
that is not running: training slowed several times over. Waiting passively (sleeping) avoids
that but costs about a third when the cores are free, so threads wait passively only when other
work keeps at least half a core busy as the program starts. A user's own ``OMP_WAIT_POLICY`` is kept.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

from captcha_recognize.errors import ConfigError

BUSY_CORES = 0.5  # busy cores at start from which OpenMP threads wait passively


def busy_cores(interval: float = 0.2) -> float:
    """How many of the cores this process may use were busy over the next ``interval`` seconds
    (``/proc/stat``; this process sleeps meanwhile); 0 where that cannot be read."""
    try:
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
    except AttributeError:  # not on Linux
        return 0.0

    def ticks() -> tuple[int, int]:
        total = idle = 0
        with open("/proc/stat") as f:
            for line in f:
                name, *v = line.split()
                if name in mine:  # user nice system idle iowait irq softirq steal
                    total, idle = total + sum(map(int, v[:8])), idle + int(v[3]) + int(v[4])
        return total, idle
    try:
        total0, idle0 = ticks()
        time.sleep(interval)
        total1, idle1 = ticks()
    except (OSError, ValueError, IndexError):
        return 0.0
    total = total1 - total0
    return 0.0 if total <= 0 else (1 - (idle1 - idle0) / total) * len(mine)

if "OMP_WAIT_POLICY" not in os.environ and busy_cores() >= BUSY_CORES:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


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
        raise ConfigError(name, f"{path} cannot be written: writing in {folder} failed ({e.strerror})") from None
    if Path(path).is_dir():
        raise ConfigError(name, f"{path} is a folder; give a file name")


def check_port(host: str, port: int) -> None:
    """Fail now, in one line, if ``host:port`` cannot be listened on (another server has it),
    rather than after the start-up message. Binds as uvicorn does (``SO_REUSEADDR``)."""
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ConfigError("port", f"cannot listen on {host}:{port}: {e.strerror}; give another --port") from None


def interrupt_on_sigterm() -> None:
    """``kill``, ``timeout`` or a job scheduler stop the program as Ctrl-C does: it reports what was
    saved and exits 130, rather than dying without a word."""
    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)


PACKAGE_PARENT = Path(__file__).resolve().parent.parent  # the folder that holds this package


def child_env(settings: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a child Python process (``python -m captcha_recognize...``) that imports this
    package from where this process found it, installed or in a checkout: that folder is put first on
    the child's PYTHONPATH."""
    env = {**os.environ, **(settings or {})}
    if (PACKAGE_PARENT / "pyproject.toml").is_file():  # a checkout; an installed package is found anyway
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PACKAGE_PARENT), env.get("PYTHONPATH", "")) if p)
    return env

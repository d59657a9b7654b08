"""A server in a child process, for the tests and the benchmarks: ``torch_model_serve.py``'s command
line on a free 127.0.0.1 port, stopped on exit."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from captcha_recognize.runtime import child_env

SERVE = "captcha_recognize.cli.serve"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def server_process(args: Sequence[str], log_path: str | os.PathLike, env: dict[str, str] | None = None,
                   timeout: float = 120) -> Iterator[tuple[str, subprocess.Popen]]:
    """The serve command line ``ARGS`` in a child process on a free 127.0.0.1 port (output in
    ``log_path``); yields its URL once ``/healthz`` answers, and stops it on exit (tests, benchmarks)."""
    port = free_port()
    with open(log_path, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", SERVE, "--host", "127.0.0.1", "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, env=child_env(env))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {Path(log_path).read_text()[-2000:]}")
            time.sleep(0.1)
        yield url, proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False

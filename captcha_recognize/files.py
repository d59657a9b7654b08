"""Writing files so that nothing is ever half-written: a temporary file beside the target, then
``os.replace``; and a lock beside an output that two runs must not write at once."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from captcha_recognize.errors import OutputBusy


def temporary_name(path: Path) -> Path:
    """Where ``atomic_write`` writes before the rename: a hidden file next to ``path``."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` into a temporary file next to ``path``, then rename it into place: a crash
    leaves the old file or the new one, never half of one. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """``text`` (UTF-8) written atomically to ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed write of ``path`` left behind (call while holding
    ``output_lock(path)``, so no live run is writing them); returns what was removed."""
    path = Path(path)
    stale = list(path.parent.glob(f".{glob_escape(path.name)}.tmp*")) if path.parent.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold a lock next to ``path`` while a run writes it: a second run that would write the same
    file refuses at its start instead of overwriting the first one's checkpoints. The lock is the
    system's (``flock`` on Unix, ``LockFileEx`` on Windows, through ``filelock``), so a run that dies
    releases it; a note beside it names the holder's process."""
    path = Path(path)
    lock, note = path.with_name(f".{path.name}.lock"), path.with_name(f".{path.name}.lock.pid")
    lock.parent.mkdir(parents=True, exist_ok=True)
    held = FileLock(lock)
    try:
        held.acquire(timeout=0)
    except Timeout:
        who = note.read_text().strip() if note.is_file() else ""
        raise OutputBusy(f"another training{f' (pid {who})' if who else ''} is writing {path}: wait for it "
                         "to finish or give another --out") from None
    try:
        note.write_text(str(os.getpid()))
        yield
    finally:
        note.unlink(missing_ok=True)
        held.release()

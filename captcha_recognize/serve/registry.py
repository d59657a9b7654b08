"""The served models by name, each reloaded when its file is replaced on disk; a file that does
not load leaves the old model serving."""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from captcha_recognize.errors import CheckpointError
from captcha_recognize.reading.recognizer import ACCEPTS_NOTHING, CaptchaRecognizer
from captcha_recognize.serve.requests import RequestError
from captcha_recognize.serve.schemas import InputSize, ModelInfo

log = logging.getLogger("captcha.serve")


def file_stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is rewritten or renamed over: inode, modification time, size."""
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


@dataclass(frozen=True)
class Loaded:
    """One model as it is served now; replaced whole on reload."""
    name: str
    path: Path
    recognizer: CaptchaRecognizer
    stamp: tuple[int, int, int]
    loaded_at: float
    error: str | None = None  # the last failed reload
    failed_stamp: tuple[int, int, int] | None = None

    def info(self) -> ModelInfo:
        rec = self.recognizer
        return ModelInfo(name=self.name, arch=rec.arch, alphabet=rec.converter.alphabet,
                         length=rec.converter.fixed_length,
                         input=InputSize(**asdict(rec.preprocess)), format=self.path.suffix.lstrip(".") or "pth",
                         temperature=rec.temperature, threshold=rec.threshold,
                         loaded_at=datetime.fromtimestamp(self.loaded_at, timezone.utc).isoformat(
                             timespec="milliseconds"),
                         error=self.error)


class Registry:
    """The served models by name. Names are only keys: a request never names a file."""

    def __init__(self, paths: dict[str, str], device: str = "cpu"):
        self.paths = {name: Path(p) for name, p in paths.items()}
        self.device = device
        self.models: dict[str, Loaded] = {}

    @property
    def default(self) -> str:
        return next(iter(self.paths))

    def load(self, name: str) -> Loaded:
        path = self.paths[name]
        stamp = file_stamp(path)  # before reading: a newer file seen later is loaded again
        rec = CaptchaRecognizer(path, device=self.device, workers=1)
        if rec.accepts_nothing:
            log.warning("model %s %s; every answer comes with accept false", name, ACCEPTS_NOTHING)
        return Loaded(name, path, rec, stamp, time.time())

    def load_all(self) -> None:
        """Load every model; raises ``CheckpointError`` naming the first that does not load."""
        for name in self.paths:
            self.models[name] = self.load(name)

    def get(self, name: str | None) -> Loaded:
        name = self.default if name is None else name
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r} (served: {', '.join(self.models)})")
        return self.models[name]

    def check(self) -> list[str]:
        """Reload the models whose files changed; returns their names. A file that is missing or
        does not load leaves the old model serving, with the error logged and kept in ``error``."""
        reloaded = []
        for name, old in list(self.models.items()):
            try:
                stamp = file_stamp(old.path)
            except OSError as e:
                stamp, failure = None, f"{old.path} is missing ({type(e).__name__})"
            else:
                if stamp in (old.stamp, old.failed_stamp):
                    continue
                try:
                    self.models[name] = self.load(name)
                    reloaded.append(name)
                    log.info("reloaded model %s from %s", name, old.path)
                    continue
                except (CheckpointError, OSError) as e:
                    failure = f"reload of {old.path} failed: {e}"
            if old.error != failure:
                log.error("model %s: %s; the previous version keeps serving", name, failure)
            self.models[name] = Loaded(old.name, old.path, old.recognizer, old.stamp, old.loaded_at, failure,
                                       stamp)
        return reloaded

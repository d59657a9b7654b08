"""``ServeConfig``: everything a service process is a function of (the flags of ``torch_model_serve.py``),
and how ``--workers N`` hands it to each worker process."""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field

from captcha_recognize.data.images import MAX_PIXELS
from captcha_recognize.errors import ConfigError
from captcha_recognize.reading.spec import DEFAULT_CHECKPOINT

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
CONFIG_ENV = "CAPTCHA_SERVE_CONFIG"  # how ``--workers N`` hands the configuration to each worker process


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the folder where worker processes keep their metrics, read at import


@dataclass
class ServeConfig:
    """Everything a service process is a function of (the flags of ``torch_model_serve.py``)."""
    models: dict[str, str] = field(default_factory=lambda: {"default": DEFAULT_CHECKPOINT})
    max_batch: int = 64  # images in a model's forward passes at once
    max_wait_ms: float = 5.0  # how long a forward pass waits at most for more requests to join it
    max_bytes: int = 1_000_000  # request body limit
    max_pixels: int = MAX_PIXELS  # per image, from its header, before decoding
    max_images: int = 64  # per request
    api_key_env: str | None = None  # environment variable holding the API key
    reload_interval: float = 1.0  # seconds between checks of the model files
    body_timeout: float = 10.0  # seconds a request body may stop arriving before it is answered 408
    shutdown_timeout: float = 10.0  # seconds a stopping server waits for requests in flight
    device: str = "cpu"
    passes: int | None = None  # forward passes at once per model, one core each; None: forward_passes()
    workers: int = 1  # server processes sharing the machine's cores

    def __post_init__(self) -> None:
        bad = [n for n in self.models if not MODEL_NAME.match(n)]
        if bad:
            raise ValueError(f"model name {bad[0]!r} must be 1-64 letters, digits, '_', '.' or '-'")
        if not self.models:
            raise ValueError("no model to serve")

    def api_key(self) -> str | None:
        """The key read from ``api_key_env``; a set but empty or missing variable is an error."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "")
        if not key:
            raise ConfigError("api_key_env", f"the environment variable {self.api_key_env} is not set or empty")
        return key

    def forward_passes(self) -> int:
        """``passes``, or by default one per core this process has: cores / ``workers`` (1 on a GPU)."""
        if self.passes:
            return self.passes
        return max(1, (os.cpu_count() or 1) // self.workers) if self.device == "cpu" else 1


def config_to_env(cfg: ServeConfig) -> str:
    """The configuration as the text of ``CAPTCHA_SERVE_CONFIG``."""
    return json.dumps(asdict(cfg))


def config_from_env() -> ServeConfig:
    """The configuration ``config_to_env`` handed to a worker process in ``CAPTCHA_SERVE_CONFIG``."""
    return ServeConfig(**json.loads(os.environ[CONFIG_ENV]))

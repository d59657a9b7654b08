"""The device a model runs on."""
from __future__ import annotations

import torch

from captcha_recognize.errors import ConfigError


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: cuda if present, then mps, else cpu. A device that is not there is a ``ConfigError``."""
    mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "mps" if mps else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError("device", f"expected auto, cpu, cuda, cuda:N or mps, got {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda was asked for, but PyTorch sees no CUDA GPU here: use --device cpu (or auto)")
    if device.type == "mps" and not mps:
        raise ConfigError("device", "mps was asked for, but it is not available here: use --device cpu (or auto)")
    return device

"""What ``train`` returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captcha_recognize.training.config import TrainConfig
from captcha_recognize.training.task import Split


@dataclass
class TrainResult:
    """What ``train`` returns: the best epoch's validation scores and where it was saved."""
    out: Path
    best: dict[str, Any]
    config: TrainConfig  # with every default resolved
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)  # self-training: one summary per round
    validation: Split | None = None  # the validation images, as uint8 arrays at the input size
    advice: str = ""  # a warning that the best model still reads no better than guessing, and what to do

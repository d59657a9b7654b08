"""Before a run reads any data: its settings checked, a resumed run's own settings taken, and its
outputs checked (writable, and not among the captchas)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from captcha_recognize.errors import ConfigError
from captcha_recognize.runtime import check_writable
from captcha_recognize.training.config import TrainConfig, check_config, input_defaults, plot_path
from captcha_recognize.training.resume import with_resumed


def prepare(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """Check the settings and resolve the inputs and outputs, before any data is read."""
    check_config(cfg)
    cfg, resume = with_resumed(cfg)
    cfg = input_defaults(cfg)
    check_config(cfg)  # a resumed run's own settings too
    check_writable("out", cfg.out)
    if cfg.plot not in ("auto", "none"):
        check_writable("plot", cfg.plot)
    check_outside_data(cfg)
    return cfg, resume


def check_outside_data(cfg: TrainConfig) -> None:
    """The curve PNG may not land among the captchas: the next run on that folder would read it as one
    (``model.png``, labelled "model")."""
    plot = plot_path(cfg)
    if plot is None:
        return
    where = Path(plot).resolve().parent
    for folder in map(Path, cfg.data or []):
        folder = folder.resolve()
        if folder.is_dir() and (where == folder or (cfg.recursive and folder in where.parents)):
            flag = "plot" if cfg.plot != "auto" else "out"
            raise ConfigError(flag, f"{plot} would be written among the captchas of {folder}, where the next run "
                                    "reads it as one: write outside the data folder (or --plot none)")

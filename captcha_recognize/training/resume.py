"""Continuing an interrupted run (``--resume``): its stored configuration under this call's explicit
settings, with every conflict refused, and the cycles of its plan."""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

from captcha_recognize.errors import CheckpointError, ConfigError
from captcha_recognize.reading.checkpoint import load_checkpoint
from captcha_recognize.text import plural
from captcha_recognize.training.config import NOT_RESUMED, RESUME_CONFLICTS, TrainConfig, input_defaults, last_path
from captcha_recognize.training.plan import Cycle


def stored_config(ckpt: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's training config as ``TrainConfig`` fields (older checkpoints' spellings too)."""
    config = dict(ckpt.get("config") or {})
    if "no_augment" in config:
        config["augment"] = not config.pop("no_augment")
    if isinstance(config.get("img_size"), str):
        config["img_size"] = tuple(int(v) for v in config["img_size"].lower().split("x"))
    if isinstance(config.get("img_size"), list):
        config["img_size"] = tuple(config["img_size"])
    names = {f.name for f in fields(TrainConfig)} - NOT_RESUMED
    return {k: v for k, v in config.items() if k in names}


def same_setting(name: str, a: Any, b: Any) -> bool:
    """Whether two values of a setting mean the same (data folders compare as resolved paths)."""
    if name == "synthetic":
        return (a or 0) == (b or 0)
    if name == "arch" and "auto" in (a, b):  # auto picked the run's architecture: it picks it again
        return True
    if name in ("data", "label_map") and a is not None and b is not None:
        paths = lambda v: [Path(x).resolve() for x in ([v] if isinstance(v, str) else v)]  # noqa: E731
        return paths(a) == paths(b)
    return a == b


def with_resumed(cfg: TrainConfig) -> tuple[TrainConfig, dict[str, Any] | None]:
    """For a resumed run: the checkpoint, and the config it stored with this call's explicit
    settings (``TrainConfig.explicit``) on top; an explicit setting that would change what the run
    learns is refused."""
    if cfg.resume is None:
        return cfg, None
    out = input_defaults(cfg).out
    path = cfg.resume or last_path(out)
    if cfg.resume == "" and not Path(path).is_file() and Path(out).is_file():
        raise CheckpointError(f"no resume file at {path}: a run that finished leaves none; start a new run from "
                              f"its weights with --init-from {out}")
    ckpt = load_checkpoint(path)
    if ckpt.get("optimizer") is None:
        last = last_path(path)
        hint = f"resume from {last}" if Path(last).is_file() else f"its run's {Path(last).name} is gone"
        raise CheckpointError(f"{path} is a best checkpoint without optimizer state, which a run cannot continue "
                              f"from: {hint}, or start a new run from its weights with --init-from {path}")
    stored, merged = stored_config(ckpt), {}
    for f in fields(TrainConfig):
        mine, explicit = getattr(cfg, f.name), cfg.explicit(f.name)
        theirs = stored.get(f.name, f.default)
        if explicit and f.name in RESUME_CONFLICTS and f.name in stored and not same_setting(f.name, mine, theirs):
            raise ConfigError(f.name, f"{mine} differs from the resumed run's {theirs} ({path}): leave it out to "
                                      "continue that run, or give another --out to start a new one")
        keep_mine = explicit and not (f.name == "arch" and mine == "auto")  # auto: the run's own pick
        merged[f.name] = mine if keep_mine or f.name not in stored else theirs
    merged["resume"] = str(path)
    if merged["epochs"] is not None and merged["epochs"] < ckpt["epoch"]:
        raise ConfigError("epochs", f"the resumed run has already trained {plural(ckpt['epoch'], 'epoch')}: give "
                                    f"at least {ckpt['epoch']}, more to extend it")
    return TrainConfig(**merged), ckpt


def resumed_cycles(resume: dict[str, Any], epochs: int, lr: float) -> tuple[list[Cycle], int, int]:
    """The resumed run's cycles with the last one ending at ``epochs`` (more to extend it), its planned
    length, and how many epochs the last cycle had when it was saved. Checkpoints written before plans
    were stored had one cycle of their configured epochs."""
    stored = resume["config"]["epochs"]
    plan = resume.get("schedule") or {"plan_epochs": stored, "segments": [[1, stored, lr]]}
    cycles = [Cycle(*c) for c in plan["segments"]]
    planned, saved_length = plan["plan_epochs"], cycles[-1].epochs
    if epochs != cycles[-1].last:
        cycles[-1].epochs = epochs - cycles[-1].first + 1
        if len(cycles) == 1:
            planned = epochs
    return cycles, planned, saved_length

"""``TrainConfig``: everything a training run is a function of. Each field carries its own help
text, group and rule, so that the command line is built from the fields (``cli.train``) and a
setting given from Python is checked like a flag (``check_config``).

``None`` means "pick the default from the data" (``recipe.resolve_defaults``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable

from captcha_recognize import checks
from captcha_recognize.checks import Rule
from captcha_recognize.data.augment import MAX_WARP, STROKES, WARP
from captcha_recognize.data.folders import IMAGE_EXTS
from captcha_recognize.data.labels import CASES
from captcha_recognize.data.preprocess import MIN_SIDE
from captcha_recognize.device import pick_device
from captcha_recognize.errors import ConfigError
from captcha_recognize.reading.calibration import TARGET_PRECISION, min_evidence
from captcha_recognize.reading.spec import DEFAULT_CHECKPOINT
from captcha_recognize.training import plan
from captcha_recognize.training.recipe import (CNN_PER_CHARACTER, DEFAULT_LR, DEFAULT_STEPS, EMA_DECAY, FIRST_LR,
                                               MIN_EPOCHS, ROUND_EMA, SELF_TRAINING_BUDGET, SMALL_SET, SMALL_SET_STEPS,
                                               SYNTHETIC_MIX)

GROUPS = {  # the --help sections, everyday ones first
    "data": "what to learn from",
    "output": "where it goes",
    "model": "the model and its input",
    "recipe": "how long and how it trains",
    "hardware": "where it runs",
}
WARP_RULE = Rule(lambda v: 0 <= v <= MAX_WARP, f"a number in [0, {MAX_WARP:g}]")


def option(default: Any, group: str, help: str, parse: Callable[[str], Any] | None = str, rule: Rule | None = None,
           **flag: Any) -> Any:
    """A ``TrainConfig`` field that is also a flag: ``parse`` turns the flag's text into the value
    (None: a switch), ``rule`` says which values work, ``flag`` holds argparse's ``choices``,
    ``metavar``, ``nargs``, ``const`` or ``name``."""
    return field(default=default, metadata={"group": group, "help": help, "parse": parse, "rule": rule, **flag})


def internal(default: Any, help: str) -> Any:
    """A ``TrainConfig`` field that Python callers set and the command line does not offer."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Everything a training run is a function of; the flags of ``torch_model_train.py`` are these fields."""
    # data
    data: list[str] | None = option(
        None, "data", "folders/files of labelled images (default: train_images, unless --synthetic alone)",
        nargs="+", metavar="DIR")
    alphabet: str | None = option(None, "data", "characters to recognise (default: those in the labels)")
    case: str | None = option(
        None, "data", "letter case of the labels: keep both cases apart, or fold them (default: keep, with a "
        "warning when the labels hold both cases of a letter)", choices=CASES)
    label_map: str | None = option(
        None, "data", "file of 'FROM TO' character pairs, one per line, for characters a file name cannot hold "
        "(e.g. 'x *': 3x4.png is the captcha 3*4)", metavar="FILE")
    recursive: bool = option(False, "data", "also read the images in the data folders' subfolders", parse=None)
    val_split: float = option(0.1, "data", "fraction held out for validation", float, checks.FRACTION)
    unlabelled: str | None = option(
        None, "data", "folder of unlabelled captchas (any file names) to learn from as well: self-training with "
        "stable pseudo-labels", metavar="DIR")
    rounds: int = option(3, "data", "with --unlabelled: self-training rounds after the labelled-only one", int,
                         checks.POSITIVE_INT, metavar="N")
    synthetic: int | None = option(
        None, "data", "add N freshly generated captchas per epoch (needs --alphabet and --length when there is no "
        f"--data) (default: 0; with --unlabelled, {SYNTHETIC_MIX} in a labelled-only CRNN round under {SMALL_SET} "
        "labels of one length)", int, checks.NON_NEGATIVE_INT, metavar="N")
    # output
    out: str | None = option(
        None, "output", f"best checkpoint path (default: {DEFAULT_CHECKPOINT} for train_images, else "
        "runs/<data folder>/model.pth)", metavar="PTH")
    resume: str | None = option(None, "output", "continue from CKPT (default: <out>_last.pth)", nargs="?", const="",
                                metavar="CKPT")
    init_from: str | None = option(
        None, "output", "start from these weights (fine-tuning), keeping the checkpoint's architecture, alphabet, "
        "length, input and label rules", metavar="CKPT")
    from_scratch: bool = option(
        False, "output", "start from random weights, not from the base model (by default a CRNN starts from the "
        "base model's weights, trained on captchas of many looks)", parse=None)
    plot: str = option("auto", "output", "training-curve PNG (auto: <out>.png; 'none' to skip)", metavar="PNG")
    show_errors: int = option(10, "output", "validation mistakes shown at the end", int, checks.NON_NEGATIVE_INT,
                              metavar="N")
    events: str | None = option(
        None, "output", "also write the run's events (start, each epoch, notes, the end) as JSON lines to FILE; "
        "'-': standard output, and the log goes to standard error", metavar="FILE")
    target_precision: float = option(
        TARGET_PRECISION, "output", "accept threshold stored in the checkpoint: the lowest calibrated confidence at "
        "which the validation answers vouch for P right (no more errors than such a reader typically makes, and "
        f"enough right ones to show better than 95% or P if lower: {min_evidence()} at the default)", float,
        checks.OPEN_PROBABILITY, metavar="P")
    # model
    arch: str = option(
        "auto", "model", "model family; auto: the cnn when every label has one length, the characters sit at "
        f"fixed, evenly spaced places and there are {CNN_PER_CHARACTER} labels or more per character (fewer: the "
        "crnn from the base model), else the crnn (training says which and why)", choices=("auto", "cnn", "crnn"))
    length: int | None = option(None, "model", "label length for the CNN (default: from the labels)", int,
                                checks.POSITIVE_INT, metavar="N")
    img_size: tuple[int, int] | None = option(
        None, "model", "model input size (default: most common image size, scaled to at most 24 high for the cnn, "
        "32 for the crnn (64 for images at least 60 high), and to at least 16 high and wide)", checks.image_size,
        metavar="WxH")
    channels: int | None = option(None, "model", "3 = colour, 1 = grey (default: cnn 3, crnn 1)", int, choices=(1, 3))
    ink: str = option(
        "auto", "model", "auto: when the captchas are drawn in a few flat colours, the crnn also reads one mask per "
        "colour they share (where it was drawn), so lines of another shade stay apart from the text; off: the "
        "image only", choices=("auto", "off"))
    # recipe
    epochs: int | None = option(
        None, "recipe", f"passes over the data (default: enough for about {DEFAULT_STEPS} optimizer steps, "
        f"{SMALL_SET_STEPS} under {SMALL_SET} training images; at least {MIN_EPOCHS} epochs)", int,
        checks.POSITIVE_INT, metavar="N")
    time_budget: float | None = option(
        None, "recipe", "longest the training may take; the schedule is fitted to it, grown to fill it (up to "
        f"{plan.STRETCH_MAX}x the plan) when validation reads under {100 * plan.STRETCH_BELOW:g}% halfway, and "
        f"extended while validation improves (default: {plan.BUDGET_PER_1000 / 60:g} min per 1000 training images, "
        f"at least {plan.MIN_BUDGET / 60:g}; with --unlabelled, for all rounds together, at least "
        f"{SELF_TRAINING_BUDGET / 60:g}; printed at start)", float, checks.POSITIVE, metavar="MINUTES")
    batch_size: int = option(32, "recipe", "images per step; under torchrun the processes share them (each takes "
                             "its part), so --epochs, --batch-size and --lr mean the same with any number of processes",
                             int, checks.POSITIVE_INT, metavar="N")
    lr: float | None = option(
        None, "recipe", f"peak learning rate of the one-cycle schedule (default: {DEFAULT_LR['cnn']:g} for the CNN, "
        f"{DEFAULT_LR['crnn']:g} for the CRNN; with --unlabelled, {FIRST_LR:g} in a labelled-only CRNN round under "
        f"{SMALL_SET} labels)", float, checks.POSITIVE)
    weight_decay: float = option(1e-4, "recipe", "AdamW weight decay", float, checks.NON_NEGATIVE)
    label_smoothing: float = option(0.1, "recipe", "CNN cross-entropy label smoothing", float, checks.FRACTION)
    clip_grad: float = option(5.0, "recipe", "gradient-norm clipping (0: off)", float, checks.NON_NEGATIVE)
    ema: float | None = option(
        None, "recipe", "decay of the exponential moving average of the weights that is validated and saved, 0: "
        f"off, save the raw weights (default: {EMA_DECAY['crnn']:g} for the CRNN, {EMA_DECAY['cnn']:g} for the CNN "
        f"and {ROUND_EMA:g} for --unlabelled's rounds)", float, checks.FRACTION)
    splice: float | None = option(
        None, "recipe", "probability per image of swapping its text after a character boundary, with the label, for "
        "another image's (default: 0.5 for the cnn; for the crnn 0.5 on fixed-pitch text, else 0)", float,
        checks.PROBABILITY, metavar="P")
    strokes: str = option(
        "arcs", "recipe", "noise strokes drawn across training images: 'arcs' = two, lines or circle arcs 1-2 pixels "
        "wide; 'line' = one straight line (widths per 32 rows of input: twice as wide at 64)", choices=tuple(STROKES))
    warp: float | None = option(
        None, "recipe", "bend training images by a smooth random displacement of up to F times the input height, "
        f"0: off (default: {WARP['crnn']:g} for the CRNN, {WARP['cnn']:g} for the CNN)", float, WARP_RULE, metavar="F")
    augment: bool = option(True, "recipe", "train without augmentation", parse=None, name="--no-augment")
    seed: int = option(0, "recipe", "seed for the split, initialisation and augmentation", int)
    # hardware
    device: str = option("auto", "hardware", "auto (cuda, mps, cpu), cpu, cuda, mps")
    threads: int | None = option(None, "hardware", "CPU threads (default: one per core, or OMP_NUM_THREADS)", int,
                                 checks.POSITIVE_INT, metavar="N")
    workers: int | None = option(
        None, "hardware", "DataLoader worker processes (default: up to 4, one per core, on CUDA or with "
        "--synthetic; else 0)", int, checks.NON_NEGATIVE_INT, metavar="N")
    amp: str = option("auto", "hardware", "mixed precision on CUDA (auto: bf16 if supported, else fp16); CPU runs "
                      "fp32", choices=("auto", "bf16", "fp16", "off"))
    # from Python only
    split_seed: int | None = internal(None, "seed of the validation split; None: seed")
    stretch: bool = internal(True, "a run far from reading its validation images halfway through grows to fill "
                                   "the budget")
    quiet: bool = internal(False, "no progress bars and no log on the console (events still go to --events)")
    given: tuple[str, ...] = internal((), "the settings the caller gave explicitly (the command line's flags): a "
                                          "resumed run checks them against the run it continues")

    @property
    def val_seed(self) -> int:
        """The seed of the validation split."""
        return self.seed if self.split_seed is None else self.split_seed

    def explicit(self, name: str) -> bool:
        """Whether the caller gave setting ``name``: named in ``given``, or unlike its default."""
        f = next(f for f in fields(self) if f.name == name)
        return name in self.given or getattr(self, name) != f.default


def flags() -> list[Any]:
    """The fields that are flags, in their order."""
    return [f for f in fields(TrainConfig) if "group" in f.metadata]


# flags that define what a run learns: resuming with another value is an error, not a silent switch
RESUME_CONFLICTS = ("data", "arch", "alphabet", "case", "label_map", "recursive", "length", "img_size", "channels",
                    "ink", "seed", "split_seed", "val_split", "batch_size", "synthetic")
# how this call runs and reports, not what the run is: a resumed run takes them from the call
NOT_RESUMED = {"resume", "init_from", "from_scratch", "device", "workers", "threads", "amp", "show_errors", "plot",
               "quiet", "time_budget", "events", "given"}
MIN_SIZE = {"cnn": (MIN_SIDE, MIN_SIDE), "crnn": (8, MIN_SIDE), "auto": (8, MIN_SIDE)}  # smallest (width, height)


def check_config(cfg: TrainConfig) -> None:
    """Settings that cannot work whatever the data, checked before anything is loaded."""
    for f in flags():
        value, rule, choices = getattr(cfg, f.name), f.metadata["rule"], f.metadata.get("choices")
        if value is not None and rule is not None and not rule.ok(value):
            raise ConfigError(f.name, f"must be {rule.what}, got {value!r}")
        if value is not None and choices is not None and value not in choices:
            raise ConfigError(f.name, f"must be one of {', '.join(map(str, choices))}, got {value!r}")
    if cfg.img_size:
        (w, h), (mw, mh) = cfg.img_size, MIN_SIZE[cfg.arch]
        if w < mw or h < mh:
            family = "smaller family" if cfg.arch == "auto" else cfg.arch
            raise ConfigError("img_size", f"must be at least {mw}x{mh} for the {family}, got {w}x{h}")
    if cfg.alphabet is not None and (not cfg.alphabet or len(set(cfg.alphabet)) != len(cfg.alphabet)):
        raise ConfigError("alphabet", f"must list each character once, got {cfg.alphabet!r}")
    pick_device(cfg.device)


# -------------------------------------------------------------------------- outputs

def last_path(out: str | os.PathLike) -> str:
    """Path of the resumable latest-state checkpoint that goes with ``out``."""
    root, ext = os.path.splitext(os.fspath(out))
    return f"{root}_last{ext or '.pth'}"


def default_out(data: list[str]) -> str:
    """``captcha_recognize.pth`` (the shipped demo model) for ``train_images/`` and generated
    captchas; for any other data ``runs/<its folder name>/model.pth``, so it is never overwritten."""
    if not data or [Path(d).resolve() for d in data] == [Path("train_images").resolve()]:
        return DEFAULT_CHECKPOINT
    first = Path(data[0]).resolve()
    name = first.parent.name if first.suffix.lower() in IMAGE_EXTS else first.name
    return str(Path("runs") / (name + ("-and-more" if len(data) > 1 else "")) / "model.pth")


def input_defaults(cfg: TrainConfig) -> TrainConfig:
    """The data folder, output and resume file when not given."""
    data = cfg.data
    if data is None:
        data = [] if cfg.synthetic and cfg.alphabet and cfg.length else ["train_images"]
    out = cfg.out or default_out(data)
    return replace(cfg, data=list(data), out=out, resume=last_path(out) if cfg.resume == "" else cfg.resume)


def plot_path(cfg: TrainConfig) -> str | None:
    """Where the training-curve PNG goes, None for no plot."""
    if cfg.plot == "none":
        return None
    return f"{os.path.splitext(cfg.out)[0]}.png" if cfg.plot == "auto" else cfg.plot

"""What the scripts' command lines share: the ``--help`` formatter, flag types that reject a bad
value with one line naming the flag and its valid range (exit 2, before any work), and the
training flags (used by ``torch_model_train.py`` and by ``--train-args`` elsewhere)."""
from __future__ import annotations

import argparse
from typing import Callable, NoReturn, Sequence

from augment import MAX_WARP, STROKES, WARP
from dataset import CASES
from schedule import BUDGET_PER_1000, MIN_BUDGET, STRETCH_BELOW, STRETCH_MAX
from selftrain import FIRST_LR, MIN_BUDGET as SELF_TRAINING_BUDGET, ROUND_EMA, SYNTHETIC_MIX
from calibration import TARGET_PRECISION
from training import DEFAULT_LR, DEFAULT_STEPS, EMA_DECAY, MIN_EPOCHS, SMALL_SET, SMALL_SET_STEPS, TrainConfig


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, unless its help text already says it or it is None or ''."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        return text if "(default" in text or action.default in (None, "") else super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every script's parser: ``--help`` shows the defaults (``HelpFormatter``), and a flag that
    cannot work is one line naming it, exit 2, rather than the usage block first."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**{"formatter_class": HelpFormatter, **kwargs})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def _number(kind: type, ok: Callable[[float], bool], what: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = _number(float, lambda v: 0 <= v <= 1, "a number in [0, 1]")
open_probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def image_size(text: str) -> tuple[int, int]:
    """``50x22`` -> ``(50, 22)`` (width, height)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 50x22 (width x height), not {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1x1, got {text}")
    return w, h


def train_parser() -> argparse.ArgumentParser:
    """The flags of ``torch_model_train.py``; ``--train-args`` of check_labels.py and the
    benchmarks takes the same ones."""
    p = Parser(description="Train a captcha recognizer on file-name-labelled images.")
    p.add_argument("--data", nargs="+", default=None, metavar="DIR",
                   help="folders/files of labelled images (default: train_images, unless --synthetic alone)")
    p.add_argument("--arch", choices=["auto", "cnn", "crnn"], default="auto",
                   help="model family; auto: the cnn when every label has one length and the characters sit at "
                        "fixed, evenly spaced places, else the crnn (training says which and why)")
    p.add_argument("--epochs", type=positive_int, default=None, metavar="N",
                   help=f"passes over the data (default: enough for about {DEFAULT_STEPS} optimizer steps, "
                        f"{SMALL_SET_STEPS} under {SMALL_SET} training images; at least {MIN_EPOCHS} epochs)")
    p.add_argument("--batch-size", type=positive_int, default=32, metavar="N",
                   help="images per step (per process under torchrun)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help=f"peak learning rate of the one-cycle schedule (default: {DEFAULT_LR['cnn']:g} for the "
                        f"CNN, {DEFAULT_LR['crnn']:g} for the CRNN; with --unlabelled, {FIRST_LR:g} in a "
                        f"labelled-only CRNN round under {SMALL_SET} labels)")
    p.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    p.add_argument("--label-smoothing", type=fraction, default=0.1, help="CNN cross-entropy label smoothing")
    p.add_argument("--clip-grad", type=non_negative_float, default=5.0, help="gradient-norm clipping (0: off)")
    p.add_argument("--ema", type=fraction, default=None,
                   help="decay of the exponential moving average of the weights that is validated and "
                        f"saved, 0: off, save the raw weights (default: {EMA_DECAY['crnn']:g} for the CRNN, "
                        f"{EMA_DECAY['cnn']:g} for the CNN and {ROUND_EMA:g} for --unlabelled's rounds)")
    p.add_argument("--val-split", type=fraction, default=0.1, help="fraction held out for validation")
    p.add_argument("--seed", type=int, default=0, help="seed for the split, initialisation and augmentation")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, mps")
    p.add_argument("--out", metavar="PTH",
                   help="best checkpoint path (default: captcha_recognize.pth for train_images, else "
                        "runs/<data folder>/model.pth)")
    p.add_argument("--resume", nargs="?", const="", default=None, metavar="CKPT",
                   help="continue from CKPT (default: <out>_last.pth)")
    p.add_argument("--init-from", metavar="CKPT", help="start from these weights (fine-tuning), keeping the checkpoint's "
                   "architecture, alphabet, length, input and label rules")
    p.add_argument("--alphabet", help="characters to recognise (default: those in the labels)")
    p.add_argument("--case", choices=CASES,
                   help="letter case of the labels: keep both cases apart, or fold them (default: keep, with "
                        "a warning when the labels hold both cases of a letter)")
    p.add_argument("--label-map", metavar="FILE",
                   help="file of 'FROM TO' character pairs, one per line, for characters a file name cannot "
                        "hold (e.g. 'x *': 3x4.png is the captcha 3*4)")
    p.add_argument("--recursive", action="store_true", help="also read the images in the data folders' subfolders")
    p.add_argument("--length", type=positive_int, metavar="N", help="label length for the CNN (default: from the labels)")
    p.add_argument("--img-size", type=image_size, metavar="WxH",
                   help="model input size (default: most common image size, scaled to at most 24 high for the "
                        "cnn, 32 for the crnn (64 for images at least 60 high), and to at least 16 high and wide)")
    p.add_argument("--channels", type=int, choices=[1, 3], help="3 = colour, 1 = grey (default: cnn 3, crnn 1)")
    p.add_argument("--ink", choices=["auto", "off"], default="auto",
                   help="auto: when the captchas are drawn in a few flat colours, the crnn also reads one mask "
                        "per colour they share (where it was drawn), so lines of another shade stay apart from "
                        "the text; off: the image only (default: %(default)s)")
    p.add_argument("--splice", type=probability, default=None, metavar="P",
                   help="probability per image of swapping its text after a character boundary, with "
                        "the label, for another image's (default: 0.5 for the cnn; for the crnn 0.5 on "
                        "fixed-pitch text, else 0)")
    p.add_argument("--strokes", choices=list(STROKES), default="arcs",
                   help="noise strokes drawn across training images: 'arcs' = two, lines or circle arcs "
                        "1-2 pixels wide; 'line' = one straight line (widths per 32 rows of input: twice "
                        "as wide at 64)")
    p.add_argument("--warp", type=_number(float, lambda v: 0 <= v <= MAX_WARP, f"a number in [0, {MAX_WARP:g}]"),
                   default=None,
                   metavar="F", help="bend training images by a smooth random displacement of up to F times the "
                                     f"input height, 0: off (default: {WARP['crnn']:g} for the CRNN, "
                                     f"{WARP['cnn']:g} for the CNN)")
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--synthetic", type=non_negative_int, default=None, metavar="N",
                   help="add N freshly generated captchas per epoch (needs --alphabet and --length "
                        f"when there is no --data) (default: 0; with --unlabelled, {SYNTHETIC_MIX} in a labelled-only "
                        f"CRNN round under {SMALL_SET} labels of one length)")
    p.add_argument("--unlabelled", metavar="DIR",
                   help="folder of unlabelled captchas (any file names) to learn from as well: self-training "
                        "with stable pseudo-labels")
    p.add_argument("--rounds", type=positive_int, default=3, metavar="N",
                   help="with --unlabelled: self-training rounds after the labelled-only one")
    p.add_argument("--time-budget", type=positive_float, metavar="MINUTES",
                   help="longest the training may take; the schedule is fitted to it, grown to fill it (up to "
                        f"{STRETCH_MAX}x the plan) when validation reads under {100 * STRETCH_BELOW:g}%% halfway, "
                        f"and extended while validation improves (default: {BUDGET_PER_1000 / 60:g} min per 1000 "
                        "training images, at least "
                        f"{MIN_BUDGET / 60:g}; with --unlabelled, for all rounds together, at least "
                        f"{SELF_TRAINING_BUDGET / 60:g}; printed at start)")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="CPU threads (default: one per core, or OMP_NUM_THREADS)")
    p.add_argument("--workers", type=non_negative_int, default=None, metavar="N",
                   help="DataLoader worker processes (default: up to 4, one per core, on CUDA or with "
                        "--synthetic; else 0)")
    p.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto",
                   help="mixed precision on CUDA (auto: bf16 if supported, else fp16); CPU runs fp32")
    p.add_argument("--show-errors", type=non_negative_int, default=10, metavar="N",
                   help="validation mistakes shown at the end")
    p.add_argument("--plot", default="auto", metavar="PNG", help="training-curve PNG (auto: <out>.png; 'none' to skip)")
    p.add_argument("--target-precision", type=open_probability, default=TARGET_PRECISION, metavar="P",
                   help="accept threshold stored in the checkpoint: the lowest calibrated confidence at which "
                        "validation answers are at least P right")
    return p


def train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """Training flags as a ``TrainConfig`` (``--no-augment`` is ``augment=False``)."""
    args = train_parser().parse_args(argv)
    fields = {k: v for k, v in vars(args).items() if k != "no_augment"}
    return TrainConfig(**fields, augment=not args.no_augment)

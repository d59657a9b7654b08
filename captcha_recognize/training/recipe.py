"""The recipe's numbers and the defaults it picks from the data: learning rate, weight average,
warp, splice probability and number of epochs (``resolve_defaults``). The reasons for each number
are in docs/design.md."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

import torch

from captcha_recognize.data.augment import WARP, evenly_spaced

if TYPE_CHECKING:
    from captcha_recognize.training.config import TrainConfig

DEFAULT_STEPS = 1600  # optimizer steps of a default run
SMALL_SET, SMALL_SET_STEPS = 150, 2400  # sets under SMALL_SET training images get more steps
MIN_EPOCHS = 32  # large sets still get this many passes
SPLICE = 0.5  # --splice default where it applies (default_splice)
FEW_IMAGES = 100  # below this many training images, training warns
CNN_PER_CHARACTER = 12  # labels per alphabet character under which auto starts the base CRNN, not the CNN
DEFAULT_LR = {"cnn": 3e-3, "crnn": 1e-3}  # peak of the one-cycle schedule per family
EMA_DECAY = {"cnn": 0.0, "crnn": 0.999}  # default decay of the saved weight average per family

# self-training (--unlabelled)
SELF_TRAINING_BUDGET = 10 * 60.0  # default budget of all the rounds together, at least
SYNTHETIC_MIX = 200  # generated captchas per epoch in a labelled-only CRNN round under SMALL_SET labels
FIRST_LR = 3e-3  # peak learning rate of a labelled-only CRNN round under SMALL_SET labels, unless --lr says
ROUND_EMA = 0.0  # weight-average decay of every self-training round unless --ema says (off: the trained weights)


def process_batch(batch_size: int, world: int) -> int:
    """Each process's share of ``--batch-size``: a step reads about ``batch_size`` images however many
    processes share it, so ``--epochs``, ``--batch-size`` and ``--lr`` mean the same under torchrun."""
    return -(-batch_size // world)


def default_splice(arch: str, spread: torch.Tensor | None, span: tuple[float, float] | None,
                   labels: Sequence[str]) -> float:
    """``--splice`` default: ``SPLICE`` for the CNN, whose position heads otherwise memorise small
    sets; for the CRNN only on fixed-pitch text (``evenly_spaced``), where the cuts fall between
    characters rather than through them."""
    if arch == "cnn":
        return SPLICE
    lengths = {len(s) for s in labels}
    if spread is None or span is None or len(lengths) != 1:
        return 0.0
    return SPLICE if evenly_spaced(spread, span, lengths.pop()) else 0.0


def default_epochs(n_train: int, batch: int, world: int, target_steps: int | None = None) -> int:
    """Enough epochs for about ``target_steps`` optimizer steps (default: ``DEFAULT_STEPS``,
    ``SMALL_SET_STEPS`` under ``SMALL_SET`` training images), and at least ``MIN_EPOCHS``:
    small training sets get more epochs, so at least as many steps as large ones."""
    if target_steps is None:
        target_steps = SMALL_SET_STEPS if n_train < SMALL_SET else DEFAULT_STEPS
    steps = max(1, math.ceil(n_train / (batch * world)))  # optimizer steps per epoch
    return max(MIN_EPOCHS, math.ceil(target_steps / steps))


def resolve_defaults(cfg: TrainConfig, init: dict[str, Any] | None, resume: dict[str, Any] | None,
                     n_train: int, labels: Sequence[str], spread: torch.Tensor | None,
                     span: tuple[float, float] | None, world: int) -> TrainConfig:
    """The recipe's data-dependent defaults: architecture (a checkpoint's own when starting from
    one), learning rate, warp, weight average, splice probability and number of epochs."""
    arch = init["model_args"]["arch"] if init is not None else cfg.arch
    splice_p = cfg.splice if cfg.splice is not None else default_splice(arch, spread, span, labels)
    epochs = cfg.epochs
    if epochs is None:
        per_process = process_batch(cfg.batch_size, world)
        epochs = resume["config"]["epochs"] if resume else default_epochs(n_train, per_process, world)
    warp = cfg.warp if cfg.warp is not None else WARP[arch]
    ema = cfg.ema if cfg.ema is not None else EMA_DECAY[arch]
    return replace(cfg, arch=arch, lr=cfg.lr or DEFAULT_LR[arch], warp=warp, ema=ema, splice=splice_p, epochs=epochs)

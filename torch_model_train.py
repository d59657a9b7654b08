"""Train a captcha model on a folder of images whose file names are their labels.

Usage:
    python torch_model_train.py                                  # CNN on train_images/
    python torch_model_train.py --data ../my_captchas --arch crnn
    python torch_model_train.py --resume                         # continue an interrupted run
    python torch_model_train.py --synthetic 20000 --alphabet 0123456789 --length 4
    torchrun --nproc_per_node=4 torch_model_train.py --data big_folder/   # DDP

Writes the best checkpoint (by validation sequence accuracy) to ``--out`` and, while
training, the latest state to ``<out>_last.pth`` for ``--resume``; both atomically.
From Python: ``from training import TrainConfig, train``.
"""
from __future__ import annotations

import sys
from typing import Sequence

import runtime  # noqa: F401  before anything loads torch: it sets how OpenMP threads wait
from checkpoint import CheckpointError, OutputBusy
from cli import train_config
from dataset import DataError
from runtime import ConfigError
from training import train


def main(argv: Sequence[str] | None = None) -> int:
    runtime.safe_console()
    runtime.interrupt_on_sigterm()
    cfg = train_config(argv)
    try:
        train(cfg)
    except (DataError, CheckpointError, ConfigError, OutputBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (CheckpointError, ConfigError)) else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

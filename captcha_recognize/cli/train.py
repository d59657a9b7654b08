"""The ``torch_model_train.py`` command line (console script ``captcha-train``): its flags are built from
``TrainConfig``'s fields."""
from __future__ import annotations

import argparse
import shlex
import sys
from typing import Sequence

from captcha_recognize import runtime
from captcha_recognize.cli.common import Parser, flag_type, run
from captcha_recognize.errors import ConfigError
from captcha_recognize.training import TrainConfig, train
from captcha_recognize.training.config import GROUPS, flags


def train_parser(suppress: bool = False) -> argparse.ArgumentParser:
    """The training flags, built from ``TrainConfig``'s fields in their groups (``--help`` lists the
    everyday ones first); ``suppress``: flags not given are left out of the result, which tells which
    ones were."""
    p = Parser(description="Train a captcha recognizer on file-name-labelled images.",
               argument_default=argparse.SUPPRESS if suppress else None)
    groups = {name: p.add_argument_group(f"{name}: {title}") for name, title in GROUPS.items()}
    for f in flags():
        m = f.metadata
        name = m.get("name", "--" + f.name.replace("_", "-"))
        kwargs = {"dest": f.name, "help": m["help"].replace("%", "%%")}
        if not suppress:
            kwargs["default"] = f.default
        if m["parse"] is None:  # a switch: --recursive sets True, --no-augment sets False
            kwargs["action"] = "store_false" if name.startswith("--no-") else "store_true"
        else:
            kwargs["type"] = flag_type(m["parse"], m["rule"])
            kwargs.update({k: m[k] for k in ("choices", "metavar", "nargs", "const") if k in m})
        groups[m["group"]].add_argument(name, **kwargs)
    return p


def train_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The training flags as a ``TrainConfig`` that knows which of them were given (``given``)."""
    args = train_parser().parse_args(argv)
    given = tuple(vars(train_parser(suppress=True).parse_args(argv)))
    return TrainConfig(**vars(args), given=given)


def train_args(flags: str) -> tuple[TrainConfig, list[str]]:
    """``--train-args`` of the other tools: training flags in one string, as a config and as a list."""
    try:
        argv = shlex.split(flags)
    except ValueError as e:
        raise ConfigError("train_args", f"{e} in {flags!r}") from None
    return train_config(argv), argv


def main(argv: Sequence[str] | None = None) -> int:
    runtime.interrupt_on_sigterm()

    def work() -> int:
        train(train_config(argv))
        return 0
    return run(work)


if __name__ == "__main__":
    sys.exit(main())

"""What every command line shares: the ``--help`` formatter, flag types that reject a bad value with
one line naming the flag (exit 2, before any work), and ``run``, the one exit-status table."""
from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn

from captcha_recognize import checks, runtime
from captcha_recognize.checks import Rule
from captcha_recognize.errors import EXIT_INTERRUPTED, EXIT_UNREADABLE, UserError


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows each flag's default, unless its help text already says it, it is None or '',
    or the flag is a switch."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, "", argparse.SUPPRESS) or action.nargs == 0:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """Every script's parser: ``--help`` shows the defaults (``HelpFormatter``), and a flag that
    cannot work is one line naming it, exit 2, rather than the usage block first."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**{"formatter_class": HelpFormatter, **kwargs})

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (--help lists the flags)\n")


def flag_type(parse: Callable[[str], Any], rule: Rule | None = None) -> Callable[[str], Any]:
    """An argparse type: ``parse`` the text, then check it against ``rule``; a bad value is an
    ``ArgumentTypeError`` saying what was expected."""
    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as e:
            expected = rule.what if rule else {"int": "an integer", "float": "a number"}.get(parse.__name__, "a value")
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}" if parse in (int, float)
                                             else str(e)) from None
        if rule is not None and not rule.ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule.what}, got {text}")
        return value
    convert.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its messages
    return convert


positive_int = flag_type(int, checks.POSITIVE_INT)
non_negative_int = flag_type(int, checks.NON_NEGATIVE_INT)
positive_float = flag_type(float, checks.POSITIVE)
non_negative_float = flag_type(float, checks.NON_NEGATIVE)
probability = flag_type(float, checks.PROBABILITY)
port = flag_type(int, checks.PORT)
image_size = flag_type(checks.image_size)


def run(work: Callable[[], int]) -> int:
    """A command line's work under the one exit-status table: 0 done; ``UserError``s one line on
    standard error and their status (2: a flag or checkpoint that cannot work; 1: nothing could be
    read, or the output is busy); 130 on Ctrl-C (or SIGTERM, where the command turns it into one);
    a closed output pipe (``| head``) ends quietly with 1."""
    runtime.safe_console()
    try:
        return work()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that stopped early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EXIT_UNREADABLE

"""The errors a user can cause, each shown as one line, and the exit status of each (one table for
every command line: ``cli.common.run``)."""
from __future__ import annotations

EXIT_OK = 0
EXIT_UNREADABLE = 1  # nothing could be read, or the output is busy
EXIT_USAGE = 2  # a flag or checkpoint that cannot work
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM, as a shell reports SIGINT


class UserError(Exception):
    """An error in what the user gave (not a bug): one line on the console, exit ``status``."""
    status = EXIT_UNREADABLE


class DataError(UserError, ValueError):
    """Bad user data (empty folder, no labelled files, ...)."""
    status = EXIT_UNREADABLE


class OutputBusy(UserError, RuntimeError):
    """Another run is writing the same output."""
    status = EXIT_UNREADABLE


class MissingPackage(UserError, ImportError):
    """A package this feature needs is not installed (the message says which to install)."""
    status = EXIT_UNREADABLE


class Diverged(UserError, ArithmeticError):
    """Training's loss became NaN or infinite: nothing of that epoch is saved."""
    status = EXIT_UNREADABLE


class ConfigError(UserError, ValueError):
    """A setting that cannot work, found before anything is loaded: ``--flag: what is wrong``."""
    status = EXIT_USAGE

    def __init__(self, name: str, message: str):
        super().__init__(f"--{name.replace('_', '-')}: {message}")


class CheckpointError(UserError, RuntimeError):
    """A missing, unreadable, unsafe or incompatible checkpoint."""
    status = EXIT_USAGE

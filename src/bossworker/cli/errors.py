"""The command line's own exceptions and exit codes (the pool's are in
:mod:`bossworker.errors`)."""

from __future__ import annotations

__all__ = [
    "EXIT_FAILED",
    "EXIT_HALTED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_USAGE",
    "OutputError",
    "UsageError",
    "one_line",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_HALTED = 3  # --halt stopped the run
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """A problem with the command line, reported in one line with exit code 2."""


class OutputError(Exception):
    """Writing the output failed; the run cannot go on."""


def one_line(exc: BaseException) -> str:
    """``TypeName: first line of the message`` (or just the type name)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

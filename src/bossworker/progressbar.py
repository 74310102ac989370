"""The one progress-bar helper: a tqdm bar when tqdm is installed (the
optional ``cli`` extra), else None and one hint per process on standard
error.  The streams (``progress=True``: :class:`bossworker.streams.Bar`)
and the ``bossworker`` command (:mod:`bossworker.cli.progress`) both open
their bars here, so both say the same thing when tqdm is missing."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["NO_TQDM_HINT", "open_bar"]

#: What is said, once per process, when a bar was asked for and tqdm is missing.
NO_TQDM_HINT = "bossworker: no progress bar: tqdm is not installed (pip install 'bossworker[cli]')"

_hint_shown = False


def _print_to_stderr(text: str) -> None:
    print(text, file=sys.stderr)


def open_bar(say: Callable[[str], None] = _print_to_stderr, **options: Any) -> Any:
    """A new ``tqdm.tqdm(**options)``; None if tqdm cannot be imported, and
    then :data:`NO_TQDM_HINT` goes to ``say`` (the first time in this
    process only): the work goes on without a bar."""
    global _hint_shown
    try:  # imported by name: tqdm is optional and has no stubs
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        if not _hint_shown:
            _hint_shown = True
            say(NO_TQDM_HINT)
        return None
    return tqdm(**options)

"""The progress bar: tqdm on standard error, when it is a terminal.

The bar counts input lines done (written, or blank and skipped) out of the
input's lines: for a regular file, its exact line count (counted in a
thread of its own, with ``pread``, so the run does not wait; until it is
known the bar shows no total); for a pipe, no total until the input ends.

It is not shown when standard output is the same terminal as standard
error: records scroll past there anyway, and keeping a bar below them would
mean clearing and redrawing it around every record (two extra terminal
writes per record, and a lock between the writer and the bar), for a bar
the scrolling records would hide the use of.  Warnings, which are rare, are
printed through :class:`~.console.Console`, which clears and redraws the bar.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import threading
import time
from typing import IO, Any

from ..errors import BossWorkerError
from ..pool import BossWorkerAsync
from .console import Console
from .state import RunState, Writer
from .stdio import count_lines, regular_file_fd

__all__ = ["NoProgress", "Progress", "bar_wanted"]

#: How often the bar is redrawn, and how often it asks the Boss for its
#: statistics (a round trip).
_PROGRESS_INTERVAL = 0.2
_STATS_INTERVAL = 1.0
_NO_TQDM_HINT = "bossworker: no progress bar: tqdm is not installed (pip install 'bossworker[cli]')"


def bar_wanted(no_progress: bool, output: str | None) -> bool:
    """Whether to show a bar: standard error is a terminal, and records do
    not go to that same terminal (``output`` None means standard output)."""
    if no_progress or not sys.stderr.isatty():
        return False
    if output is not None:
        return True
    return not same_terminal(sys.stdout, sys.stderr)


def same_terminal(a: IO[Any], b: IO[Any]) -> bool:
    """Both streams are terminals, and the same one."""
    try:
        if not (a.isatty() and b.isatty()):
            return False
        sa, sb = os.fstat(a.fileno()), os.fstat(b.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return (sa.st_rdev, sa.st_dev, sa.st_ino) == (sb.st_rdev, sb.st_dev, sb.st_ino)


class Progress:
    """A tqdm bar, redrawn by its own thread from the run's counters (a few
    times a second; the Boss's statistics once a second)."""

    def __init__(
        self,
        bar: Any,
        bw: BossWorkerAsync[Any, Any],
        state: RunState,
        writer: Writer,
        console: Console,
        file_fd: int | None,
    ) -> None:
        self._bar = bar
        self._bw = bw
        self._state = state
        self._writer = writer
        self._console = console
        self._file_fd = file_fd
        self._lines_in_file: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bossworker-progress", daemon=True)
        self._counter = threading.Thread(target=self._count, name="bossworker-count", daemon=True)
        self._workers = "?"
        self._next_stats = 0.0

    @classmethod
    def maybe_start(
        cls,
        enabled: bool,
        bw: BossWorkerAsync[Any, Any],
        state: RunState,
        writer: Writer,
        source: IO[bytes],
        console: Console,
    ) -> Progress | NoProgress:
        """A running bar if enabled and tqdm is installed; else a no-op (and,
        if only tqdm is missing, a one-time hint on standard error)."""
        if not enabled:
            return NoProgress()
        try:
            tqdm_module: Any = importlib.import_module("tqdm")
        except ImportError:
            console.line(_NO_TQDM_HINT)
            return NoProgress()
        bar = tqdm_module.tqdm(total=None, unit="line", file=sys.stderr, dynamic_ncols=True, mininterval=0)
        progress = cls(bar, bw, state, writer, console, regular_file_fd(source))
        console.bar = bar
        if progress._file_fd is not None:
            progress._counter.start()
        progress._thread.start()
        return progress

    def stop(self) -> None:
        """Draw the final state and close the bar."""
        self._stop.set()
        self._thread.join()
        if self._counter.ident is not None:
            self._counter.join()
        with self._console.lock:
            self._refresh(final=True)
            self._console.bar = None
            self._bar.close()

    def _count(self) -> None:
        assert self._file_fd is not None
        self._lines_in_file = count_lines(self._file_fd, self._stop)

    def _loop(self) -> None:
        while not self._stop.wait(_PROGRESS_INTERVAL):
            self._refresh(final=False)

    def _refresh(self, final: bool) -> None:
        state, writer, bar = self._state, self._writer, self._bar
        now = time.monotonic()
        if not final and now >= self._next_stats:
            self._next_stats = now + _STATS_INTERVAL
            with contextlib.suppress(BossWorkerError):
                self._workers = str(self._bw.stats().workers_alive)
        with self._console.lock:
            if state.input_done:
                bar.total = state.lines_read
            elif self._lines_in_file is not None:
                # A file that grows while it is read has more lines than counted.
                bar.total = max(self._lines_in_file, state.lines_read)
            bar.n = writer.lines_done
            bar.set_postfix(errors=writer.errors, workers=self._workers, refresh=False)
            bar.refresh()


class NoProgress:
    """No bar."""

    def stop(self) -> None:
        pass

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
import os
import sys
import threading
import time
from typing import IO, Any

from ..errors import BossWorkerError
from ..pool import BossWorkerAsync
from ..progressbar import open_bar
from .console import Console
from .state import RunState, Writer
from .stdio import count_lines, regular_file_fd

__all__ = ["NoProgress", "RunProgress", "bar_wanted", "eta_text", "lines_left"]

#: How often the bar is redrawn, and how often it asks the Boss for its
#: statistics (a round trip).
_PROGRESS_INTERVAL = 0.2
_STATS_INTERVAL = 1.0
#: ``--eta`` without a bar: how often a line with the estimate is printed.
_ETA_INTERVAL = 10.0


def eta_text(done: int, elapsed: float, left: int | None) -> str:
    """``about 1 min 40 s left at 120.0 lines/s``: the time the ``left``
    lines need at the rate of this run so far (``done`` lines in
    ``elapsed`` seconds); ``""`` if it cannot be told."""
    if left is None or done <= 0 or elapsed <= 0:
        return ""
    rate = done / elapsed
    seconds = round(left / rate)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        span = f"{hours} h {minutes} min"
    elif minutes:
        span = f"{minutes} min {seconds} s"
    else:
        span = f"{seconds} s"
    return f"about {span} left at {rate:.1f} lines/s"


def lines_left(total: int | None, done: int) -> int | None:
    """Lines still to do, if the input's total is known."""
    return None if total is None else max(0, total - done)


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


class RunProgress:
    """A tqdm bar, redrawn by its own thread from the run's counters (a few
    times a second; the Boss's statistics once a second); with ``eta``, the
    estimated time left on it, or, with no bar (``bar`` None), on a line of
    standard error every 10 s."""

    def __init__(
        self,
        bar: Any,
        bw: BossWorkerAsync[Any, Any],
        state: RunState,
        writer: Writer,
        console: Console,
        file_fd: int | None,
        eta: bool = False,
    ) -> None:
        self._bar = bar
        self._eta = eta
        self._started = time.monotonic()
        self._next_eta_line = self._started + _ETA_INTERVAL
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
        options: Any,
        bw: BossWorkerAsync[Any, Any],
        state: RunState,
        writer: Writer,
        source: IO[bytes],
        console: Console,
    ) -> RunProgress | NoProgress:
        """A running bar if ``options.progress`` and tqdm is installed (if only
        tqdm is missing, a one-time hint on standard error); with
        ``options.eta``, the estimate, on the bar or on lines of its own;
        else a no-op.  ``options`` is the run's :class:`~.options.RunOptions`."""
        bar: Any = None
        if options.progress:
            bar = open_bar(
                console.line, total=None, unit="line", file=sys.stderr, dynamic_ncols=True, mininterval=0
            )
        if bar is None and not options.eta:
            return NoProgress()
        progress = cls(bar, bw, state, writer, console, regular_file_fd(source), options.eta)
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
        if self._bar is None:
            return
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

    def total(self) -> int | None:
        """The input's line count, once known."""
        state = self._state
        if state.input_done:
            return state.lines_read
        if self._lines_in_file is not None:
            # A file that grows while it is read has more lines than counted.
            return max(self._lines_in_file, state.lines_read)
        return None

    def _estimate(self) -> str:
        done = self._writer.lines_done
        # Lines skipped by --resume cost nothing: they do not make the rate.
        return eta_text(
            done - self._state.resumed, time.monotonic() - self._started, lines_left(self.total(), done)
        )

    def _refresh(self, final: bool) -> None:
        writer, bar = self._writer, self._bar
        now = time.monotonic()
        if bar is None:
            if not final and now >= self._next_eta_line:
                self._next_eta_line = now + _ETA_INTERVAL
                total = self.total()
                of = "" if total is None else f" of {total}"
                estimate = self._estimate()
                self._console.line(
                    f"bossworker: {writer.lines_done}{of} lines done" + (f", {estimate}" if estimate else "")
                )
            return
        if not final and now >= self._next_stats:
            self._next_stats = now + _STATS_INTERVAL
            with contextlib.suppress(BossWorkerError):
                self._workers = str(self._bw.stats().workers_alive)
        with self._console.lock:
            total = self.total()
            if total is not None:
                bar.total = total
            bar.n = writer.lines_done
            postfix: dict[str, Any] = {"errors": writer.tally.errors, "workers": self._workers}
            if self._eta and not final:
                postfix["eta"] = self._estimate() or "?"
            bar.set_postfix(refresh=False, **postfix)
            bar.refresh()


class NoProgress:
    """No bar."""

    def stop(self) -> None:
        pass

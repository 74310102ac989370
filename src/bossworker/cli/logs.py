"""The pool's log records on standard error, with job ids turned into input
lines: ``bossworker: WARNING: line 7 timed out in worker 4242``.

The records that name a job (a timeout, a worker that died while running
one) are logged by the Boss, another process, which knows job ids but not
input lines; only this process knows which line each job came from.  So the
``bossworker`` logger's handler (set up before the pool starts, so that a
forked Boss and its workers inherit it) does not write to standard error in
child processes: it sends each formatted record, in one ``write`` of at
most ``PIPE_BUF`` bytes (atomic, so records of several processes never mix),
down a pipe to this process.  Here a :class:`LogPump` thread reads them,
replaces ``job N`` by ``line M`` and prints them through the
:class:`~.console.Console`.  The engine's log calls are not changed.

No line is lost to a race: the Boss logs a job's warning *before* it sends
the job's answer, so by the time the collector holds that answer the record
is in the pipe; the collector calls :meth:`LogPump.drain` for every failed
answer before it forgets the job's line.  The pipe is drained before the
summary is printed.

A record too long for one atomic write (a traceback) goes straight to
standard error, untranslated.  A Boss started with ``spawn`` or
``forkserver``, and the Dask Boss, are fresh interpreters that do not
inherit this set-up, and log nothing (as before).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import threading
from collections.abc import Callable

from .console import Console

__all__ = ["LogPump", "setup_logging", "translate"]

_JOB = re.compile(rb"\bjob (\d+)\b")
# Newlines inside a record travel as this byte, so that one record is one line.
_NEWLINE_STAND_IN = b"\x00"


def translate(text: bytes, line_for: Callable[[int], int | None]) -> bytes:
    """``text`` with each ``job N`` whose line is known as ``line M``."""

    def replace(match: re.Match[bytes]) -> bytes:
        number = line_for(int(match[1]))
        return match[0] if number is None else b"line %d" % number

    return _JOB.sub(replace, text)


class _Handler(logging.Handler):
    """Formats a record; in this process prints it (translated), in a forked
    child sends it down the pipe."""

    def __init__(self, pump: LogPump) -> None:
        super().__init__()
        self._pump = pump

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).encode("utf-8", "replace")
            self._pump.accept(text)
        except Exception:  # noqa: BLE001 - logging must never raise into the engine
            self.handleError(record)


class LogPump:
    """The pipe from child processes' log handlers, and the thread that
    empties it onto the console (see the module docstring)."""

    def __init__(self, console: Console) -> None:
        self._console = console
        self._main_pid = os.getpid()
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        # Children never wait for main: with the pipe full, a record goes
        # straight to standard error instead (untranslated, but not lost).
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()  # one reader of the pipe at a time
        self._partial = b""
        self._line_for: Callable[[int], int | None] = lambda job_id: None
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="bossworker-logs", daemon=True)
        # A forked child must not keep the read end: after main's death its
        # writes must fail (EPIPE) rather than block on a full pipe.
        os.register_at_fork(after_in_child=self._in_child)

    def start(self) -> None:
        """Start the thread that empties the pipe.  Called once the pool is
        up: a Boss forked while it runs would copy its locks mid-use."""
        self._thread.start()

    def _in_child(self) -> None:
        if self._read_fd >= 0 and os.getpid() != self._main_pid:
            with contextlib.suppress(OSError):
                os.close(self._read_fd)
            self._read_fd = -1

    def map_jobs(self, line_for: Callable[[int], int | None]) -> None:
        """Translate job ids with ``line_for`` from now on."""
        self._line_for = line_for

    def accept(self, text: bytes) -> None:
        """A formatted record, from the handler, in whatever process."""
        if os.getpid() == self._main_pid:
            self._console.line(translate(text, self._line_for).decode("utf-8", "replace"))
            return
        data = text.replace(b"\n", _NEWLINE_STAND_IN) + b"\n"
        if len(data) <= select.PIPE_BUF:
            try:
                os.write(self._write_fd, data)
                return
            except OSError:
                pass  # the pipe is full, or main is gone: say it where we can
        with contextlib.suppress(OSError):
            os.write(2, text + b"\n")

    def drain(self) -> None:
        """Print every record already in the pipe (from any thread of main)."""
        with self._lock:
            while self._read_fd >= 0:
                try:
                    data = os.read(self._read_fd, 65536)
                except BlockingIOError:
                    return
                if not data:
                    return
                *records, self._partial = (self._partial + data).split(b"\n")
                for record in records:
                    if record:
                        text = translate(record.replace(_NEWLINE_STAND_IN, b"\n"), self._line_for)
                        self._console.line(text.decode("utf-8", "replace"))

    def _loop(self) -> None:
        while not self._stopping:
            select.select([self._read_fd], [], [])
            self.drain()

    def stop(self) -> None:
        """Print what is left and stop the thread (call after the pool is gone)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\n")  # wakes the thread; an empty record
        if self._thread.ident is not None:
            self._thread.join()
        self.drain()
        self._line_for = lambda job_id: None

    def close(self) -> None:
        """Close the pipe (after :meth:`stop`); later records of this
        process go straight to the console."""
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1


def setup_logging(verbose: bool, console: Console) -> LogPump:
    """Send the ``bossworker`` logger's records (worker deaths, timeouts; and
    worker starts with ``verbose``) to standard error, one line each, job
    ids turned into lines.  Call before the pool starts, so that a forked
    Boss inherits it."""
    pump = LogPump(console)
    handler = _Handler(pump)
    handler.setFormatter(logging.Formatter("bossworker: %(levelname)s: %(message)s"))
    logger = logging.getLogger("bossworker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    return pump

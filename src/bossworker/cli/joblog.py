"""``--joblog FILE``: one tab-separated line per job, for a spreadsheet or
``awk``, written as the job's record is written (so the log and the output
agree line for line; with ``--ordered``, in input order).

Columns: ``line`` (the input line), ``worker_pid``, ``start_time`` (Unix
time, when the last attempt started as seen from main), ``run_time``
(seconds, measured by the worker), ``attempts`` (more than 1 after
``--retries``) and ``outcome`` (``ok``, ``error:TYPE``, ``timed_out``,
``died``, ``memory``, ``invalid_json``, ``unwritable``, ``error``).  A value
that is not known is ``-`` (a line that is not JSON never ran).

The log's lines are written after their records (its sink follows the
output's), so a kill can leave records without their log lines, never the
reverse.  ``--resume`` mends that: a record whose line is not in the log
gets a log line with what the record tells (``ok``, or ``error`` for a
failure) and ``-`` for the rest.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .errors import UsageError
from .records import Facts
from .resume import DoneSet, repair_tail
from .stdio import LineSink

__all__ = ["HEADER", "JobLog", "joblog_line", "logged_lines", "open_joblog"]

HEADER = "line\tworker_pid\tstart_time\trun_time\tattempts\toutcome\n"


def joblog_line(number: int, facts: Facts) -> str:
    """One line of the job log (with its newline)."""
    pid = "-" if facts.worker_pid is None else str(facts.worker_pid)
    start = "-" if facts.started_at is None else f"{facts.started_at:.6f}"
    return f"{number}\t{pid}\t{start}\t{facts.run_time:.6f}\t{facts.attempts}\t{facts.kind}\n"


class JobLog:
    """The job log's writer (not thread-safe: the writer's lock guards it).
    Its ``sink`` writes only when flushed: make it the output's follower."""

    def __init__(self, sink: LineSink) -> None:
        self.sink = sink

    def write(self, number: int, facts: Facts) -> None:
        self.sink.write(joblog_line(number, facts))

    def recovered(self, number: int, failed: bool) -> None:
        """The line of a record found without one (see the module docstring)."""
        self.sink.write(f"{number}\t-\t-\t-\t-\t{'error' if failed else 'ok'}\n")

    def flush(self) -> None:
        self.sink.flush()


def logged_lines(path: str) -> DoneSet:
    """The input lines the job log at ``path`` has a line for (none if it
    does not exist; a torn last line is cut off first)."""
    repair_tail(path)
    logged = DoneSet()
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return logged
    except OSError as exc:
        raise UsageError(f"cannot read the --joblog {path}: {exc.strerror}") from None
    with f:
        for line in f:
            number = line.partition(b"\t")[0]
            if number.isdigit():  # not the header
                logged.add(int(number))
    return logged


@contextlib.contextmanager
def open_joblog(path: str | None, append: bool) -> Iterator[JobLog | None]:
    """The job log at ``path`` (None: no log).  Appended to when
    ``append`` (a resumed run: a torn last line is cut off first), else
    created afresh; the header is written into an empty file."""
    if path is None:
        yield None
        return
    if append:
        repair_tail(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write the --joblog {path}: {exc.strerror}") from None
    try:
        sink = LineSink(fd, limit=None)
        if os.fstat(fd).st_size == 0:
            sink.write(HEADER)
        log = JobLog(sink)
        try:
            yield log
        finally:
            with contextlib.suppress(OSError):
                sink.flush()
    finally:
        os.close(fd)

"""What the reading (main) thread and the collecting thread share: the run's
state and the writer of records, in completion or input order."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from .errors import OutputError
from .halt import HaltSpec
from .joblog import JobLog
from .records import Record, Tally

__all__ = ["RunState", "Writer"]


class _Sink(Protocol):
    """Where records go (a :class:`.stdio.LineSink`)."""

    def write(self, text: str, /) -> object: ...
    def flush(self) -> None: ...


class _Pool(Protocol):
    def add_work(self, *jobs: Any, timeout: float | None = ...) -> list[int]: ...


#: ``--timeout P%`` takes the median of this many latest successful run times.
_RUN_TIME_SAMPLES = 1001
#: ... and needs this many before it gives any limit.
MIN_RUN_TIME_SAMPLES = 3
#: How often the reader recomputes that median, in seconds.
_MEDIAN_EVERY = 0.25


class Writer:
    """Writes records, in completion or input order, and keeps the counts.

    Every input line takes a *slot* (:meth:`take_slots`) before it is
    handled and gives it back when its record is written (or, for a blank
    line, when its turn comes), so at most ``slots`` lines are ever between
    the two.  Thread-safe.
    """

    def __init__(
        self,
        out: _Sink,
        ordered: bool,
        slots: int,
        joblog: JobLog | None = None,
        halt: HaltSpec | None = None,
        on_halt: Callable[[], None] | None = None,
    ) -> None:
        self._out = out
        self._joblog = joblog
        self._halt = halt
        self._on_halt = on_halt
        self._ordered = ordered
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # signalled when slots are freed
        self._slots = slots
        self._free = slots
        self._wake_at = 0  # a reader waits until this many slots are free
        self._held: dict[int, Record | None] = {}  # --ordered: finished, waiting for earlier lines
        self._next = 1  # --ordered: the next line to write
        self.lines_done = 0  # lines written or skipped
        self.tally = Tally()
        self._failed_finished = 0  # failed records made (for --halt, in completion order)

    def take_slots(self, wanted: int, wait: bool) -> int:
        """Take up to ``wanted`` slots and return how many were taken.

        With ``wait``, take at least one, waiting (interruptibly) until
        enough are free: ``wanted`` or a quarter of all slots, whichever is
        fewer, so that a reader at the limit wakes once per batch rather than
        once per result.
        """
        with self._room:
            if wait and self._free < 1:
                self._wake_at = max(1, min(wanted, self._slots // 4))
                try:
                    self._room.wait_for(lambda: self._free >= self._wake_at)
                finally:
                    self._wake_at = 0
            taken = min(wanted, self._free)
            self._free -= taken
            return taken

    def open_all_slots(self) -> None:
        """Let a reader waiting in :meth:`take_slots` through (the run is ending)."""
        with self._room:
            self._free = sys.maxsize
            self._room.notify_all()

    def finish(self, number: int, record: Record | None) -> None:
        """Line ``number`` is done: ``record`` to write, or None for a blank line."""
        tripped = False
        with self._lock:
            if record is not None:
                self.tally.finished += 1
                self._failed_finished += record.failed
                halt = self._halt
                tripped = (
                    halt is not None
                    and record.failed
                    and halt.tripped(self._failed_finished, self.tally.finished)
                )
            if not self._ordered:
                self._write(record)
                freed = 1
            else:
                self._held[number] = record
                freed = 0
                while self._next in self._held:
                    self._write(self._held.pop(self._next))
                    self._next += 1
                    freed += 1
            self._free += freed
            if self._wake_at and self._free >= self._wake_at:
                self._room.notify()
        if tripped and self._on_halt is not None:
            self._on_halt()  # outside the lock: it opens the slots

    def release_held(self) -> None:
        """``--ordered``, at the end of a run cut short: write the records
        held back behind a line that will not finish now (each is finished:
        a resumed run must not do it again), still in input order."""
        with self._lock:
            for number in sorted(self._held):
                self._write(self._held.pop(number))

    def flush(self) -> None:
        """Push written records (and their job log lines) out now (before
        the runner waits).  The output first: a job log line never names a
        record that is not in the output."""
        with self._lock:
            try:
                self._out.flush()
                if self._joblog is not None:
                    self._joblog.flush()
            except OSError as exc:
                raise OutputError(exc) from exc

    def _write(self, record: Record | None) -> None:
        self.lines_done += 1
        if record is None:
            return
        try:
            self._out.write(record.text)
            if self._joblog is not None and record.facts is not None:
                self._joblog.write(_line_of(record), record.facts)
        except OSError as exc:
            raise OutputError(exc) from exc
        self.tally.count(record)


def _line_of(record: Record) -> int:
    """The input line a record is for (its text begins ``{"line":N,``)."""
    return int(record.text[8 : record.text.index(",", 8)])


class RunState:
    """What the reading (main) thread and the collecting thread share.

    ``cond`` guards every field.  ``line_of`` maps each job id the pool
    returned to its input line; the reader adds the job and its entry while
    holding ``cond``, so the collector never sees a result before its line.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.line_of: dict[int, int] = {}
        self.submitted = 0
        self.collected = 0
        self.input_done = False
        self.stopping = False
        self.failure: BaseException | None = None
        self.halted = False  # --halt tripped: no more lines are read
        self.halt_now = False  # ... and the collector takes only what has arrived
        self.collector_done = False
        # Made readable when the run stops early, to wake a reader waiting on
        # a pipe (see stdio.read_line_batches); closed by close().
        self.wake_fd, self._wake_w = os.pipe()
        # Written by the reader only; read by the progress bar.
        self.lines_read = 0
        self.resumed = 0  # lines skipped: done before (--resume)
        # --timeout P%: the latest successful run times (collector), and
        # their median as the reader last computed it.
        self.run_times: deque[float] = deque(maxlen=_RUN_TIME_SAMPLES)
        self._median: float | None = None
        self._median_at = 0.0

    def submit(self, bw: _Pool, batch: Sequence[tuple[int, Any]], timeout: float | None = None) -> None:
        """Add the jobs of ``batch``, ``(line number, job)`` pairs, to the pool
        (each with the time limit ``timeout``; None: the pool's)."""
        if not batch:
            return
        with self.cond:
            job_ids = bw.add_work(*(job for _, job in batch), timeout=timeout)
            for job_id, (number, _) in zip(job_ids, batch, strict=True):
                self.line_of[job_id] = number
            self.submitted += len(batch)
            self.cond.notify()

    def line_for(self, job_id: int) -> int | None:
        """The input line of a job not yet collected, or None."""
        with self.cond:
            return self.line_of.get(job_id)

    def median_run_time(self) -> float | None:
        """The median of the latest successful run times, recomputed at most
        every 0.25 s; None until :data:`MIN_RUN_TIME_SAMPLES` are known."""
        now = time.monotonic()
        if self._median is None or now >= self._median_at:
            with self.cond:
                samples = list(self.run_times)
            if len(samples) >= MIN_RUN_TIME_SAMPLES:
                self._median = statistics.median(samples)
                self._median_at = now + _MEDIAN_EVERY
        return self._median

    def halt(self, now: bool) -> None:
        """``--halt`` tripped: read no more lines (and, ``now``, stop collecting
        once what has arrived is taken)."""
        with self.cond:
            self.halted = True
            self.halt_now = self.halt_now or now
            self.cond.notify_all()
        self._wake_reader()

    def _wake_reader(self) -> None:
        with contextlib.suppress(OSError):  # closed: the run is over anyway
            os.write(self._wake_w, b"!")

    def close(self) -> None:
        """Close the wake-up pipe (the run is over)."""
        for fd in (self.wake_fd, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def collector_finished(self) -> None:
        with self.cond:
            self.collector_done = True
            self.cond.notify_all()

    def wait_for_halt_or_end(self) -> bool:
        """Wait until the collector is done or ``--halt`` tripped; return
        whether it tripped."""
        with self.cond:
            self.cond.wait_for(lambda: self.halted or self.collector_done)
            return self.halted

    def end_of_input(self) -> None:
        with self.cond:
            self.input_done = True
            self.cond.notify()

    def stop(self, failure: BaseException | None = None) -> None:
        """End the run early; the first failure (not after an interrupt) is kept."""
        with self.cond:
            if failure is not None and not self.stopping:
                self.failure = failure
            self.stopping = True
            self.cond.notify_all()
        self._wake_reader()

    def work_or_end(self) -> bool:
        """True when the collector has something to do or should stop (lock held)."""
        return self.stopping or self.submitted > self.collected or self.input_done

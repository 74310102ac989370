"""What the reading (main) thread and the collecting thread share: the run's
state and the writer of records, in completion or input order."""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import IO, Any, Protocol

from .errors import OutputError
from .records import Record

__all__ = ["RunState", "Writer"]


class _Pool(Protocol):
    def add_work(self, *jobs: Any, timeout: float | None = ...) -> list[int]: ...


class Writer:
    """Writes records, in completion or input order, and keeps the counts.

    Every input line takes a *slot* (:meth:`take_slots`) before it is
    handled and gives it back when its record is written (or, for a blank
    line, when its turn comes), so at most ``slots`` lines are ever between
    the two.  Thread-safe.
    """

    def __init__(self, out: IO[str], ordered: bool, slots: int) -> None:
        self._out = out
        self._ordered = ordered
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # signalled when slots are freed
        self._slots = slots
        self._free = slots
        self._wake_at = 0  # a reader waits until this many slots are free
        self._held: dict[int, Record | None] = {}  # --ordered: finished, waiting for earlier lines
        self._next = 1  # --ordered: the next line to write
        self.lines_done = 0  # lines written or skipped
        self.jobs = 0  # records written
        self.errors = 0
        self.timeouts = 0

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
        with self._lock:
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

    def flush(self) -> None:
        """Push written records out now (before the runner waits)."""
        with self._lock:
            try:
                self._out.flush()
            except OSError as exc:
                raise OutputError(exc) from exc

    def _write(self, record: Record | None) -> None:
        self.lines_done += 1
        if record is None:
            return
        try:
            self._out.write(record.text)
        except OSError as exc:
            raise OutputError(exc) from exc
        self.jobs += 1
        self.errors += record.failed
        self.timeouts += record.timed_out


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
        # Written by the reader only; read by the progress bar.
        self.lines_read = 0

    def submit(self, bw: _Pool, batch: Sequence[tuple[int, Any]]) -> None:
        """Add the jobs of ``batch``, ``(line number, job)`` pairs, to the pool."""
        if not batch:
            return
        with self.cond:
            job_ids = bw.add_work(*(job for _, job in batch))
            for job_id, (number, _) in zip(job_ids, batch, strict=True):
                self.line_of[job_id] = number
            self.submitted += len(batch)
            self.cond.notify()

    def line_for(self, job_id: int) -> int | None:
        """The input line of a job not yet collected, or None."""
        with self.cond:
            return self.line_of.get(job_id)

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

    def work_or_end(self) -> bool:
        """True when the collector has something to do or should stop (lock held)."""
        return self.stopping or self.submitted > self.collected or self.input_done

"""Worker starts for the local fleet: making a worker process, and the
slots waiting for one.

:class:`WorkerStarts` is what :class:`~bossworker.boss.local.LocalFleet`
asks for a new worker.  It holds:

* the making of one worker process (:meth:`WorkerStarts.start`): a socket
  pair, the process (forked ones told which inherited descriptors to drop),
  its memory probe when there is a cap, and a :class:`WorkerRecord` for it.
  A failure to make one (a process or file limit: EAGAIN, EMFILE) is an init
  failure of its slot, never the Boss's death;
* the slots waiting for a worker: a heap of (when, order, the slot's
  failures in a row), one entry per slot, each slot backing off by its own
  failures (the back-off itself is the core's rule:
  :meth:`~bossworker.boss.core.BossCore.worker_start_failed`);
* the start budget: the slots due are started for at most
  :data:`START_BUDGET` per turn of the Boss's loop, so READYs, answers and
  main's frames are read while a big pool starts;
* the failure summary: failed starts are summed up in one WARNING at most
  every :data:`START_REPORT_INTERVAL`, not one line per failed start.

What happens to a worker once it runs (dispatch, answers, deaths,
deadlines) is the fleet's; this module never touches the selector.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import multiprocessing
import os
import selectors
import socket
import stat
from collections.abc import Callable, Iterator
from multiprocessing.process import BaseProcess
from typing import Any

from ..config import BossConfig, PickledAtSpawn, WorkerSpec
from ..errors import START_FAILED_ERROR
from ..memory import RssProbe
from ..portable import socket_for_child
from ..process import Closable, OwnedFd
from ..protocol import Decoder, InitFailure, SendQueue
from ..worker import run_worker
from .core import RESPAWN_BACKOFF_MAX, BossCore
from .link import WorkerLink

__all__ = ["START_BUDGET", "START_REPORT_INTERVAL", "WorkerRecord", "WorkerStarts"]

log = logging.getLogger("bossworker")

# Worker starts due are made for at most this long per turn of the loop:
# the rest wait for the next turn, so READYs, answers and main's frames are
# read while a big pool starts (a start costs a fork, or a fork and exec).
START_BUDGET = 0.01
# Slots that cannot get a worker (a process or file limit) are summed up in
# one log line at most this often, not one line per failed start.
START_REPORT_INTERVAL = 60.0


class WorkerRecord(WorkerLink):
    """One worker process as the local Boss sees it: its link, and what
    talking to it takes (process, socket, buffers, exit watch)."""

    __slots__ = (
        "decoder",
        "events",
        "on_io",
        "out",
        "pidfd",
        "process",
        "rss_probe",
        "slot_failures",
        "sock",
    )

    def __init__(
        self,
        process: BaseProcess,
        sock: socket.socket,
        read_size: int,
        now: float,
        init_timeout: float,
        slot_failures: int = 0,
    ) -> None:
        super().__init__(process.pid or 0, now, init_timeout)
        self.process = process
        # How many starts of its slot failed in a row before it (its back-off).
        self.slot_failures = slot_failures
        self.sock = sock
        self.decoder = Decoder(read_size)
        self.out = SendQueue()
        self.events = selectors.EVENT_READ  # what the selector watches its socket for
        self.pidfd: OwnedFd | None = None  # readable once the process exited (None: its sentinel is watched)
        # With a memory cap only: reads the worker's resident size.
        self.rss_probe: RssProbe | None = None
        self.on_io: Callable[[int], None] = _ignore

    def detach_io(self) -> None:
        """Drop the I/O callback (it refers to the fleet and to this record):
        after the worker's exit, so the record and its buffers go at once,
        not at some full garbage collection."""
        self.on_io = _ignore


def _ignore(mask: int) -> None:
    pass


class WorkerStarts:
    """Starting workers and the slots waiting for one. See the module docstring."""

    def __init__(
        self,
        config: BossConfig,
        core: BossCore,
        clock: Callable[[], float],
        boss_owned: Callable[[], list[Closable]],
    ) -> None:
        self.config = config
        self.core = core
        self.clock = clock
        # What a forked worker must close besides the other workers' ends:
        # the Boss's own descriptors (main's socket and pidfd, the selector).
        self.boss_owned = boss_owned
        # typeshed's BaseContext lacks Process; every concrete context has it.
        self.ctx: Any = multiprocessing.get_context(config.start_method)
        # What a worker process gets: the spec itself when forked; else
        # pickled as it starts and unpickled by the worker itself, which can
        # then report a handler it cannot import (see PickledAtSpawn).
        self.worker_spec: WorkerSpec | PickledAtSpawn = config.worker
        if config.start_method != "fork":
            self.worker_spec = PickledAtSpawn(config.worker)
        # The slots waiting for a new worker, a heap of (when, order, the
        # slot's failures in a row): one entry per slot.
        self.respawn_at: list[tuple[float, int, int]] = []
        self.respawn_order = itertools.count()
        # Starts that failed since the last summary line, and why the last one did.
        self.start_failures_unreported = 0
        self.start_failure_text = ""
        self.start_report_due = 0.0
        self.started = 0  # worker processes started (the stats' workers_started)

    # -- the slots ---------------------------------------------------------------------

    @property
    def waiting(self) -> bool:
        """A slot waits for a worker."""
        return bool(self.respawn_at)

    def clear(self) -> None:
        """Forget every slot waiting (the fleet is being stopped)."""
        self.respawn_at.clear()

    def due(self, when: float, slot_failures: int) -> None:
        """Make a slot (whose starts failed ``slot_failures`` times in a row) due at ``when``."""
        heapq.heappush(self.respawn_at, (when, next(self.respawn_order), slot_failures))

    def slot_failed(self, text: str, failure: int, killed: bool, attempt: int) -> None:
        """A slot failed to get a serving worker (its ``attempt``-th failure
        in a row): try again after the core's back-off for it."""
        delay = self.core.worker_start_failed(text, failure, killed, attempt)
        self.due(self.clock() + delay, attempt)

    def next_due(self) -> float:
        """The nearest time a slot is due or the failure summary is."""
        soonest = self.respawn_at[0][0] if self.respawn_at else math.inf
        if self.start_failures_unreported:
            soonest = min(soonest, self.start_report_due)
        return soonest

    def take_due(self, now: float, needed: bool) -> Iterator[int]:
        """The slots due at ``now`` (each one's failures in a row), for at
        most START_BUDGET: the rest stay due, and the loop comes back at
        once after one look at its sockets.  Not ``needed`` (shutting down
        with nothing queued): the slots due are dropped, none is yielded."""
        due = self.respawn_at
        if not needed:
            while due and due[0][0] <= now:  # nothing left to do for them
                heapq.heappop(due)
            return
        stop_at = self.clock() + START_BUDGET
        while due and due[0][0] <= now:
            _, _, failures = heapq.heappop(due)
            yield failures
            if self.clock() >= stop_at:
                return

    def report(self, now: float) -> None:
        """One WARNING for the starts that failed (how many slots wait for
        a worker, and why), at most every START_REPORT_INTERVAL."""
        if not self.start_failures_unreported or now < self.start_report_due:
            return
        waiting = sum(1 for _, _, failures in self.respawn_at if failures)
        log.warning(
            "%d of %d worker slot(s) could not start a worker (%d failed start(s)); "
            "each is retried with a back-off of up to %.0f s: %s",
            waiting,
            self.config.worker_count,
            self.start_failures_unreported,
            RESPAWN_BACKOFF_MAX,
            self.start_failure_text,
        )
        self.start_failures_unreported = 0
        self.start_report_due = now + START_REPORT_INTERVAL

    # -- a worker process --------------------------------------------------------------

    def start(self, slot_failures: int, others: list[WorkerRecord]) -> WorkerRecord | None:
        """Start a worker for one slot (whose starts failed ``slot_failures``
        times in a row), beside the running ``others``.  None if no process
        could be made: the failure is counted, summed up by :meth:`report`,
        and the slot retried with its back-off."""
        try:
            boss_end, worker_end = socket.socketpair()
        except OSError as exc:
            self._failed(exc, slot_failures)
            return None
        inherited: list[Closable] = []
        fork = self.config.start_method == "fork"
        if fork:
            # A forked worker inherits every descriptor the Boss has; it must
            # drop the ones that are not its own (see process.close_inherited).
            inherited = [*self.boss_owned(), boss_end]
            inherited += [w.sock for w in others]
            inherited += [w.pidfd for w in others if w.pidfd is not None]
            inherited += [w.rss_probe for w in others if w.rss_probe is not None]
        process = self.ctx.Process(
            target=run_worker,
            args=(socket_for_child(worker_end), self.worker_spec, os.getpid(), inherited),
            name="bossworker-worker",
            daemon=False,
        )
        pipe_fds: list[int] = []
        try:
            if fork:
                pipe_fds = _next_pipe_fds()
            process.start()
        except OSError as exc:
            boss_end.close()
            # multiprocessing's fork start leaks the two pipes it made when
            # os.fork() fails: close what the failed start left open.
            _close_pipes(pipe_fds)
            self._failed(exc, slot_failures)
            return None
        finally:
            worker_end.close()
        boss_end.setblocking(False)
        spec = self.config.worker
        w = WorkerRecord(process, boss_end, spec.read_size, self.clock(), spec.init_timeout, slot_failures)
        if self.config.max_worker_memory is not None:
            try:
                # Opened now, while the new process is our unreaped child:
                # the descriptor can only ever describe this process.
                w.rss_probe = RssProbe(w.pid)
            except OSError as exc:
                log.warning("worker %d: cannot watch its memory (%s); its cap is not enforced", w.pid, exc)
        self.started += 1
        return w

    def _failed(self, exc: OSError, slot_failures: int) -> None:
        """No process could be made for a slot: counted, and summed up in
        the log by :meth:`report`."""
        text = START_FAILED_ERROR.format(error=f"{type(exc).__name__}: {exc}")
        self.start_failures_unreported += 1
        self.start_failure_text = text
        self.slot_failed(text, InitFailure.WORKERS, False, slot_failures + 1)


def _next_pipe_fds() -> list[int]:
    """The descriptors two ``os.pipe()`` calls get now: the lowest free ones
    (the Boss is single-threaded, so they stay free until its next call)."""
    fds: list[int] = []
    try:
        fds.extend(os.pipe())
        fds.extend(os.pipe())
    finally:
        for fd in fds:
            os.close(fd)
    return fds


def _close_pipes(fds: list[int]) -> None:
    """Close those of ``fds`` that are pipes now: after a failed fork start,
    the two pipes multiprocessing made just before ``os.fork()`` (no
    scan of every descriptor: a pool far bigger than a process limit
    fails thousands of starts)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)

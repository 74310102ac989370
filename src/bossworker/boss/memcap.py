"""The memory cap of the local fleet (``max_worker_memory``): measuring
workers, and what a worker past the cap gets.

:class:`MemoryCap` is held by :class:`~bossworker.boss.local.LocalFleet`
only when a cap is set.  Three rules, each with its one home here:

* mid-job (:meth:`MemoryCap.check`): a worker whose running job is due a
  look (every :data:`~bossworker.memory.CHECK_INTERVAL`) and is past the cap
  is SIGKILLed at once (it may be deep in C code, and grows every
  millisecond); its job is answered with MEMORY_LIMIT_ERROR and
  ``Flag.MEMORY``, or retried when its retries allow it;
* after an answer (:meth:`MemoryCap.recycle_if_over`): a worker past the cap
  between jobs (a leaky handler) takes no more jobs and is told to leave
  once the jobs sent ahead to it are done, before a job of its has to be
  killed for memory leaked in earlier ones;
* at start (:meth:`MemoryCap.over_at_start`): a worker past the cap as soon
  as it is ready would see every job killed: it is refused as an init
  failure naming both sizes.

The kill, the leave and the replacement are the fleet's (passed in as
callbacks): after any of them, the worker's exit is handled as any death.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Callable

from ..errors import MEMORY_AT_START_ERROR, MEMORY_LIMIT_ERROR
from ..jobs import Facts
from ..memory import CHECK_INTERVAL, mib, shown_over
from ..protocol import Flag, Kind, RetryOn
from .core import BossCore
from .link import ANSWERED, SERVING, HeadFate
from .starts import WorkerRecord

__all__ = ["MemoryCap"]

log = logging.getLogger("bossworker")


class MemoryCap:
    """The ``max_worker_memory`` rules. See the module docstring."""

    def __init__(
        self,
        cap: int,
        core: BossCore,
        kill: Callable[[WorkerRecord], None],
        tell_to_leave: Callable[[WorkerRecord, float], None],
    ) -> None:
        self.cap = cap
        self.core = core
        self.kill = kill
        self.tell_to_leave = tell_to_leave
        self.kills = 0  # workers killed mid-job (the stats' memory_kills)
        self.recycles = 0  # workers retired between jobs (the stats' memory_recycles)

    def check(self, workers: list[WorkerRecord], now: float) -> None:
        """Measure each worker whose running job is due a look; kill one past
        the cap (SIGKILL: it may be deep in C code) and answer its job with
        MEMORY_LIMIT_ERROR and Flag.MEMORY.  Its replacement, and the return
        of the jobs sent ahead to it, happen as after any death."""
        cap = self.cap
        for w in list(workers):
            if w.memory_check_due(CHECK_INTERVAL) > now or w.rss_probe is None:
                continue
            rss = w.rss_probe.rss()
            w.memory_checked_at = now
            if rss is None or rss <= cap:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)  # first: every millisecond it grows
            head = w.inflight[0]
            log.warning(
                "worker %d: %.1f MiB, past max_worker_memory (%.1f MiB), running job %d; killing it",
                w.pid,
                mib(rss),
                mib(cap),
                head.job_id,
            )
            self.kills += 1
            text = MEMORY_LIMIT_ERROR.format(**shown_over(rss, cap))
            facts = Facts(rss=rss, limit=cap)
            if self.core.may_retry(head, RetryOn.MEMORY):
                # Decided at its exit, as for a deadline (see the fleet's _expire_deadlines).
                w.head_killed(HeadFate(RetryOn.MEMORY, Kind.ERROR, text, Flag.MEMORY, facts))
            else:
                self.core.answer(
                    head.job_id,
                    Kind.ERROR,
                    text,
                    flags=Flag.MEMORY,
                    pid=w.pid,
                    ran=now - w.started_at,
                    facts=facts,
                )
                w.head_killed(ANSWERED)
            self.kill(w)

    def recycle_if_over(self, w: WorkerRecord, now: float) -> None:
        """After ``w`` answered: if it is past the cap (a leaky handler), it
        takes no more jobs and, once the jobs sent ahead to it are done, is
        told to leave (its exit_handler runs) and replaced, before a job of
        its has to be killed for memory it leaked in earlier jobs.  Measured
        after every answer that leaves it idle, else every CHECK_INTERVAL."""
        cap = self.cap
        if w.rss_probe is None or w.state is not SERVING:
            return
        # A worker with jobs sent ahead is running sub-millisecond jobs back
        # to back: a system call after each would slow the Boss down for
        # nothing, so it is measured at most every CHECK_INTERVAL.
        due = not w.inflight or now - w.memory_checked_at >= CHECK_INTERVAL
        if not w.over_memory and due:
            rss = w.rss_probe.rss()
            w.memory_checked_at = now
            if rss is None or rss <= cap:
                return
            log.info(
                "worker %d: %.1f MiB after its job, past max_worker_memory (%.1f MiB); recycling it",
                w.pid,
                mib(rss),
                mib(cap),
            )
            w.over_memory = True
        if not w.inflight:
            self.recycles += 1
            self.tell_to_leave(w, now)

    def over_at_start(self, w: WorkerRecord) -> bool:
        """A worker past the cap as soon as it is ready would see every job
        killed: refuse it as an init failure that names both sizes."""
        cap = self.cap
        rss = w.rss_probe.rss() if w.rss_probe is not None else None
        if rss is None or rss <= cap:
            return False
        w.init_failed(MEMORY_AT_START_ERROR.format(**shown_over(rss, cap)))
        log.warning("worker %d: %s", w.pid, w.init_error)
        self.kill(w)
        return True

"""A snapshot of what the pool is doing: :class:`Stats`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["Stats"]


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters of a pool at one moment, from :meth:`BossWorkerAsync.stats`.

    ``queued + running + completed + cancelled == added`` always holds: a job
    counts as queued from ``add_work`` until a worker starts it, wherever it
    waits (main's socket, the Boss's queue, or sent ahead to a busy worker).
    A job being retried counts once: queued (or running) again, and
    ``completed`` only when its last attempt is answered.

    Fields:

    added
        Jobs handed to ``add_work`` so far (counted in main).
    completed
        Jobs answered: results produced, failures included (``failed``).
    failed
        Jobs answered with a failure: the handler raised, the job timed out
        (``timed_out`` is a part of ``failed``), its worker died, its result
        could not be pickled, or no worker could start.
    timed_out
        Jobs that ran out of time (also counted in ``failed``).
    queued
        Jobs waiting to start: ``added - completed - running - cancelled``.
    running
        Jobs a worker is running now.
    workers_alive
        Worker processes alive now.
    workers_started
        Worker processes started in all, replacements included.
    jobs_per_worker
        Jobs done by each live worker, by pid (read-only mapping).
    cancelled
        Jobs dropped before they started (``cancel()``, an Executor
        future's ``cancel()``); never answered.
    retried
        Failed attempts that were run again (``retries=``), not answered:
        a job retried twice counts 2 here and 1 in ``completed``.
    memory_kills
        Jobs stopped because their worker passed ``max_worker_memory`` mid-job
        (also counted in ``failed``, unless retried).
    memory_recycles
        Workers retired between jobs because they had grown past
        ``max_worker_memory`` (a leak); no job failed.
    """

    added: int
    completed: int
    failed: int
    timed_out: int
    queued: int
    running: int
    workers_alive: int
    workers_started: int
    jobs_per_worker: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    # ^ jobs done by each live worker, by pid
    cancelled: int = 0
    retried: int = 0
    memory_kills: int = 0
    memory_recycles: int = 0

    @classmethod
    def from_boss(cls, added: int, boss: Mapping[str, Any]) -> Stats:
        """Combine main's count of jobs added with the Boss's counters."""
        completed = int(boss["completed"])
        running = int(boss["running"])
        cancelled = int(boss.get("cancelled", 0))
        per_worker = {int(pid): int(n) for pid, n in boss["jobs_per_worker"].items()}
        return cls(
            added=added,
            completed=completed,
            failed=int(boss["failed"]),
            timed_out=int(boss["timed_out"]),
            queued=max(0, added - completed - running - cancelled),
            running=running,
            workers_alive=int(boss["workers_alive"]),
            workers_started=int(boss["workers_started"]),
            jobs_per_worker=MappingProxyType(per_worker),
            cancelled=cancelled,
            retried=int(boss.get("retried", 0)),
            memory_kills=int(boss.get("memory_kills", 0)),
            memory_recycles=int(boss.get("memory_recycles", 0)),
        )

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
    """

    added: int  # jobs handed to add_work
    completed: int  # results produced, ERROR results included
    failed: int  # ERROR results, timeouts and worker deaths included
    timed_out: int  # jobs that ran out of time
    queued: int  # waiting to start
    running: int  # being run by a worker now
    workers_alive: int  # worker processes alive now
    workers_started: int  # worker processes started in all, replacements included
    jobs_per_worker: Mapping[int, int] = field(default_factory=lambda: MappingProxyType({}))
    # ^ jobs done by each live worker, by pid
    cancelled: int = 0  # dropped from the queue before they started (Executor futures' cancel())
    memory_kills: int = 0  # jobs stopped because their worker passed max_worker_memory (also in failed)
    memory_recycles: int = 0  # workers retired between jobs because they had grown past max_worker_memory

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
            memory_kills=int(boss.get("memory_kills", 0)),
            memory_recycles=int(boss.get("memory_recycles", 0)),
        )

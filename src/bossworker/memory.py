"""Memory caps: how the Boss reads a worker's resident size.

(``max_worker_memory=`` itself is checked and parsed in
:mod:`bossworker.checks`, with the other arguments.)

The Boss watches a worker's resident set size (RSS) from
``/proc/<pid>/statm``: its second field is the number of resident pages.
One ``pread`` of a descriptor opened when the worker starts costs about
2 microseconds and no allocation in the worker, so the Boss can afford to
look every :data:`CHECK_INTERVAL` while a job runs, and after every answer.

What is counted is the worker process itself (all its threads): its RSS,
which includes pages it shares with others (copy-on-write pages inherited
from a forked parent that it touched, shared libraries).  Processes a
handler starts are not counted: summing a process tree would mean walking
``/proc`` at every check.

Only the standard library is used, so the cap needs ``/proc`` (Linux, the
portable path on Linux included); elsewhere the constructor refuses
``max_worker_memory=`` (see :func:`bossworker.checks.memory_supported`).
"""

from __future__ import annotations

import math
import os

__all__ = ["CHECK_INTERVAL", "RssProbe", "mib", "shown_over"]

#: How often the Boss reads a busy worker's RSS (seconds).  A job is first
#: looked at this long after it started; then this often until it answers.
#: With the kill itself, a worker past its cap is stopped ~20-40 ms after
#: it crosses it on a quiet machine.
CHECK_INTERVAL = 0.02


def mib(size: int) -> float:
    """``size`` bytes in MiB."""
    return size / (1024 * 1024)


def shown_over(rss: int, cap: int) -> dict[str, float]:
    """``rss_mib`` and ``limit_mib`` for the error texts, to 0.1 MiB: the
    size rounded up and the cap down, so that a size just past the cap
    never reads "200.0 MiB > 200.0 MiB"."""
    return {"rss_mib": math.ceil(mib(rss) * 10) / 10, "limit_mib": math.floor(mib(cap) * 10) / 10}


class RssProbe:
    """Reads one process's resident set size, cheaply, as often as asked.

    The descriptor stays bound to the process it was opened for: once that
    process is gone, reads fail (no risk of measuring a new process that got
    its pid).  A forked worker closes its siblings' probes (``close``)."""

    __slots__ = ("_fd", "_page")

    def __init__(self, pid: int) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        self._fd: int | None = os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC)

    def rss(self) -> int | None:
        """Resident bytes now, or None if the process is gone (or closed)."""
        if self._fd is None:
            return None
        try:
            fields = os.pread(self._fd, 256, 0).split()
            return int(fields[1]) * self._page
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

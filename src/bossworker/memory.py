"""Memory caps: parse ``max_worker_memory=`` and read a worker's resident size.

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
``max_worker_memory=`` (see :func:`check_supported`).
"""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction

from .errors import InvalidArgumentError

__all__ = [
    "CHECK_INTERVAL",
    "MIN_MEMORY",
    "RssProbe",
    "check_supported",
    "mib",
    "parse_memory",
    "shown_over",
]

#: How often the Boss reads a busy worker's RSS (seconds).  A job is first
#: looked at this long after it started; then this often until it answers.
#: With the kill itself, a worker past its cap is stopped ~20-40 ms after
#: it crosses it on a quiet machine.
CHECK_INTERVAL = 0.02

#: The smallest cap accepted: an idle Python worker alone is ~10-20 MiB.
MIN_MEMORY = 16 * 1024 * 1024

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?) ?([A-Za-z]*)")

_FORMS = (
    "an int of bytes (at least 16 MiB) or a string: a number (decimals allowed) and a unit, "
    "B, K/KiB, M/MiB, G/GiB, T/TiB (powers of 1024) or KB, MB, GB, TB (powers of 1000), "
    'e.g. "512MiB", "1.5GB", "800M"'
)


def parse_memory(value: object, name: str = "max_worker_memory") -> int:
    """``value`` as a number of bytes: an int, or a string such as
    ``"512MiB"``, ``"1.5GB"``, ``"800M"`` (units are case-insensitive; a
    bare K, M, G, T is a power of 1024, as in ``ulimit`` and Docker).

    Raises :class:`InvalidArgumentError` naming the accepted forms for
    anything else (floats, negative numbers, unknown units, ``True``), and
    for less than :data:`MIN_MEMORY`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidArgumentError(f"{name} must be {_FORMS}; not {type(value).__name__} {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.fullmatch(value.strip())
        factor = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or factor is None:
            raise InvalidArgumentError(f"{name} must be {_FORMS}; not {value!r}")
        size = int(Fraction(match.group(1)) * factor)  # exact: no float rounding
    if size < MIN_MEMORY:
        raise InvalidArgumentError(
            f"{name} must be at least 16 MiB ({MIN_MEMORY} bytes: an idle worker alone uses "
            f"10-20 MiB), not {value!r}"
        )
    return size


def check_supported() -> None:
    """Refuse a cap where this process cannot read ``/proc/<pid>/statm``."""
    try:
        with open(f"/proc/{os.getpid()}/statm", "rb") as f:
            int(f.read().split()[1])
    except (OSError, ValueError, IndexError) as exc:
        raise InvalidArgumentError(
            "max_worker_memory= needs /proc/<pid>/statm to watch the workers' memory (Linux); "
            f"this platform has none ({type(exc).__name__}: {exc}). Leave max_worker_memory=None "
            "here, and use an operating-system limit (a container's memory limit, ulimit -v) instead"
        ) from exc


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

"""Argument checks: each rule about what a caller may pass lives here, once.

Every public entry point (``BossWorkerAsync``, ``Executor``, the streams,
the command line) checks its arguments through these functions, so "a
positive int", "a number of seconds" or "a memory size" is refused the same
way, with the same :class:`~bossworker.errors.InvalidArgumentError` text,
wherever it is passed.  Each function returns the value in the form the
caller keeps (seconds as a float, a size in bytes, retry causes as bits).

Standard library only (and our own errors and protocol constants): main
imports this, a Boss or a worker never needs to.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import Literal, cast

from .errors import InvalidArgumentError
from .protocol import RetryOn

__all__ = [
    "MAX_RETRIES",
    "MAX_TIMEOUT",
    "MIN_MEMORY",
    "RETRY_CAUSES",
    "StartMethod",
    "backend",
    "callable_arg",
    "memory_size",
    "memory_supported",
    "progress",
    "retries",
    "retry_on",
    "seconds",
    "start_method",
    "whole_number",
]

#: The ``start_method`` values (``None``: the platform's default).
StartMethod = Literal["fork", "spawn", "forkserver"]

#: The largest time limit accepted anywhere (seconds, about 31 years): far
#: below what ``select``, ``setitimer`` and ``threading`` can represent.
MAX_TIMEOUT = 1e9

#: The most ``retries=`` a job may have (it travels in one byte of its header).
MAX_RETRIES = 255

#: The failures ``retry_on=`` may name, and their bits in a JOB's header.
RETRY_CAUSES = {"died": RetryOn.DIED, "timed_out": RetryOn.TIMED_OUT, "memory": RetryOn.MEMORY}

#: The smallest memory cap accepted: an idle Python worker alone is ~10-20 MiB.
MIN_MEMORY = 16 * 1024 * 1024


def callable_arg(name: str, value: object, required: bool = False) -> None:
    """Refuse a ``value`` that is not callable (None passes unless ``required``)."""
    if value is None and not required:
        return
    if not callable(value):
        raise InvalidArgumentError(f"{name} must be callable, not {type(value).__name__}")


def whole_number(name: str, value: object, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``.

    A positive int (``minimum`` 1) is refused as ``concurrent.futures`` words
    it: "must be greater than 0"."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        bound = "greater than 0" if minimum == 1 else f"at least {minimum}"
        raise InvalidArgumentError(f"{name} must be {bound}, not {value}")
    return value


def seconds(name: str, value: object) -> float:
    """A duration in seconds as a float; None and 0 mean no limit (0.0).

    Values above :data:`MAX_TIMEOUT` are refused rather than taken as "no
    limit": a limit the platform cannot represent (``select``, ``setitimer``
    and ``threading`` overflow near 9.2e9 s) is almost always a unit mistake.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, not {type(value).__name__}")
    got = float(value)
    if math.isnan(got) or got < 0:
        raise InvalidArgumentError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if got > MAX_TIMEOUT:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_TIMEOUT:.0e} seconds (about 31 years), not {value!r}; "
            "use None or 0 for no limit"
        )
    return got


def retries(value: object) -> int:
    """``retries=``: how many times a failed job may run again (0 to :data:`MAX_RETRIES`)."""
    count = whole_number("retries", value, minimum=0)
    if count > MAX_RETRIES:
        raise InvalidArgumentError(f"retries must be at most {MAX_RETRIES}, not {count}")
    return count


def retry_on(value: object) -> int:
    """``retry_on=`` names (see :data:`RETRY_CAUSES`) as ``RetryOn`` bits."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidArgumentError(
            f"retry_on must be a tuple of names out of {sorted(RETRY_CAUSES)}, not {value!r}"
        )
    bits = 0
    for name in value:
        if name not in RETRY_CAUSES:
            raise InvalidArgumentError(f"retry_on names {name!r}; it takes {sorted(RETRY_CAUSES)}")
        bits |= RETRY_CAUSES[name]
    return bits


def start_method(value: object) -> StartMethod | None:
    """``value`` if it is None (the default) or a start method this platform has."""
    methods = multiprocessing.get_all_start_methods()
    if value is not None and value not in methods:
        raise InvalidArgumentError(f"start_method must be one of {methods}, not {value!r}")
    return cast("StartMethod | None", value)


def progress(value: object) -> None:
    """``progress=``: True, False, or a dict of tqdm arguments."""
    if not isinstance(value, (bool, Mapping)):
        raise InvalidArgumentError(
            f"progress must be True, False or a dict of tqdm arguments, not {type(value).__name__}"
        )


# -- memory sizes ------------------------------------------------------------------

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


def memory_size(value: object, name: str = "max_worker_memory") -> int:
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


def memory_supported() -> None:
    """Refuse a memory cap where this process cannot read ``/proc/<pid>/statm``
    (what the Boss watches a worker's memory through)."""
    try:
        with open(f"/proc/{os.getpid()}/statm", "rb") as f:
            int(f.read().split()[1])
    except (OSError, ValueError, IndexError) as exc:
        raise InvalidArgumentError(
            "max_worker_memory= needs /proc/<pid>/statm to watch the workers' memory (Linux); "
            f"this platform has none ({type(exc).__name__}: {exc}). Leave max_worker_memory=None "
            "here, and use an operating-system limit (a container's memory limit, ulimit -v) instead"
        ) from exc


def backend(value: object) -> None:
    """None (processes on this machine), or an object with a backend's ``start(config)``."""
    if value is not None and not callable(getattr(value, "start", None)):
        raise InvalidArgumentError(
            f"backend must be None (processes on this machine) or a backend object such as "
            f"bossworker.dask.DaskBackend(), not {type(value).__name__}"
        )

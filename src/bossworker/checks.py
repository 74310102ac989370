"""Argument checks shared by every facade: each rule and its error text live here once.

Every check raises :class:`~bossworker.errors.InvalidArgumentError` naming
the argument, what it takes and what it got; nothing has been started when
one fails.
"""

from __future__ import annotations

import math
import multiprocessing
from collections.abc import Callable, Iterable
from typing import Any

from .errors import InvalidArgumentError
from .protocol import RetryOn

__all__ = [
    "MAX_RETRIES",
    "MAX_TIMEOUT",
    "RETRY_CAUSES",
    "check_backend",
    "check_callable",
    "check_int",
    "check_retries",
    "check_retry_on",
    "check_start_method",
    "check_timeout",
]

#: The largest time limit accepted anywhere (seconds, about 31 years): far
#: below what ``select``, ``setitimer`` and ``threading`` can represent.
MAX_TIMEOUT = 1e9

#: The most ``retries=`` a job may have (it travels in one byte of its header).
MAX_RETRIES = 255

#: The failures ``retry_on=`` may name, and their bits in a JOB's header.
RETRY_CAUSES = {"died": RetryOn.DIED, "timed_out": RetryOn.TIMED_OUT, "memory": RetryOn.MEMORY}


def check_callable(name: str, value: object, required: bool = False) -> None:
    if value is None and not required:
        return
    if not callable(value):
        raise InvalidArgumentError(f"{name} must be callable, not {type(value).__name__}")


def check_int(name: str, value: object, minimum: int) -> int:
    """An int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be at least {minimum}, not {value}")
    return value


def check_retries(value: object) -> int:
    count = check_int("retries", value, minimum=0)
    if count > MAX_RETRIES:
        raise InvalidArgumentError(f"retries must be at most {MAX_RETRIES}, not {count}")
    return count


def check_retry_on(value: object) -> int:
    """``retry_on=`` names as protocol.RetryOn bits."""
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


def check_timeout(name: str, value: object) -> float:
    """Seconds as a float; None and 0 mean no limit (0.0).

    Values above :data:`MAX_TIMEOUT` (``inf`` included) are rejected rather
    than taken as "no limit": a limit the platform cannot represent
    (``select``, ``setitimer`` and ``threading`` overflow near 9.2e9 s) is
    almost always a unit mistake.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise InvalidArgumentError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if seconds > MAX_TIMEOUT:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_TIMEOUT:.0e} seconds (about 31 years), not {value!r}; "
            "use None or 0 for no limit"
        )
    return seconds


def check_start_method(value: object) -> None:
    """A start method this platform has (None: the default)."""
    if value is not None and value not in multiprocessing.get_all_start_methods():
        raise InvalidArgumentError(
            f"start_method must be one of {multiprocessing.get_all_start_methods()}, not {value!r}"
        )


def check_backend(value: object) -> None:
    """None, or an object with the backend's ``start(config)`` method."""
    start: Callable[..., Any] | None = getattr(value, "start", None)
    if value is not None and not callable(start):
        raise InvalidArgumentError(
            f"backend must be None (processes on this machine) or a backend object such as "
            f"bossworker.dask.DaskBackend(), not {type(value).__name__}"
        )

"""Module-level handlers for tests/test_outcomes.py (importable under spawn)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


class CustomError(Exception):
    """An exception with an attribute, which must survive the trip."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message, code)
        self.code = code


class UnpicklableError(Exception):
    """Holds a lock: pickling it fails in the worker."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def echo(job: Any) -> Any:
    return job


def return_none(job: Any) -> None:
    return None


def raise_value_error(job: Any) -> Any:
    raise ValueError(f"rattle {job}")


def raise_custom(job: int) -> Any:
    raise CustomError("custom", job)


def raise_unpicklable(job: Any) -> Any:
    raise UnpicklableError("held a lock")


def unpicklable_result(job: Any) -> Any:
    return threading.Lock()


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def timed_sleep(seconds: float) -> dict[str, float]:
    """Sleep, and say when the handler started and ended (``time.time()``,
    this worker's clock: the machine's, as main's) and in which worker."""
    start = time.time()
    time.sleep(seconds)
    return {"pid": os.getpid(), "start": start, "end": time.time()}


def die(job: Any) -> Any:
    os.kill(os.getpid(), signal.SIGKILL)


def _first_time(marker: str) -> bool:
    """True the first time it is called for ``marker`` (in any process)."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.close(fd)
    return True


def die_once(marker: str) -> dict[str, Any]:
    """SIGKILL our own worker on the first attempt; succeed on the next."""
    if _first_time(marker):
        os.kill(os.getpid(), signal.SIGKILL)
    return {"marker": marker, "pid": os.getpid()}


def hang_once(marker: str) -> str:
    """Run past any time limit on the first attempt (SIGALRM stops it)."""
    if _first_time(marker):
        time.sleep(60)
    return "second"


def hang_deaf_once(marker: str) -> str:
    """Run past the time limit deaf to SIGALRM on the first attempt, so the
    Boss must kill the worker."""
    if _first_time(marker):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)
    return "second"


def wait_for_file(path: str) -> int:
    """Block until ``path`` exists (at most 60 s), then return our pid."""
    deadline = time.monotonic() + 60
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return os.getpid()


def raise_on_odd(n: int) -> int:
    if n % 2:
        raise ValueError(f"odd {n}")
    return n

"""Waiting in tests: on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float = 30, what: str | Callable[[], str] = "the condition"
) -> T:
    """Poll ``condition`` until it returns something truthy (returned), or
    fail with AssertionError after ``timeout`` seconds.  ``what`` names the
    condition in the message (a callable makes the message at that moment)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            name = what() if callable(what) else what
            raise AssertionError(f"{name} did not happen within {timeout} s")
        time.sleep(0.01)

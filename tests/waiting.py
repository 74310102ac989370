"""Waiting in tests: on a condition with a deadline, never a bare sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

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


class Gate:
    """Holds a ``tasks.block`` task (tests/executor_tasks.py) still until
    :meth:`open`: the task marks ``started``, then waits for ``release``."""

    def __init__(self, tmp_path: Path, name: str = "gate") -> None:
        self.started = tmp_path / f"{name}.started"
        self.release = tmp_path / f"{name}.release"

    def args(self, value: Any = None) -> tuple[Any, ...]:
        return (str(self.started), str(self.release), value)

    def wait_started(self, timeout: float = 30) -> None:
        wait_until(self.started.exists, timeout, f"{self.started.name} to start")

    def open(self) -> None:
        self.release.touch()

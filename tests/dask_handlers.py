"""Module-level handlers for the Dask backend's tests (importable on the
Dask workers: the test cluster has this directory on its path)."""

from __future__ import annotations

import os
import time
from typing import Any


def write_marker(directory: str, what: str) -> None:
    """An init or exit handler (bound with functools.partial): leaves a file
    named ``<what>-<pid>`` in ``directory``."""
    with open(os.path.join(directory, f"{what}-{os.getpid()}"), "w") as f:
        f.write("x")


def tag_with_pid(result: Any) -> Any:
    """A result handler: says which process ran it."""
    return {"result": result, "handled_in": os.getpid()}


def sleep_then_pid(job: dict[str, Any]) -> dict[str, Any]:
    time.sleep(job["seconds"])
    return {"slept": job["seconds"], "pid": os.getpid()}


def noop(job: Any) -> Any:
    return job

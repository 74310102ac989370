"""Handlers for the memory-cap tests (module level: spawned workers import them)."""

from __future__ import annotations

import os
import time
from typing import Any

MiB = 1024 * 1024

# What a leaky handler keeps between jobs (per worker process).
_leaked: list[bytes] = []
# What hog_at_init holds for the worker's life.
_hog: list[bytes] = []


def rss() -> int:
    """This process's resident bytes, read as the Boss reads them."""
    with open(f"/proc/{os.getpid()}/statm", "rb") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def grow(job: dict[str, Any]) -> dict[str, Any]:
    """Allocate ``step_mib`` at a time (every page written, so it is
    resident), every ``pace`` seconds, until ``stop_mib`` of RSS; after each
    step, append ``monotonic-time rss`` to the file ``log``.  Returns only if
    nobody stopped it by ``stop_mib`` (a cap that did not work)."""
    step = job["step_mib"] * MiB
    chunks: list[bytes] = []
    fd = os.open(job["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        while True:
            chunks.append(b"\x01" * step)
            now_rss = rss()
            os.write(fd, f"{time.monotonic()} {now_rss}\n".encode())
            if now_rss > job["stop_mib"] * MiB:
                return {"escaped": now_rss, "pid": os.getpid()}
            if job["pace"]:
                time.sleep(job["pace"])
    finally:
        os.close(fd)


def leak(mib: int) -> dict[str, int]:
    """Keep ``mib`` MiB more for the life of this worker; say where and how
    big the worker is now."""
    _leaked.append(b"\x01" * (mib * MiB))
    return {"pid": os.getpid(), "rss": rss()}


def where(job: Any) -> dict[str, int]:
    """The worker's pid and size, after a short job."""
    return {"pid": os.getpid(), "rss": rss(), "job": job}


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def hog_at_init() -> None:
    """An init_handler that keeps 200 MiB for the worker's life."""
    _hog.append(b"\x01" * (200 * MiB))


def grow_task(stop_mib: int) -> int:
    """For the Executor: allocate 8 MiB at a time until ``stop_mib`` of RSS."""
    chunks = []
    while rss() < stop_mib * MiB:
        chunks.append(b"\x01" * (8 * MiB))
    return len(chunks)


def mixed(job: Any) -> dict[str, Any]:
    """``grow(job)`` for a dict, ``where(job)`` for anything else."""
    return grow(job) if isinstance(job, dict) else where(job)


def grow_once(job: dict[str, Any]) -> dict[str, Any]:
    """The first attempt (no ``job["marker"]`` file yet) creates the marker
    and grows past any cap, as :func:`grow`; a later attempt answers at once."""
    try:
        fd = os.open(job["marker"], os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return {"pid": os.getpid(), "second": True}
    os.close(fd)
    return grow(job)

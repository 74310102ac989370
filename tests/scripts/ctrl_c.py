"""A main program that gets Ctrl-C (SIGINT to its whole process group).

Usage: ``python ctrl_c.py START_METHOD`` in a session of its own.

It speaks JSON lines on stdout, one per step; the test sends SIGINT to the
process group after ``ready`` and again after ``again``:

``ready``     two 3-second jobs are running; waiting for the first SIGINT.
``survived``  the first KeyboardInterrupt was caught *inside* the ``with``
              block; the two jobs it interrupted were then collected: they
              must be real results (the SIGINT did not kill the workers).
``again``     two 60-second jobs are running; waiting for the second SIGINT.
``stopped``   the second KeyboardInterrupt left the ``with`` block, which
              force-stopped the pool; says whether anything is still alive.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from typing import Any

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import psutil  # noqa: E402

import handlers  # noqa: E402
from bossworker import BossWorkerAsync  # noqa: E402

WORKERS = 2


def say(event: str, **facts: Any) -> None:
    print(json.dumps({"event": event, **facts}), flush=True)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _is_mp_helper(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def worker_pids(boss: psutil.Process) -> list[int]:
    return sorted(p.pid for p in boss.children() if _alive(p) and not _is_mp_helper(p))


def wait_running(bw: BossWorkerAsync, count: int) -> None:
    deadline = time.monotonic() + 30
    while bw.stats().running < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers never started their jobs")
        time.sleep(0.01)


def main() -> int:
    method = sys.argv[1]
    # Behave as a program started from a terminal even when the test runs
    # in the background (a non-interactive shell starts background jobs with
    # SIGINT ignored, and Python then installs no KeyboardInterrupt handler).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    boss: psutil.Process | None = None
    workers: list[psutil.Process] = []
    try:
        with BossWorkerAsync(handlers.sleep_for, worker_count=WORKERS, start_method=method) as bw:
            boss = psutil.Process(bw.boss_pid)
            bw.add_work(*({"seconds": 3} for _ in range(WORKERS)))
            wait_running(bw, WORKERS)
            first_workers = worker_pids(boss)
            workers = [psutil.Process(pid) for pid in first_workers]
            results: list[Any] = []
            try:
                say("ready", boss=bw.boss_pid, workers=first_workers)
                while len(results) < WORKERS:
                    results.append(bw.get_result())
            except KeyboardInterrupt:
                pending_at_interrupt = bw.pending()
            else:
                say("error", why="no KeyboardInterrupt came")
                return 1
            while len(results) < WORKERS:
                results.append(bw.get_result(timeout=30))
            say(
                "survived",
                results=results,
                pending_at_interrupt=pending_at_interrupt,
                workers_before=first_workers,
                workers_after=worker_pids(boss),
                workers_started=bw.stats().workers_started,
                boss_alive=_alive(boss),
            )
            bw.add_work(*({"seconds": 60} for _ in range(WORKERS)))
            wait_running(bw, WORKERS)
            workers = [psutil.Process(pid) for pid in worker_pids(boss)]
            say("again", workers=[w.pid for w in workers])
            bw.get_result()  # interrupted by the second SIGINT
        say("error", why="left the with block without a KeyboardInterrupt")
        return 1
    except KeyboardInterrupt:
        left = [p.pid for p in [boss, *workers] if p is not None and _alive(p)]
        say("stopped", alive=left)
        return 0


if __name__ == "__main__":
    sys.exit(main())

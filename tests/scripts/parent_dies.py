"""A main program that the test SIGKILLs while its pool is busy.

Usage: ``python parent_dies.py START_METHOD``

It starts a pool of two workers, gives each a job of a minute (and queues
a few big jobs behind them), and once both jobs run prints one JSON line
on stdout::

    {"main": pid, "boss": pid, "workers": [pid, ...], "descendants": [pid, ...]}

then blocks in ``get_result()`` until it is killed.  The test then checks
that every pid it printed is gone within a couple of seconds.
"""

from __future__ import annotations

import json
import os
import sys
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import psutil  # noqa: E402

import handlers  # noqa: E402
from bossworker import BossWorkerAsync  # noqa: E402

WORKERS = 2


def _is_mp_helper(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def main() -> int:
    method = sys.argv[1]
    bw = BossWorkerAsync(handlers.size_probe, worker_count=WORKERS, start_method=method)
    bw.add_work(*(("sleep", 60) for _ in range(WORKERS)))
    # Big jobs waiting behind them travel through /dev/shm segments, which
    # must not outlive the pool either.
    bw.add_work(*(("len", os.urandom(1024 * 1024)) for _ in range(3)))
    deadline = time.monotonic() + 30
    while bw.stats().running < WORKERS:  # wait until every worker is in a job
        if time.monotonic() > deadline:
            print(json.dumps({"error": "the workers never started their jobs"}), flush=True)
            return 1
        time.sleep(0.01)
    boss = psutil.Process(bw.boss_pid)
    workers = [p.pid for p in boss.children() if not _is_mp_helper(p)]
    descendants = [p.pid for p in psutil.Process().children(recursive=True)]
    report = {"main": os.getpid(), "boss": bw.boss_pid, "workers": workers, "descendants": descendants}
    print(json.dumps(report), flush=True)
    bw.get_result()  # the jobs take a minute; the test kills us long before
    print(json.dumps({"error": "a job finished: nobody killed us"}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())

"""A main program that forks after creating its pool; the test SIGKILLs it.

Usage: ``python main_forks_then_dies.py START_METHOD``

It starts a pool of two workers, gives each a job of a minute, forks a
child that holds every descriptor main has (main's end of the pool's
socket included) and sleeps a minute, and once both jobs run prints one
JSON line on stdout::

    {"main": pid, "boss": pid, "workers": [pid, ...], "child": pid, "forkserver": pid or null}

then blocks in ``get_result()`` until it is killed.  The child keeps main's
socket open, so the Boss cannot learn main's death from its socket.
"""

from __future__ import annotations

import json
import multiprocessing.forkserver
import os
import sys
import time

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import handlers  # noqa: E402
from bossworker import BossWorkerAsync  # noqa: E402

WORKERS = 2


def main() -> int:
    method = sys.argv[1]
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=WORKERS, start_method=method)
    bw.add_work(*({"seconds": 60} for _ in range(WORKERS)))
    deadline = time.monotonic() + 30
    while bw.stats().running < WORKERS:  # wait until every worker is in a job
        if time.monotonic() > deadline:
            print(json.dumps({"error": "the workers never started their jobs"}), flush=True)
            return 1
        time.sleep(0.01)
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
    # Under forkserver the workers are the fork server's children, not the
    # Boss's: take their pids from the Boss.
    workers = [int(pid) for pid in bw.stats().jobs_per_worker]
    forkserver = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    report = {
        "main": os.getpid(),
        "boss": bw.boss_pid,
        "workers": workers,
        "child": child,
        "forkserver": forkserver,
    }
    print(json.dumps(report), flush=True)
    bw.get_result()  # the jobs take a minute; the test kills us long before
    print(json.dumps({"error": "a job finished: nobody killed us"}), flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())

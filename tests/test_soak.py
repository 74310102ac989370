"""Soak test: a million tiny jobs while workers are SIGKILLed at random.

Not in the default run; select it with ``pytest -m slow tests/test_soak.py``.
Environment:

``BW_SOAK_JOBS``          how many jobs (default 1,000,000)
``BW_SOAK_START_METHOD``  fork (default) or spawn
``BW_SOAK_SEED``          the killer's random seed (default: random, printed)
``BW_SOAK_FORK_HELPERS``  1: every hundredth job forks (without exec) a helper
                          that holds its worker's descriptors for 0.5 s
                          (handlers.echo_forking_helpers); default 0

Checks that every job id comes back exactly once (its value, or the
``worker died`` ERROR for a job whose worker was killed under it, or the
``no worker could start`` ERROR when every worker was killed before it was
ready), that deaths mid-job never outnumber kills, and that the Boss's
memory does not keep growing; prints the figures.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from typing import Any

import psutil
import pytest

import handlers
from bossworker import BossWorkerAsync

DIED_SIGKILL = {"ERROR": "BossWorkerAsync: worker died (SIGKILL) while running this job"}
# A worker killed before it was ready counts as failing at start-up; when no
# worker is left, the Boss answers the queue with this (spawn makes the
# start-up window wide: ~100 ms per worker).
NO_WORKER = {"ERROR": "BossWorkerAsync: no worker could start: worker exited (SIGKILL) before it was ready"}
WORKERS = 3
BATCH = 1000  # jobs per add_work call
BACKLOG = 20_000  # at most this many jobs pending at once
MiB = 1024 * 1024


def _is_mp_helper(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


class Killer(threading.Thread):
    """SIGKILLs a random worker every 5-50 ms until stopped, sparing workers
    younger than ``min_age`` seconds (under spawn a worker needs ~0.2 s to
    start; a killer faster than that makes every worker die before it is
    ready, and the pool rightly answers the queue "no worker could start")."""

    def __init__(self, boss: psutil.Process, seed: int, min_age: float = 0.0) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.boss = boss
        self.min_age = min_age
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.kills = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.wait(self.rng.uniform(0.005, 0.05)):
                try:
                    workers = [
                        p
                        for p in self.boss.children()
                        if p.status() != psutil.STATUS_ZOMBIE
                        and not _is_mp_helper(p)
                        and time.time() - p.create_time() >= self.min_age
                    ]
                except psutil.Error:
                    continue
                if not workers:
                    continue
                try:
                    os.kill(self.rng.choice(workers).pid, signal.SIGKILL)
                    self.kills += 1
                except ProcessLookupError:
                    pass
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


@pytest.mark.slow
@pytest.mark.timeout(4 * 3600)
def test_soak_tiny_jobs_with_random_worker_kills(capsys: pytest.CaptureFixture[str]) -> None:
    jobs = int(os.environ.get("BW_SOAK_JOBS", "1000000"))
    method = os.environ.get("BW_SOAK_START_METHOD", "fork")
    seed = int(os.environ.get("BW_SOAK_SEED", str(random.randrange(2**32))))
    fork_helpers = os.environ.get("BW_SOAK_FORK_HELPERS", "0") == "1"
    handler = handlers.echo_forking_helpers if fork_helpers else handlers.echo
    outstanding: dict[int, int] = {}  # job id -> the value it must come back with
    results = died = no_worker = added = 0
    rss: list[tuple[int, int]] = []  # (results so far, Boss RSS)
    every = max(1, jobs // 20)
    start = time.monotonic()

    with BossWorkerAsync(handler, worker_count=WORKERS, start_method=method) as bw:
        boss = psutil.Process(bw.boss_pid)
        rss.append((0, boss.memory_info().rss))
        killer = Killer(boss, seed, min_age=0.0 if method == "fork" else 1.0)
        killer.start()
        try:
            while results < jobs:
                while added < jobs and len(outstanding) < BACKLOG:
                    values = range(added, min(jobs, added + BATCH))
                    for job_id, value in zip(bw.add_work(*values), values, strict=True):
                        assert job_id not in outstanding, f"id {job_id} handed out twice"
                        outstanding[job_id] = value
                    added += len(values)
                item = bw.get_result(timeout=60, with_id=True)
                assert item is not None, f"no result for 60 s; {len(outstanding)} outstanding"
                job_id, value = item
                expected = outstanding.pop(job_id, None)
                assert expected is not None, f"job {job_id} came back twice (or was never added)"
                if value == DIED_SIGKILL:
                    died += 1
                elif value == NO_WORKER:
                    no_worker += 1
                else:
                    assert value == expected, f"job {job_id}: {value!r}"
                results += 1
                if results % every == 0:
                    rss.append((results, boss.memory_info().rss))
        finally:
            killer.stop.set()
            killer.join(10)
        assert killer.error is None, killer.error
        end_rss = boss.memory_info().rss
        stats = bw.stats()

    elapsed = time.monotonic() - start
    report: dict[str, Any] = {
        "jobs": jobs,
        "start method": method,
        "fork helpers": fork_helpers,
        "seed": seed,
        "kills": killer.kills,
        "results": results,
        "errors (worker died)": died,
        "errors (no worker could start)": no_worker,
        "workers started": stats.workers_started,
        "Boss RSS start (MiB)": round(rss[0][1] / MiB, 1),
        "Boss RSS after 5% (MiB)": round(rss[1][1] / MiB, 1) if len(rss) > 1 else None,
        "Boss RSS peak (MiB)": round(max(r for _, r in rss) / MiB, 1),
        "Boss RSS end (MiB)": round(end_rss / MiB, 1),
        "seconds": round(elapsed, 1),
        "jobs/s": round(jobs / elapsed),
    }
    with capsys.disabled():
        print("\nsoak:", ", ".join(f"{k}: {v}" for k, v in report.items()))
        print("soak: Boss RSS (MiB) by results:", [(n, round(r / MiB, 1)) for n, r in rss])

    assert results == jobs
    assert not outstanding, f"{len(outstanding)} jobs never came back"
    assert died <= killer.kills
    assert stats.completed == jobs and stats.failed == died + no_worker
    assert killer.kills > 0
    # The Boss's memory does not keep growing: after warm-up (5% of the
    # jobs) it stays within a small margin, whatever the number of jobs.
    if len(rss) > 1:
        warm = rss[1][1]
        assert end_rss <= warm + 32 * MiB, f"Boss RSS grew from {warm / MiB:.1f} to {end_rss / MiB:.1f} MiB"

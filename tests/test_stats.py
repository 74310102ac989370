"""stats() snapshots and the bossworker logger."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from typing import Any

import pytest

import handlers
from bossworker import TIMED_OUT_ERROR, BossWorkerAsync, ShutDownError, Stats
from waiting import wait_until


def check_settled(s: Stats, added: list[int], received: list[Any]) -> None:
    """A snapshot taken once every job was answered and retrieved, checked
    against what this test itself added and received (Stats.from_boss derives
    ``queued`` from the other fields, so checking those against each other
    could hardly fail)."""
    errors = [r["ERROR"] for r in received if "ERROR" in r]
    assert s.added == len(added)
    assert s.completed == len(received)
    assert s.failed == len(errors)
    assert s.timed_out == errors.count(TIMED_OUT_ERROR)
    assert (s.queued, s.running) == (0, 0)


def test_stats_follow_the_work() -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=2, global_timeout=5) as bw:
        s = wait_until(lambda: (s := bw.stats()).workers_alive == 2 and s, 20, "two workers")
        assert (s.added, s.completed, s.failed, s.timed_out, s.queued, s.running) == (0, 0, 0, 0, 0, 0)
        assert s.workers_started == 2 and dict(s.jobs_per_worker) == dict.fromkeys(s.jobs_per_worker, 0)
        assert len(s.jobs_per_worker) == 2

        added = bw.add_work({"seconds": 1}, {"seconds": 1}, {"seconds": 0}, {"seconds": 0})
        s = wait_until(lambda: (s := bw.stats()).running == 2 and s, 20, "both workers busy")
        # Two workers run the two long jobs; the two short ones wait.
        assert s.added == 4 and s.completed == 0 and s.queued == 2

        received = list(bw.results())
        s = bw.stats()
        check_settled(s, added, received)
        # Every job ran in one of the two workers, which are still the first two.
        assert sum(s.jobs_per_worker.values()) == len(received) and s.workers_started == 2

        added += bw.add_work({"seconds": 20}, timeout=0.3)  # times out
        added += bw.add_work({"nope": 1})  # KeyError in the handler
        received += [bw.get_result(timeout=30) for _ in range(2)]
        assert all("ERROR" in r for r in received[-2:])
        s = bw.stats()
        check_settled(s, added, received)
        assert (s.added, s.completed, s.failed, s.timed_out) == (6, 6, 2, 1)

        with pytest.raises(dataclasses.FrozenInstanceError):
            s.added = 0  # type: ignore[misc]
        with pytest.raises(TypeError):
            s.jobs_per_worker[1] = 2  # type: ignore[index]
    with pytest.raises(ShutDownError):
        bw.stats()


def test_worker_starts_deaths_and_timeouts_are_logged() -> None:
    script = textwrap.dedent(
        """
        import logging, sys
        sys.path.insert(0, "tests")
        import handlers
        from bossworker import BossWorkerAsync
        logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        if __name__ == "__main__":
            with BossWorkerAsync(handlers.spin_with_alarm_blocked, worker_count=1, global_timeout=0.2) as bw:
                bw.add_work({"seconds": 10})
                bw.get_result(timeout=30)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert any(line.startswith("bossworker INFO worker") and "started" in line for line in lines)
    assert any(line.startswith("bossworker WARNING job 1 overran its deadline") for line in lines)
    # The kill is the job's warning; the exit it caused is told once, at INFO.
    assert any(line.startswith("bossworker INFO worker") and "exited (SIGKILL)" in line for line in lines)
    assert not any(line.startswith("bossworker WARNING worker") and "exited" in line for line in lines)

"""What a pool keeps and what it accepts (descriptors after shut_down, time
limits it cannot keep, and the dropped-pool warning): nothing after shut_down, no limit it cannot keep,
no work dropped without a word."""

from __future__ import annotations

import gc
import logging
import os

import pytest

import handlers
from bossworker import BossDiedError, BossWorkerAsync, InvalidArgumentError
from bossworker.checks import MAX_TIMEOUT


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(120)
def test_shut_down_pools_keep_no_descriptors(start_method: str) -> None:
    """Each shut-down pool used to keep its Boss's two sentinel fds
    until garbage collection; 500 kept pools exhausted a 1024-fd limit."""
    kept = []
    count = 30 if start_method == "fork" else 6
    # A first pool starts what lives on by design (spawn's resource tracker).
    with BossWorkerAsync(handlers.echo, worker_count=1, start_method=start_method):
        pass
    gc.collect()
    before = _open_fds()
    for _ in range(count):
        bw = BossWorkerAsync(handlers.echo, worker_count=1, start_method=start_method)
        bw.add_work(1)
        assert bw.get_result() == 1
        bw.shut_down()
        kept.append(bw)  # kept alive on purpose: no garbage collection helps
    assert _open_fds() - before == 0
    # Everything still answers sensibly after the handle was released.
    for bw in kept:
        bw.shut_down()
        bw.shut_down(force=True)
        assert bw.boss_pid > 0
        assert "BossWorkerAsync" in repr(bw)


def test_forced_stop_keeps_no_descriptors() -> None:
    gc.collect()
    before = _open_fds()
    kept = []
    for _ in range(10):
        bw = BossWorkerAsync(handlers.sleep_for, worker_count=1)
        bw.add_work({"seconds": 30})
        bw.shut_down(force=True)
        kept.append(bw)
    assert _open_fds() - before == 0


@pytest.mark.parametrize("seconds", [9.3e9, 1e10, 1e300, float("inf")])
def test_timeouts_beyond_the_platform_are_rejected(seconds: float) -> None:
    """Such limits used to be accepted, then every job failed with
    OverflowError; get_result(timeout=1e10) raised a raw OverflowError."""
    with pytest.raises(InvalidArgumentError, match=r"at most 1e\+09 seconds.*None or 0 for no limit"):
        BossWorkerAsync(handlers.echo, worker_count=1, global_timeout=seconds)
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        with pytest.raises(InvalidArgumentError, match="at most"):
            bw.add_work(1, timeout=seconds)
        with pytest.raises(InvalidArgumentError, match="at most"):
            bw.get_result(timeout=seconds)
        assert bw.pending() == 0  # nothing was queued by the refused call


def test_the_largest_timeout_is_honoured(start_method: str) -> None:
    """MAX_TIMEOUT itself works everywhere a limit is taken: in the worker's
    alarm, the Boss's deadline and main's wait."""
    with BossWorkerAsync(
        handlers.echo, worker_count=1, global_timeout=MAX_TIMEOUT, start_method=start_method
    ) as bw:
        bw.add_work("a")
        bw.add_work("b", timeout=MAX_TIMEOUT)
        got = {bw.get_result(timeout=MAX_TIMEOUT), bw.get_result(timeout=MAX_TIMEOUT)}
    assert got == {"a", "b"}


def test_a_dropped_pool_with_pending_work_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """A pool dropped without shut_down() discards its queued work: a
    ResourceWarning and a log WARNING name how many jobs were lost."""
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=1)
    bw.add_work(*[{"seconds": 30}] * 3)
    boss = bw.boss_pid
    with (
        caplog.at_level(logging.WARNING, logger="bossworker"),
        pytest.warns(ResourceWarning, match="3 pending"),
    ):
        del bw
        gc.collect()
    assert any("3 pending job(s) were discarded" in r.getMessage() for r in caplog.records)
    with pytest.raises(ProcessLookupError):
        os.kill(boss, 0)  # the Boss was stopped and reaped


def test_a_dropped_pool_without_pending_work_is_quiet() -> None:
    import warnings

    bw = BossWorkerAsync(handlers.echo, worker_count=1)
    bw.add_work(1)
    assert bw.get_result() == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        del bw
        gc.collect()


@pytest.mark.timeout(120)
def test_the_boss_keeps_nothing_of_workers_gone() -> None:
    """Recycling every worker after one job: the Boss's memory stays flat.
    (A worker's record, with its read buffer, was kept in a reference cycle
    until a full garbage collection: ~0.3 MiB per worker gone, 80 MiB after
    1,000 workers.)"""
    import psutil

    with BossWorkerAsync(handlers.echo, worker_count=2, max_jobs_per_worker=1) as bw:
        boss = psutil.Process(bw.boss_pid)
        bw.add_work(*range(100))
        assert sorted(bw.results()) == list(range(100))
        before = boss.memory_info().rss
        bw.add_work(*range(800))
        assert sorted(bw.results()) == list(range(800))
        grown = boss.memory_info().rss - before
        assert bw.stats().workers_started >= 900
    assert grown < 16 * 2**20, f"the Boss grew by {grown / 2**20:.1f} MiB over 800 workers"


def test_a_boss_that_fails_while_serving_says_why_in_main(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure inside the Boss's loop after READY: main gets BossDiedError,
    and the Boss's own record of why (with its traceback) reaches main's
    logging, although log forwarding only queues records for main.  The
    failure is injected into the fleet before the fork, so only the forked
    Boss (which inherits it) has it."""
    from bossworker.boss import local

    real_dispatch = local.LocalFleet.dispatch

    def failing_dispatch(self: local.LocalFleet) -> None:
        if self.queue:
            raise RuntimeError("injected failure in the Boss's loop")
        real_dispatch(self)

    monkeypatch.setattr(local.LocalFleet, "dispatch", failing_dispatch)
    with caplog.at_level(logging.INFO, logger="bossworker"):
        bw = BossWorkerAsync(handlers.echo, worker_count=1, start_method="fork")
        try:
            bw.add_work("a")
            with pytest.raises(BossDiedError):
                bw.get_result(timeout=30)
        finally:
            bw.shut_down(force=True)
    failed = [r for r in caplog.records if r.getMessage() == "the Boss failed"]
    assert failed, [r.getMessage() for r in caplog.records]
    assert "injected failure in the Boss's loop" in (failed[0].exc_text or "")

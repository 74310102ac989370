"""The asyncio front end, with real processes (issue 5, part 2)."""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

import handlers
from bossworker import BossWorkerAsync, NoPendingResultsError, ShutDownError


def test_async_with_add_and_collect() -> None:
    async def main() -> list[int]:
        async with BossWorkerAsync(handlers.multiply, worker_count=2) as bw:
            ids = await bw.aadd_work(*({"a": i, "b": 3} for i in range(30)))
            bw.add_work({"a": 100, "b": 3})  # the plain call works in async code too
            got = {i: r["product"] async for i, r in bw.aresults(with_id=True)}
            assert bw.pending() == 0
            assert [got[i] for i in ids] == [3 * i for i in range(30)]
            return sorted(got.values())

    assert asyncio.run(main())[-1] == 300


def test_waiting_never_blocks_the_event_loop() -> None:
    async def main() -> tuple[int, float]:
        ticks = 0
        stop = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0.01)

        async with BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
            task = asyncio.create_task(ticker())
            bw.add_work({"seconds": 0.6})
            result = await bw.aget_result()
            stop.set()
            await task
        return ticks, result["slept"]

    ticks, slept = asyncio.run(main())
    assert slept == 0.6
    assert ticks >= 10  # the loop kept running while we waited (~60 ticks when idle)


def test_cancelled_wait_loses_nothing() -> None:
    async def main() -> None:
        async with BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
            (job,) = bw.add_work({"seconds": 0.5})
            waiting = asyncio.create_task(bw.aget_result(with_id=True))
            done, _ = await asyncio.wait({waiting}, timeout=0.1)
            assert not done
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert bw.pending() == 1
            assert await bw.aget_result(timeout=30, with_id=True) == (
                job,
                {"slept": 0.5, "pid": pytest.approx(0, abs=10**9)},
            )
            assert bw.pending() == 0

    asyncio.run(main())


def test_many_tasks_wait_at_once() -> None:
    async def main() -> None:
        async with BossWorkerAsync(handlers.echo, worker_count=2) as bw:
            waiters = [asyncio.create_task(bw.aget_result(timeout=30, with_id=True)) for _ in range(5)]
            await asyncio.sleep(0)  # let them all start waiting
            ids = bw.add_work(*range(5))
            got = await asyncio.gather(*waiters)
            assert sorted(i for i, _ in got) == ids
            assert sorted(v for _, v in got) == list(range(5))
            assert bw.pending() == 0

    asyncio.run(main())


def test_timeouts_and_non_blocking() -> None:
    async def main() -> None:
        async with BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
            with pytest.raises(NoPendingResultsError):
                await bw.aget_result()
            assert await bw.aget_result(blocking=False) is None
            bw.add_work({"seconds": 1})
            start = time.monotonic()
            assert await bw.aget_result(timeout=0.1) is None
            assert time.monotonic() - start < 1
            assert (await bw.aget_result(timeout=30))["slept"] == 1

    asyncio.run(main())


def test_graceful_async_shutdown_keeps_results() -> None:
    async def main() -> None:
        bw = BossWorkerAsync(handlers.sleep_for, worker_count=2)
        boss = psutil.Process(bw.boss_pid)
        bw.add_work(*({"seconds": 0.05} for _ in range(6)))
        await bw.ashut_down()
        assert not boss.is_running()
        assert [r["slept"] async for r in bw.aresults()] == [0.05] * 6
        with pytest.raises(ShutDownError):
            await bw.aadd_work({"seconds": 0})
        await bw.ashut_down()  # harmless

    asyncio.run(main())


def test_async_with_forces_on_exception() -> None:
    async def main() -> None:
        with pytest.raises(RuntimeError):
            async with BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
                bw.add_work({"seconds": 30})
                boss = psutil.Process(bw.boss_pid)
                raise RuntimeError("boom")
        assert bw.pending() == 0
        assert not boss.is_running()

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 5


def test_big_payload_through_aadd_work() -> None:
    big = b"x" * (8 * 1024 * 1024)

    async def main() -> None:
        async with BossWorkerAsync(handlers.echo, worker_count=2) as bw:
            await bw.aadd_work(big, big)
            assert [len(r) async for r in bw.aresults()] == [len(big)] * 2

    asyncio.run(main())

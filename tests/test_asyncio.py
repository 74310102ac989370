"""The asyncio front end, with real processes."""

from __future__ import annotations

import asyncio
import threading
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


# -- lost wake-ups, stale readers, several loops ---------------------------


@pytest.mark.timeout(100)
def test_gathered_waiters_are_all_woken(start_method: str) -> None:
    """A task that reads the socket itself must wake the others."""
    runs = 30 if start_method == "fork" else 4
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        for run in range(runs):

            async def main(run: int = run) -> tuple[list[int], list[tuple[int, int]]]:
                ids = await bw.aadd_work(*range(200)) if run % 2 else bw.add_work(*range(200))
                waiters = asyncio.gather(*(bw.aget_result(with_id=True) for _ in range(200)))
                return ids, await asyncio.wait_for(waiters, 20)

            ids, got = asyncio.run(main())  # a fresh event loop every time
            assert sorted(i for i, _ in got) == ids
            assert sorted(v for _, v in got) == list(range(200))
            assert bw.pending() == 0


async def _next_pool_wakes(value: int) -> None:
    """A pool made in this loop after another closed (likely on the same
    descriptor number) wakes a task waiting on it."""
    bw = BossWorkerAsync(handlers.echo, worker_count=1)
    try:
        waiting = asyncio.create_task(bw.aget_result(timeout=10))
        await asyncio.sleep(0)  # parked before the result can come
        bw.add_work(value)
        assert await waiting == value
    finally:
        await bw.ashut_down()


@pytest.mark.timeout(100)
@pytest.mark.parametrize("how", ["ashut_down", "shut_down_in_loop", "async_with", "force_from_thread"])
def test_waiters_when_the_socket_closes(how: str) -> None:
    """No ValueError from a closed socket's reader, every waiter gets
    its answer, and the loop keeps no registration that would starve the
    next pool to get the same descriptor number."""

    async def round_of() -> None:
        bw = BossWorkerAsync(handlers.sleep_for, worker_count=2)
        if how == "async_with":
            async with bw:
                await bw.aadd_work(*({"seconds": 0.01} for _ in range(4)))
                consumer = asyncio.create_task(_collect(bw))
                await asyncio.sleep(0)  # the consumer waits; we leave the block
            assert await consumer == [0.01] * 4
            return
        bw.add_work(*({"seconds": 30 if how == "force_from_thread" else 0.01} for _ in range(4)))
        waiters = [asyncio.create_task(bw.aget_result()) for _ in range(6)]
        await asyncio.sleep(0)
        if how != "force_from_thread":
            if how == "ashut_down":
                await asyncio.create_task(bw.ashut_down())
            else:
                bw.shut_down()  # blocking: the waiters run only once the socket is closed
            got = await asyncio.gather(*waiters, return_exceptions=True)
            # Four get the results; two are told nothing is pending any more.
            assert sorted(type(g).__name__ for g in got) == ["NoPendingResultsError"] * 2 + ["dict"] * 4
        else:
            stopper = threading.Thread(target=bw.shut_down, kwargs={"force": True})
            stopper.start()
            got = await asyncio.gather(*waiters, return_exceptions=True)
            stopper.join(10)
            assert [type(g) for g in got] == [ShutDownError] * 6

    async def main() -> None:
        for value in range(8):
            await round_of()
            await _next_pool_wakes(value)

    asyncio.run(asyncio.wait_for(main(), 80))


async def _collect(bw: BossWorkerAsync) -> list[float]:
    return [r["slept"] async for r in bw.aresults()]


@pytest.mark.timeout(60)
def test_two_event_loops_in_two_threads() -> None:
    """Each loop gets its own registration and is woken from its own
    thread (debug mode raises on a future resolved from another thread)."""
    with BossWorkerAsync(handlers.sleep_for, worker_count=2) as bw:
        for round_ in range(16):
            jobs = 1 + round_ % 2
            bw.add_work(*({"seconds": 0.1} for _ in range(jobs)))
            outcomes: list[object] = [None, None]

            def run(i: int, outcomes: list[object] = outcomes) -> None:
                async def wait() -> object:
                    return await asyncio.wait_for(bw.aget_result(), 10)

                try:
                    outcomes[i] = asyncio.run(wait(), debug=True)
                except Exception as exc:  # noqa: BLE001 - the outcome is the test
                    outcomes[i] = exc

            threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
                assert not thread.is_alive()
            kinds = sorted(type(o).__name__ for o in outcomes)
            # With one job, one loop gets it and the other must be told
            # nothing is pending; with two, each gets one.
            assert kinds == (["NoPendingResultsError", "dict"] if jobs == 1 else ["dict", "dict"]), outcomes
            assert bw.pending() == 0


@pytest.mark.timeout(60)
def test_aget_result_timeout_zero_polls() -> None:
    """Timeout=0 reads what is there."""

    async def main() -> None:
        async with BossWorkerAsync(handlers.echo, worker_count=2) as bw:
            bw.add_work(*range(10))
            got: list[int] = []
            deadline = time.monotonic() + 20
            while len(got) < 10 and time.monotonic() < deadline:
                result = await bw.aget_result(timeout=0)
                if result is not None:
                    got.append(result)
                else:
                    await asyncio.sleep(0.001)
            assert sorted(got) == list(range(10))

    asyncio.run(main())

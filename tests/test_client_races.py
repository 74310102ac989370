"""Main-side races and lost signals, with real processes: polling with
timeout=0, a cancelled aadd_work(), results that outlive the Boss, a forced
stop seen by waiters.  The asyncio ones are in test_asyncio.py.

A few tests look at the client's private state, only to know when a thread is
really blocked or when results really sit in main's socket: the scenarios are
about those exact moments.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import threading
import time
from typing import Any

import psutil
import pytest

import handlers
from bossworker import BossDiedError, BossWorkerAsync, NoPendingResultsError, ShutDownError
from bossworker.protocol import HEADER, HEADER_SIZE, Kind
from waiting import wait_until


def _in_function(thread: threading.Thread, name: str) -> bool:
    """``thread`` is running (blocked in) a function called ``name``."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == name:
            return True
        frame = frame.f_back
    return False


def _frames_in_socket(bw: BossWorkerAsync) -> int:
    """How many complete RESULT frames wait, unread, in main's socket."""
    sock: socket.socket = bw._client._sock
    try:
        data = sock.recv(1 << 20, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return 0
    count = offset = 0
    while offset + HEADER_SIZE <= len(data):
        kind, _flags, length, _job, _timeout = HEADER.unpack_from(data, offset)
        offset += HEADER_SIZE + length
        if offset <= len(data) and kind == Kind.RESULT:
            count += 1
    return count


# -- get_result(timeout=0) polls -------------------------------------


@pytest.mark.timeout(60)
def test_get_result_timeout_zero_reads_the_socket(start_method: str) -> None:
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        for _round in range(5):
            bw.add_work(*range(10))
            got: list[Any] = []

            def poll_once(got: list[Any] = got) -> bool:
                # Nothing but get_result(timeout=0) reads here: if it never
                # looked at the socket, no result would ever arrive.
                result = bw.get_result(timeout=0)
                if result is not None:
                    got.append(result)
                return len(got) == 10

            wait_until(poll_once, timeout=20, what="10 results by get_result(timeout=0)")
            assert sorted(got) == list(range(10))
        assert bw.pending() == 0


# -- a cancelled aadd_work() strands nothing ------------------------------


@pytest.mark.timeout(90)
def test_cancelled_aadd_work_is_sent_by_the_next_reader(start_method: str) -> None:
    job = b"x" * (200 * 1024)  # below the /dev/shm threshold: travels in the socket
    with BossWorkerAsync(handlers.length_of, worker_count=2, start_method=start_method) as bw:
        for blocking_reader in (True, False, True):
            boss = psutil.Process(bw.boss_pid)
            boss.suspend()  # the socket fills: aadd_work has to wait, and is cancelled there
            try:

                async def add() -> None:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(bw.aadd_work(*[job] * 40), 0.2)

                asyncio.run(add())
                assert bw.pending() == 40  # queued, partly unsent
            finally:
                boss.resume()
            if blocking_reader:
                got = [bw.get_result(timeout=30) for _ in range(40)]
            else:

                async def collect() -> list[Any]:
                    return [await bw.aget_result(timeout=30) for _ in range(40)]

                got = asyncio.run(collect())
            assert got == [len(job)] * 40
            assert bw.pending() == 0


# -- results in main's socket survive the Boss's death ----------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize("first_call", ["add_work", "stats", "shut_down"])
def test_results_in_the_socket_survive_the_boss_death(start_method: str, first_call: str) -> None:
    for _ in range(2 if start_method == "fork" else 1):
        bw = BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method)
        bw.add_work(*range(5))
        wait_until(lambda bw=bw: _frames_in_socket(bw) == 5, timeout=20, what="5 results in main's socket")
        boss = psutil.Process(bw.boss_pid)
        workers = boss.children()
        boss.kill()
        # A worker still starting may hold a copy of the Boss's end for a
        # moment (a send would still succeed): wait for every holder to go.
        _gone, alive = psutil.wait_procs([boss, *workers], timeout=10)
        assert not alive
        if first_call == "add_work":
            with pytest.raises(BossDiedError):
                bw.add_work(99)  # the send hits EPIPE
        elif first_call == "stats":
            with pytest.raises(BossDiedError):
                bw.stats()
        else:
            with pytest.raises(BossDiedError, match="5 result"):
                bw.shut_down()  # it reports the Boss's death; the results stay
        assert bw.pending() == 5
        assert sorted(bw.get_result() for _ in range(5)) == list(range(5))
        with pytest.raises(NoPendingResultsError):
            bw.get_result()
        bw.shut_down()


# -- a forced stop is a ShutDownError to waiters -----------------------------


@pytest.mark.timeout(100)
def test_forced_stop_raises_shut_down_error_in_waiting_threads(start_method: str) -> None:
    rounds = 30 if start_method == "fork" else 3
    for _ in range(rounds):
        bw = BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method)
        bw.add_work(*({"seconds": 30} for _ in range(4)))
        outcomes: list[object] = []

        def wait(timeout: float | None, bw: BossWorkerAsync = bw, outcomes: list[object] = outcomes) -> None:
            # A caller looping on get_result() must never see None from a
            # blocking call without timeout, nor be told the Boss died.
            try:
                while True:
                    value = bw.get_result(timeout=timeout)
                    outcomes.append(value)
                    if value is None and timeout is None:
                        return
            except Exception as exc:  # noqa: BLE001 - what it is, is the test
                outcomes.append(exc)

        threads = [threading.Thread(target=wait, args=(t,)) for t in (None, None, 30.0)]
        for thread in threads:
            thread.start()
        for thread in threads:
            wait_until(lambda t=thread: _in_function(t, "wait_for"), timeout=10, what="a blocked waiter")
        bw.shut_down(force=True)
        for thread in threads:
            thread.join(10)
            assert not thread.is_alive()
        assert [type(o) for o in outcomes] == [ShutDownError] * 3, outcomes
        assert bw.pending() == 0
        with pytest.raises(NoPendingResultsError):
            bw.get_result()  # after the stop, nothing is pending
        assert bw.get_result(timeout=0.01) is None


@pytest.mark.timeout(60)
def test_forced_stop_raises_shut_down_error_in_waiting_tasks() -> None:
    for how in ["thread", "task"] * 10:

        async def main(how: str = how) -> list[BaseException | Any]:
            bw = BossWorkerAsync(handlers.sleep_for, worker_count=2)
            bw.add_work(*({"seconds": 30} for _ in range(3)))
            waiters = [asyncio.create_task(bw.aget_result(timeout=t)) for t in (None, None, 30)]
            for _ in range(3):
                await asyncio.sleep(0)  # every waiter is now parked on its future
            if how == "thread":
                stopper = threading.Thread(target=bw.shut_down, kwargs={"force": True})
                stopper.start()
                got = await asyncio.gather(*waiters, return_exceptions=True)
                stopper.join(10)
            else:
                await bw.ashut_down(force=True)
                got = await asyncio.gather(*waiters, return_exceptions=True)
            assert bw.pending() == 0
            return got

        got = asyncio.run(asyncio.wait_for(main(), 20))
        assert [type(g) for g in got] == [ShutDownError] * 3, (how, got)


def test_forced_stop_ends_stats_waiters_with_shut_down_error() -> None:
    bw = BossWorkerAsync(handlers.echo, worker_count=1)
    os.kill(bw.boss_pid, signal.SIGSTOP)  # the reply never comes
    try:
        outcome: list[object] = []

        def ask() -> None:
            try:
                outcome.append(bw.stats())
            except Exception as exc:  # noqa: BLE001
                outcome.append(exc)

        thread = threading.Thread(target=ask)
        thread.start()
        wait_until(lambda: _in_function(thread, "wait_for"), timeout=10, what="stats() waiting")
        start = time.monotonic()
        bw.shut_down(force=True)  # SIGTERM is held for a stopped Boss; SIGKILL is not
        thread.join(10)
        assert time.monotonic() - start < 10
        assert [type(o) for o in outcome] == [ShutDownError]
    finally:
        with contextlib.suppress(psutil.Error):
            psutil.Process(bw.boss_pid).resume()  # only if the test failed early

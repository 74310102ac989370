"""bossworker.Executor: the concurrent.futures contract on real processes.

Written from the standard library's documented behaviour, plus where we
differ on purpose (dead workers, time limits, kill, cancel in the Boss).
Workers are held still with files (tasks.block), never with sleeps.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import gc
import glob
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import executor_tasks as tasks
from bossworker import (
    BossDiedError,
    BossWorkerAsync,
    BossWorkerError,
    Executor,
    InvalidArgumentError,
    RemoteTraceback,
    SerializationError,
    ShutDownError,
    TaskError,
    TaskTimeoutError,
    WorkerDiedError,
    WorkerInitError,
)
from bossworker.answers import value as result_value
from bossworker.boss.core import PERSISTENT_FAILURES, boss_answer
from bossworker.boss.link import WorkerLink
from bossworker.errors import no_worker_could_start_error, worker_died_error
from bossworker.jobs import error_text
from bossworker.outcome import error_from_answer
from bossworker.payload import Segments, new_prefix
from bossworker.protocol import InitFailure
from test_boss_core import frames, job, new_core, sent
from waiting import Gate, wait_until

ROOT = Path(__file__).resolve().parent.parent




def blocked(ex: Executor, gate: Gate, value: Any = None) -> cf.Future[Any]:
    """Submit a task that holds its worker until ``gate`` opens; wait until it runs."""
    future = ex.submit(tasks.block, *gate.args(value))
    gate.wait_started()
    return future


# -- futures: states, methods, values ----------------------------------------------


@pytest.mark.timeout(60)
def test_future_states_methods_and_values(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(2, start_method=start_method) as ex:
        assert isinstance(ex, cf.Executor)
        f = ex.submit(tasks.block, *gate.args("done"))
        assert isinstance(f, cf.Future)
        gate.wait_started()
        assert not f.done() and not f.cancelled() and not f.running()
        with pytest.raises(cf.TimeoutError):
            f.result(timeout=0.05)
        with pytest.raises(cf.TimeoutError):
            f.exception(timeout=0.05)
        called: list[tuple[cf.Future[Any], str]] = []
        f.add_done_callback(lambda fut: called.append((fut, threading.current_thread().name)))
        gate.open()
        assert f.result(timeout=20) == "done"
        assert f.done() and not f.cancelled() and not f.running() and f.exception() is None
        wait_until(lambda: called, 5, "the done callback")
        assert called[0][0] is f and called[0][1] != threading.current_thread().name  # the collector
        # A callback added to a done future runs at once, in the caller's thread.
        f.add_done_callback(lambda fut: called.append((fut, threading.current_thread().name)))
        assert called[1][1] == threading.current_thread().name
        # Several arguments, keywords, None and a dict that says ERROR stay values.
        assert ex.submit(tasks.add, 1, 2, c=3).result(timeout=20) == 6
        assert ex.submit(tasks.return_none).result(timeout=20) is None
        assert ex.submit(tasks.return_error_dict).result(timeout=20) == {
            "ERROR": "this is a value, not a failure"
        }
        assert ex.submit(tasks.square, x=7).result(timeout=20) == 49
        assert ex.max_workers == 2 and ex.start_method == start_method


@pytest.mark.timeout(60)
def test_exceptions_keep_their_type_and_the_remote_traceback(start_method: str) -> None:
    with Executor(2, start_method=start_method) as ex:
        with pytest.raises(ValueError, match="rattle") as info:
            ex.submit(tasks.raise_value_error, "rattle").result(timeout=20)
        cause = info.value.__cause__
        assert isinstance(cause, RemoteTraceback)
        assert "raise_value_error" in str(cause) and "raise ValueError(message)" in str(cause)
        # The task's own type, attributes included; exception() returns it.
        error = ex.submit(tasks.raise_custom, "custom", 42).exception(timeout=20)
        assert type(error) is tasks.CustomError and error.code == 42
        assert isinstance(error.__cause__, RemoteTraceback)
        # One that cannot be pickled arrives as ours, with its text and traceback.
        error = ex.submit(tasks.raise_unpicklable, "held a lock").exception(timeout=20)
        assert isinstance(error, TaskError) and not isinstance(error, tasks.UnpicklableError)
        assert error.type_name == "executor_tasks.UnpicklableError"
        assert "UnpicklableError: held a lock" in str(error)
        assert "raise_unpicklable" in str(error.__cause__)
        # BaseExceptions travel too, as in the standard library.
        with pytest.raises(SystemExit):
            ex.submit(tasks.raise_system_exit, 3).result(timeout=20)
        # The task's own TimeoutError is not one of our time limits.
        error = ex.submit(tasks.raise_timeout_error).exception(timeout=20)
        assert type(error) is TimeoutError and not isinstance(error, TaskTimeoutError)
        # Pickling failures: the arguments (in main), the result (in the worker).
        f = ex.submit(tasks.square, threading.Lock())
        assert isinstance(f.exception(timeout=1), SerializationError)
        error = ex.submit(tasks.unpicklable_result).exception(timeout=20)
        assert isinstance(error, SerializationError) and "could not be pickled" in str(error)
        # The pool carries on.
        assert ex.submit(tasks.square, 9).result(timeout=20) == 81


def test_the_answers_the_engine_writes_become_the_exceptions_a_future_raises() -> None:
    """Each failure the Boss reports on a task's behalf, made by the code
    that makes it (the worker link for a death, the Boss's core for "no
    worker could start"), becomes the documented exception in main, with the
    engine's text unchanged for ``get_result()``.  (Real-process tests cover
    each end to end, and the worker's unpicklable result, above.)"""
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.take_jobs(deque([job(1)]), 1, now=0.0)
    head, fate, _ = link.take_jobs_back("SIGKILL", -signal.SIGKILL)
    assert head is not None and fate is not None
    (died,) = frames(boss_answer(head.job_id, fate.kind, fate.text, fate.flags, 7, 0.5, fate.facts))
    error = error_from_answer(died, 0.0, "task")
    assert isinstance(error, WorkerDiedError) and (error.reason, error.exitcode) == ("SIGKILL", -9)
    assert result_value(died, Segments(None)) == {"ERROR": worker_died_error("SIGKILL")}

    core, fleet = new_core(worker_count=1)
    core.worker_ready()
    sent(core)
    core.receive(frames(job(2)))
    fleet.alive = False
    for _ in range(PERSISTENT_FAILURES):
        core.worker_start_failed("init fails", InitFailure.WORKERS, killed=False)
    (no_worker,) = sent(core)
    error = error_from_answer(no_worker, 0.0, "task")
    assert isinstance(error, WorkerInitError) and "init fails" in str(error)
    assert error_text(no_worker) == no_worker_could_start_error("init fails")


# -- wait() and as_completed() ----------------------------------------------------------


@pytest.mark.timeout(60)
def test_wait_and_as_completed(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(2, start_method=start_method) as ex:
        slow = blocked(ex, gate, "slow")
        quick = ex.submit(tasks.square, 3)
        done, not_done = cf.wait([slow, quick], timeout=20, return_when=cf.FIRST_COMPLETED)
        assert done == {quick} and not_done == {slow}
        done, not_done = cf.wait([slow, quick], timeout=0.05, return_when=cf.ALL_COMPLETED)
        assert done == {quick} and not_done == {slow}
        failing = ex.submit(tasks.raise_value_error, "first")
        done, not_done = cf.wait([slow, failing], timeout=20, return_when=cf.FIRST_EXCEPTION)
        assert done == {failing} and not_done == {slow}
        with pytest.raises(cf.TimeoutError):
            list(cf.as_completed([slow, quick], timeout=0.1))
        order: list[cf.Future[Any]] = []
        more = [ex.submit(tasks.square, i) for i in range(10)]
        for f in cf.as_completed([slow, *more], timeout=20):
            order.append(f)
            if len(order) == 10:
                gate.open()  # the slow one can only come last
        assert order[-1] is slow and set(order[:10]) == set(more)
        done, not_done = cf.wait([slow, quick, failing, *more], timeout=20)
        assert not not_done and len(done) == 13


# -- cancel -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancel_takes_tasks_back_from_the_boss_queue(start_method: str, tmp_path: Path) -> None:
    """One worker held by a task; five more wait in the Boss: they cancel, the
    running one does not, and no result ever comes for a cancelled one."""
    gate = Gate(tmp_path)
    with Executor(1, start_method=start_method) as ex:
        running = blocked(ex, gate, "ran")
        queued = [ex.submit(tasks.square, i) for i in range(5)]
        waiter_saw: list[set[cf.Future[Any]]] = []
        waiter = threading.Thread(
            target=lambda: waiter_saw.append(cf.wait(queued, timeout=20, return_when=cf.ALL_COMPLETED)[0])
        )
        waiter.start()
        assert [f.cancel() for f in queued] == [True] * 5
        assert all(f.cancelled() and f.done() for f in queued)
        with pytest.raises(cf.CancelledError):
            queued[0].result()
        waiter.join(20)
        assert waiter_saw == [set(queued)]  # wait() woke for cancelled futures
        assert list(cf.as_completed(queued, timeout=1)) != []
        assert queued[0].cancel()  # again: still True
        assert not running.cancel() and running.running()  # a worker has it
        stats = ex.pool.stats()
        assert stats.cancelled == 5 and stats.queued == 0 and stats.running == 1
        gate.open()
        assert running.result(timeout=20) == "ran"
        assert ex.submit(tasks.square, 4).result(timeout=20) == 16
        assert ex.pool.pending() == 0  # cancelled jobs no longer count


@pytest.mark.timeout(90)
def test_cancel_racing_completion_never_loses_or_doubles(start_method: str) -> None:
    """Cancel tiny tasks as they run, 300 times: each future ends exactly once,
    cancelled or with its own result, and nothing stays pending."""
    with Executor(2, start_method=start_method) as ex:
        outcomes = {"cancelled": 0, "done": 0}
        for i in range(300):
            f = ex.submit(tasks.square, i)
            if f.cancel():
                outcomes["cancelled"] += 1
                assert f.cancelled()
            else:
                assert f.result(timeout=20) == i * i
                outcomes["done"] += 1
        assert outcomes["cancelled"] + outcomes["done"] == 300
        wait_until(lambda: ex.pool.pending() == 0, 10, "pending() to reach 0")
        assert ex.submit(tasks.square, 5).result(timeout=20) == 25


@pytest.mark.timeout(60)
def test_cancel_from_several_threads_at_once(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(1) as ex:
        running = blocked(ex, gate)
        queued = [ex.submit(tasks.square, i) for i in range(40)]
        answers: list[bool] = []
        lock = threading.Lock()

        def cancel_all() -> None:
            mine = [f.cancel() for f in queued]
            with lock:
                answers.extend(mine)

        threads = [threading.Thread(target=cancel_all) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert answers == [True] * 160 and all(f.cancelled() for f in queued)
        gate.open()
        running.result(timeout=20)


@pytest.mark.skipif(
    new_prefix() is None, reason="big payloads travel inline without /dev/shm and on the portable path"
)
@pytest.mark.timeout(60)
def test_cancel_frees_a_queued_tasks_shared_memory_segment(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(1) as ex:
        running = blocked(ex, gate)
        big = ex.submit(len, b"x" * (1024 * 1024))  # travels through /dev/shm
        prefix = ex.pool._client.segments.prefix
        assert prefix is not None and glob.glob(glob.escape(prefix) + "*")
        assert big.cancel()
        assert glob.glob(glob.escape(prefix) + "*") == []
        gate.open()
        running.result(timeout=20)


# -- map ------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_map_keeps_input_order_and_surfaces_exceptions_in_place(start_method: str) -> None:
    with Executor(3, start_method=start_method) as ex:
        # Later items finish first: the order must still be the input's.
        delays = [0.2, 0.0, 0.1, 0.0, 0.05, 0.0]
        assert list(ex.map(tasks.sleep_then, delays, range(6))) == list(range(6))
        assert list(ex.map(tasks.add, range(5), range(5))) == [0, 2, 4, 6, 8]
        assert list(ex.map(tasks.square, [])) == []
        # chunksize batches calls: same results, same order.
        assert list(ex.map(tasks.square, range(50), chunksize=7)) == [i * i for i in range(50)]
        results = ex.map(tasks.fail_at, range(10), itertools.repeat(4))
        assert [next(results) for _ in range(4)] == [0, 1, 2, 3]
        with pytest.raises(ValueError, match="bad item 4"):
            next(results)
        # An item that cannot be pickled fails in place, like a task's exception.
        results = ex.map(tasks.square, [1, threading.Lock(), 3])
        assert next(results) == 1
        with pytest.raises(SerializationError):
            next(results)
        # With chunks, the failing item fails its chunk (items 3..5 here).
        results = ex.map(tasks.fail_at, range(9), itertools.repeat(4), chunksize=3)
        assert [next(results) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match="bad item 4"):
            next(results)


@pytest.mark.timeout(60)
def test_map_timeout_counts_from_the_call(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    with Executor(2, start_method=start_method) as ex:
        started = time.monotonic()
        results = ex.map(tasks.block, [str(gate.started)], [str(gate.release)], timeout=0.5)
        gate.wait_started()
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert 0.4 < time.monotonic() - started < 5
        gate.open()


@pytest.mark.timeout(60)
def test_map_with_buffersize_reads_an_endless_generator_lazily(start_method: str) -> None:
    pulled = 0

    def endless() -> Iterator[int]:
        nonlocal pulled
        for i in itertools.count():
            pulled += 1
            yield i

    with Executor(2, start_method=start_method) as ex:
        results = ex.map(tasks.square, endless(), buffersize=8)
        assert pulled <= 8  # submitted at the call, no more
        for n, value in enumerate(itertools.islice(results, 2000)):
            assert value == n * n
            assert pulled - (n + 1) < 8, "more than buffersize tasks were in flight"
        results.close()  # leaving the loop cancels what no worker has yet
        wait_until(lambda: ex.pool.pending() == 0, 10, "the leftover tasks to be cancelled or done")
        assert pulled <= 2000 + 8


@pytest.mark.timeout(60)
def test_leaving_map_early_cancels_what_has_not_started() -> None:
    with Executor(1) as ex:
        results = ex.map(tasks.sleep_then, [0.1] * 100, range(100))
        for value in results:
            assert value == 0
            break  # the loop drops the generator: its cleanup cancels the rest
        del results
        stats = ex.pool.stats()
        # At most the one a worker has (or was sent ahead) escapes the cancel.
        assert stats.cancelled >= 97 and stats.cancelled + stats.completed + stats.running == 100


# -- initializer ----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_initializer_gets_multiprocessing_objects(start_method: str) -> None:
    """A Queue, Lock, Value and Event in initargs, under fork and spawn."""
    ctx = multiprocessing.get_context(start_method)
    queue, lock, value, event = ctx.Queue(), ctx.Lock(), ctx.Value("i", 0), ctx.Event()
    with Executor(
        2, mp_context=ctx, initializer=tasks.init_store, initargs=(queue, lock, value, event)
    ) as ex:
        assert ex.start_method == start_method
        assert sorted(ex.map(tasks.use_shared, range(20))) == list(range(20))
        got = sorted(queue.get(timeout=20) for _ in range(20))
    assert got == list(range(20))
    assert value.value == 20 and event.is_set()
    queue.close()
    queue.join_thread()


@pytest.mark.timeout(60)
def test_a_spawned_pool_takes_a_queue_in_its_handler_state() -> None:
    """The engine itself, not only the Executor: the spawn pre-check used to
    reject a Queue with a message about lambdas."""
    queue = multiprocessing.get_context("spawn").Queue()
    handler = functools.partial(tasks.put_into, queue)
    with BossWorkerAsync(handler, worker_count=1, start_method="spawn") as bw:
        bw.add_work(*range(5))
        assert sorted(bw.results()) == list(range(5))
        assert sorted(queue.get(timeout=20) for _ in range(5)) == list(range(5))
    queue.close()
    queue.join_thread()


def test_a_fork_context_queue_under_spawn_is_refused_clearly() -> None:
    queue = multiprocessing.get_context("fork").Queue()
    with pytest.raises(SerializationError, match=r"get_context\('spawn'\)"):
        Executor(1, start_method="spawn", initializer=tasks.init_store, initargs=(queue, None, None, None))
    queue.close()
    queue.join_thread()


@pytest.mark.timeout(60)
def test_failing_initializer_fails_the_constructor(start_method: str) -> None:
    with pytest.raises(WorkerInitError, match="init exploded"):
        Executor(2, start_method=start_method, initializer=tasks.init_fail)


@pytest.mark.timeout(60)
def test_tasks_fail_with_worker_init_error_when_no_replacement_can_start(tmp_path: Path) -> None:
    with Executor(1, initializer=tasks.init_once, initargs=(str(tmp_path / "marker"),)) as ex:
        assert isinstance(ex.submit(tasks.die, "kill").exception(timeout=20), WorkerDiedError)
        error = ex.submit(tasks.square, 2).exception(timeout=40)
        assert isinstance(error, WorkerInitError) and "init fails from now on" in str(error)


def test_max_workers_defaults_to_the_cpus_we_may_use() -> None:
    expected = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    with Executor() as ex:
        assert ex.max_workers == expected
        assert ex.pool.stats().workers_alive == expected


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_workers(start_method: str) -> None:
    with Executor(1, start_method=start_method, max_tasks_per_child=2) as ex:
        pids = [ex.submit(tasks.pid).result(timeout=20) for _ in range(6)]
    assert len(set(pids)) == 3 and pids[0] == pids[1] and pids[2] == pids[3]


# -- a dead worker fails one future -------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("how", "reason", "exitcode"),
    [("kill", "SIGKILL", -9), ("exit", "exit code 7", 7), ("segfault", "SIGSEGV", -11)],
)
def test_a_dying_worker_fails_only_its_own_future(
    start_method: str, how: str, reason: str, exitcode: int
) -> None:
    with Executor(2, start_method=start_method) as ex:
        others = [ex.submit(tasks.sleep_then, 0.01, i) for i in range(10)]
        victim = ex.submit(tasks.die, how)
        more = [ex.submit(tasks.square, i) for i in range(10)]
        error = victim.exception(timeout=30)
        assert isinstance(error, WorkerDiedError) and isinstance(error, BrokenProcessPool)
        assert isinstance(error, BossWorkerError)
        assert error.reason == reason and error.exitcode == exitcode
        assert reason in str(error)
        assert [f.result(timeout=30) for f in others] == list(range(10))
        assert [f.result(timeout=30) for f in more] == [i * i for i in range(10)]
        assert ex.submit(tasks.square, 12).result(timeout=30) == 144  # still usable


# -- time limits ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_per_call_time_limit_kills_stuck_c_code(start_method: str) -> None:
    with Executor(2, start_method=start_method) as ex:
        stuck = ex.options(timeout=0.5).submit(tasks.long_c_call, 10**9)
        fine = [ex.submit(tasks.sleep_then, 0.05, i) for i in range(6)]
        started = time.monotonic()
        with pytest.raises(TaskTimeoutError) as info:
            stuck.result(timeout=30)
        assert time.monotonic() - started < 10
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, BossWorkerError)
        assert info.value.timeout == 0.5
        assert [f.result(timeout=30) for f in fine] == list(range(6))
        # No limit for the others, a limit for map through the same view.
        assert ex.submit(tasks.sleep_then, 0.7, "slow but fine").result(timeout=30) == "slow but fine"
        results = ex.options(timeout=0.3).map(tasks.sleep_then, [0.0, 20.0], ["a", "b"])
        assert next(results) == "a"
        with pytest.raises(TaskTimeoutError):
            next(results)


@pytest.mark.timeout(60)
def test_pool_wide_time_limit(start_method: str) -> None:
    with Executor(1, start_method=start_method, timeout=0.3) as ex:
        with pytest.raises(TaskTimeoutError):
            ex.submit(tasks.sleep_then, 20, None).result(timeout=30)
        assert (
            ex.options(timeout=0).submit(tasks.sleep_then, 0.5, "unlimited").result(timeout=30) == "unlimited"
        )
        assert ex.submit(tasks.square, 3).result(timeout=30) == 9


# -- shutdown -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shutdown_without_waiting_still_finishes_the_work(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ex = Executor(1, start_method=start_method)
    running = blocked(ex, gate, "first")
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    started = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - started < 1
    with pytest.raises(RuntimeError, match="after shutdown") as info:
        ex.submit(tasks.square, 1)
    assert isinstance(info.value, ShutDownError)
    assert queued[-1].cancel()  # queued work can still be cancelled
    gate.open()
    assert running.result(timeout=20) == "first"
    assert [f.result(timeout=20) for f in queued[:-1]] == [i * i for i in range(4)]
    ex.shutdown()  # again, waiting: returns once everything is gone
    assert not ex._core.thread.is_alive()


@pytest.mark.timeout(60)
def test_shutdown_cancel_futures(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ex = Executor(1, start_method=start_method)
    running = blocked(ex, gate, "kept")
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    ex.shutdown(wait=False, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    gate.open()
    assert running.result(timeout=20) == "kept"
    ex.shutdown(wait=True)


@pytest.mark.timeout(60)
def test_shutdown_kill_stops_at_once(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ex = Executor(1, start_method=start_method)
    boss = psutil.Process(ex.pool.boss_pid)
    running = blocked(ex, gate)
    queued = [ex.submit(tasks.square, i) for i in range(5)]
    started = time.monotonic()
    ex.shutdown(kill=True)
    assert time.monotonic() - started < 5
    for f in [running, *queued]:
        with pytest.raises(ShutDownError, match="kill=True"):
            f.result(timeout=5)
    assert not boss.is_running() or boss.status() == psutil.STATUS_ZOMBIE
    ex.shutdown()  # harmless


@pytest.mark.timeout(90)
def test_shutdown_in_the_middle_of_traffic_repeated() -> None:
    """Graceful and killing shutdowns while answers stream in, 15 times each:
    never a hang, every future ends, a graceful one loses nothing."""
    for round_ in range(30):
        kill = round_ % 2 == 1
        ex = Executor(2, start_method="fork")
        fs = [ex.submit(tasks.square, i) for i in range(150)]
        ex.shutdown(wait=True, kill=kill)
        assert not ex._core.thread.is_alive()
        for i, f in enumerate(fs):
            assert f.done()
            if not kill:
                assert f.result() == i * i
            elif f.exception() is not None:
                assert isinstance(f.exception(), ShutDownError)
            else:
                assert f.result() == i * i


@pytest.mark.timeout(60)
def test_context_manager_waits_for_the_work(start_method: str) -> None:
    with Executor(2, start_method=start_method) as ex:
        fs = [ex.submit(tasks.sleep_then, 0.05, i) for i in range(6)]
    assert all(f.done() for f in fs) and [f.result() for f in fs] == list(range(6))
    assert not ex._core.thread.is_alive()


@pytest.mark.timeout(60)
def test_a_dropped_executor_finishes_its_work_in_the_background(tmp_path: Path) -> None:
    ex = Executor(1)
    fs = [ex.submit(tasks.sleep_then, 0.05, i) for i in range(4)]
    thread = ex._core.thread
    del ex
    gc.collect()
    assert [f.result(timeout=20) for f in fs] == list(range(4))
    thread.join(20)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_interpreter_exit_completes_running_work_and_leaves_nothing(method: str, tmp_path: Path) -> None:
    script = tmp_path / "leave_open.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(ROOT / "tests")!r})
            import executor_tasks as tasks
            from bossworker import Executor

            if __name__ == "__main__":
                ex = Executor(2, start_method={method!r})
                for i in range(4):
                    ex.submit(tasks.write_file, {str(tmp_path)!r} + f"/out{{i}}", 0.2)
                print(ex.pool.boss_pid, flush=True)
                # no shutdown(): the interpreter exits with the work in flight
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.glob("out*")) == [f"out{i}" for i in range(4)]
    boss_pid = int(out.stdout.split()[0])
    wait_until(lambda: not psutil.pid_exists(boss_pid), 10, "the Boss to be gone")


# -- asyncio and threads ---------------------------------------------------------------


@pytest.mark.timeout(60)
def test_run_in_executor_and_wrap_future(start_method: str, tmp_path: Path) -> None:
    gate = Gate(tmp_path)

    async def main(ex: Executor) -> None:
        loop = asyncio.get_running_loop()
        # Cancelling the awaiting task cancels a task queued in the Boss.  (First,
        # while the worker has no record of short tasks: after some, the Boss
        # sends a task ahead to the busy worker, and then it counts as started.)
        running = loop.run_in_executor(ex, tasks.block, *gate.args())
        await loop.run_in_executor(None, gate.wait_started)
        queued = ex.submit(tasks.square, 3)
        waiting = asyncio.ensure_future(asyncio.wrap_future(queued))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        # asyncio passes the cancel on from a callback of the loop's.
        for _ in range(100):
            if queued.done():
                break
            await asyncio.sleep(0)
        assert queued.cancelled()
        gate.open()
        await running
        values = await asyncio.gather(*(loop.run_in_executor(ex, tasks.square, i) for i in range(10)))
        assert values == [i * i for i in range(10)]
        assert await asyncio.wrap_future(ex.submit(tasks.add, 2, 3)) == 5
        with pytest.raises(ValueError, match="async rattle"):
            await loop.run_in_executor(ex, tasks.raise_value_error, "async rattle")
        assert await loop.run_in_executor(ex.options(timeout=5), tasks.square, 4) == 16

    with Executor(1, start_method=start_method) as ex:
        asyncio.run(main(ex))


@pytest.mark.timeout(60)
def test_several_threads_submit_and_wait_at_once(start_method: str) -> None:
    with Executor(2, start_method=start_method) as ex:
        errors: list[BaseException] = []

        def client(n: int) -> None:
            try:
                fs = {ex.submit(tasks.add, n, i): n + i for i in range(60)}
                for f in cf.as_completed(fs, timeout=30):
                    assert f.result() == fs[f]
                assert list(ex.map(tasks.square, range(n, n + 20))) == [i * i for i in range(n, n + 20)]
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(n * 1000,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert not errors, errors
        assert ex.pool.pending() == 0


# -- misuse ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_workers": 0}, "max_workers must be greater than 0"),
        ({"max_workers": "2"}, "max_workers must be an int"),
        ({"max_tasks_per_child": 0}, "max_tasks_per_child must be greater than 0"),
        ({"mp_context": "spawn"}, "mp_context must be a multiprocessing context"),
        ({"start_method": "sapwn"}, "start_method must be one of"),
        (
            {"mp_context": multiprocessing.get_context("spawn"), "start_method": "fork"},
            "contradicts mp_context",
        ),
        ({"initializer": 3}, "initializer must be callable"),
        ({"initializer": tasks.init_fail, "initargs": 5}, "initargs must be a tuple"),
        ({"initargs": (1,)}, "without an initializer"),
        ({"timeout": -1}, "timeout must be a number of seconds >= 0"),
    ],
)
def test_bad_arguments_are_refused_precisely(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        Executor(**kwargs)


@pytest.mark.timeout(30)
def test_bad_calls_are_refused_precisely() -> None:
    with Executor(1) as ex:
        with pytest.raises(InvalidArgumentError, match="fn must be callable"):
            ex.submit(42)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="chunksize must be greater than 0"):
            ex.map(tasks.square, [1], chunksize=0)
        with pytest.raises(InvalidArgumentError, match="buffersize must be greater than 0"):
            ex.map(tasks.square, [1], buffersize=0)
        with pytest.raises(InvalidArgumentError, match="timeout must be a number"):
            ex.options(timeout=-2)


@pytest.mark.timeout(60)
def test_a_dead_boss_fails_the_futures_and_breaks_the_executor(tmp_path: Path) -> None:
    gate = Gate(tmp_path)
    ex = Executor(1)
    running = blocked(ex, gate)
    queued = ex.submit(tasks.square, 2)
    psutil.Process(ex.pool.boss_pid).kill()
    for f in (running, queued):
        with pytest.raises(BossDiedError):
            f.result(timeout=20)
    with pytest.raises(BossDiedError, match="broken"):
        ex.submit(tasks.square, 1)
    ex.shutdown()


@pytest.mark.timeout(120)
def test_tasks_held_in_main_while_the_boss_is_busy_are_all_sent() -> None:
    """Past a few dozen tasks in the Boss, submit() queues tasks in main and
    the collector sends them in batches as answers come.  Several threads
    submitting short and longer tasks at once, a cancel in the middle, and
    every future still completes (repeated: the batches race the answers)."""
    for round_ in range(20):
        with Executor(1 + round_ % 2) as ex:
            submitted: list[list[cf.Future[Any]]] = [[] for _ in range(3)]

            def submit(ex: Executor, out: list[cf.Future[Any]], n: int, seconds: float) -> None:
                out.extend(ex.submit(tasks.sleep_then, seconds, (n, i)) for i in range(150))

            threads = [
                threading.Thread(target=submit, args=(ex, submitted[n], n, 0.001 * n)) for n in range(3)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            fs = [f for part in submitted for f in part]
            fs[-1].cancel()  # most likely still held in main or in the Boss's queue
            _done, not_done = cf.wait(fs, timeout=60)
            assert not not_done
            values = [f.result() for f in fs if not f.cancelled()]
            assert len(values) >= 449 and len(set(values)) == len(values)

"""The pool (`BossWorkerAsync`): its behaviour with real processes and sockets.

The first five tests port the Perl distribution's own tests.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

import bossworker
import handlers
from bossworker import (
    BossDiedError,
    BossWorkerAsync,
    BossWorkerError,
    InvalidArgumentError,
    NoPendingResultsError,
    SerializationError,
    ShutDownError,
    WorkerInitError,
)

# -- the Perl distribution's tests -------------------------------------------------


def test_end_to_end_synopsis(start_method: str) -> None:
    bw = BossWorkerAsync(
        handlers.multiply,
        result_handler=handlers.add_string,
        global_timeout=2,
        start_method=start_method,
    )
    bw.add_work({"a": 3, "b": 4})
    seen = []
    while bw.pending():
        ref = bw.get_result()
        assert "ERROR" not in ref
        seen.append((ref["product"], ref["string"]))
    bw.shut_down()
    assert seen == [(12, "the answer is: 12")]


def test_any_bytes_round_trip(start_method: str) -> None:
    """The Perl tests checked its message delimiter; we have none: any bytes pass."""
    payloads = [
        bytes(range(256)),
        b"\0\0\0",
        b"\0\0\0" * 1000,
        b"",
        "caf\u00e9 \u2603 \0\0\0 end".encode(),
        bytes(range(256)) * 300,
    ]
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        ids = bw.add_work(*payloads)
        got = dict(bw.get_result(with_id=True) for _ in payloads)
    assert [got[i] for i in ids] == payloads


def test_large_data(start_method: str) -> None:
    big = os.urandom(24 * 1024 * 1024)
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        bw.add_work({"data": big}, {"data": big[:1000]})
        sizes = sorted(len(bw.get_result()["data"]) for _ in range(2))
        bw.add_work(b"")
        assert bw.get_result() == b""
    assert sizes == [1000, len(big)]


def test_alarm_timeout(start_method: str) -> None:
    with BossWorkerAsync(
        handlers.sleep_for, global_timeout=0.5, worker_count=1, start_method=start_method
    ) as bw:
        bw.add_work({"seconds": 5})
        assert bw.get_result(timeout=10) == {"ERROR": "BossWorkerAsync: timed out"}
        # The worker goes on serving jobs.
        bw.add_work({"seconds": 0})
        assert bw.get_result(timeout=10)["slept"] == 0


def test_non_blocking(start_method: str) -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=1, start_method=start_method) as bw:
        assert bw.get_result_nb() is None
        assert bw.get_result(blocking=False) is None
        bw.add_work({"seconds": 0.3})
        assert bw.get_result_nb() is None  # not done yet: the job sleeps
        polls = 0
        deadline = time.monotonic() + 30
        while (result := bw.get_result_nb()) is None:
            assert time.monotonic() < deadline
            polls += 1
            time.sleep(0.01)  # the main program doing other work between polls
        assert result["slept"] == 0.3
        assert polls > 0
        assert bw.pending() == 0


# -- results -----------------------------------------------------------------


def test_completion_order_and_ids(start_method: str) -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method) as bw:
        slow, fast = bw.add_work({"seconds": 1.5}, {"seconds": 0})
        first = bw.get_result(with_id=True)
        second = bw.get_result(with_id=True)
    assert first[0] == fast and second[0] == slow
    assert first[1]["slept"] == 0


def test_ids_are_unique_and_pending_counts() -> None:
    with BossWorkerAsync(handlers.echo, worker_count=2) as bw:
        ids = bw.add_work(*range(50)) + bw.add_work(*range(50), timeout=5)
        assert len(set(ids)) == 100
        assert bw.pending() == 100
        got = {job_id: value for job_id, value in bw.results(with_id=True)}
        assert bw.pending() == 0
    assert [got[i] for i in ids] == list(range(50)) * 2


def test_none_becomes_empty_dict() -> None:
    with BossWorkerAsync(handlers.return_none, worker_count=1) as bw:
        bw.add_work(1)
        assert bw.get_result() == {}
    with BossWorkerAsync(handlers.echo, result_handler=handlers.return_none, worker_count=1) as bw:
        bw.add_work(1)
        assert bw.get_result() == {}


def test_handler_exception_is_an_error_result(start_method: str) -> None:
    with BossWorkerAsync(handlers.raise_value_error, worker_count=1, start_method=start_method) as bw:
        bw.add_work({}, {})
        errors = [bw.get_result()["ERROR"] for _ in range(2)]
    for text in errors:
        assert text.startswith("ValueError: rattle\n")
        assert "Traceback (most recent call last)" in text
        assert "raise_value_error" in text


def test_result_handler_sees_errors_too() -> None:
    with BossWorkerAsync(handlers.raise_value_error, result_handler=lambda r: {"wrapped": r}) as bw:
        bw.add_work(1)
        assert "ERROR" in bw.get_result()["wrapped"]


def test_closures_and_lambdas_work_under_fork() -> None:
    factor = 7
    with BossWorkerAsync(lambda job: job * factor, worker_count=2, start_method="fork") as bw:
        bw.add_work(1, 2, 3)
        assert sorted(bw.results()) == [7, 14, 21]


def test_lambda_under_spawn_travels_by_value() -> None:
    """With the cloudpickle extra (installed for the tests), lambdas and
    closures work under spawn too."""
    factor = 3
    with BossWorkerAsync(lambda job: job * factor, worker_count=1, start_method="spawn") as bw:
        bw.add_work(2)
        assert bw.get_result() == 6


def test_lambda_under_spawn_without_cloudpickle_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cloudpickle", None)  # an import of it now fails
    with pytest.raises(SerializationError, match=r"(?s)importable module.*bossworker\[cloudpickle\]"):
        BossWorkerAsync(lambda job: job, start_method="spawn")


def test_results_iterator() -> None:
    with BossWorkerAsync(handlers.multiply, worker_count=2) as bw:
        bw.add_work(*({"a": i, "b": 2} for i in range(20)))
        assert sorted(r["product"] for r in bw.results()) == [2 * i for i in range(20)]
        assert list(bw.results()) == []


# -- waiting -----------------------------------------------------------------


def test_blocking_get_with_nothing_pending_raises_at_once() -> None:
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        start = time.monotonic()
        with pytest.raises(NoPendingResultsError):
            bw.get_result()
        assert time.monotonic() - start < 1


def test_timeout_returns_none() -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
        assert bw.get_result(timeout=0.1) is None
        bw.add_work({"seconds": 2})
        start = time.monotonic()
        assert bw.get_result(timeout=0.2) is None
        assert time.monotonic() - start < 1.5
        assert bw.pending() == 1
        assert bw.get_result(timeout=30)["slept"] == 2


def test_timeout_sees_work_added_by_another_thread() -> None:
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        waiting = threading.Event()
        got: list[Any] = []

        def waiter() -> None:
            waiting.set()
            got.append(bw.get_result(timeout=30))

        t = threading.Thread(target=waiter)
        t.start()
        waiting.wait(10)
        bw.add_work("late")
        t.join(30)
        assert got == ["late"]


def test_waiting_reader_never_blocks_add_work() -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=2) as bw:
        bw.add_work({"seconds": 3})
        reader_in = threading.Event()
        results: list[Any] = []

        def reader() -> None:
            reader_in.set()
            results.append(bw.get_result())
            results.append(bw.get_result())

        t = threading.Thread(target=reader)
        t.start()
        reader_in.wait(10)
        start = time.monotonic()
        bw.add_work({"seconds": 0})
        assert time.monotonic() - start < 1  # did not wait for the 3 s job
        t.join(30)
        assert sorted(r["slept"] for r in results) == [0, 3]


# -- shutting down -----------------------------------------------------------


def test_graceful_shutdown_keeps_every_result(start_method: str) -> None:
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method)
    bw.add_work(*({"seconds": 0.05} for _ in range(10)))
    boss = psutil.Process(bw.boss_pid)
    workers = boss.children()
    bw.shut_down()
    assert not boss.is_running()
    assert not any(w.is_running() for w in workers)
    assert bw.pending() == 10
    assert [r["slept"] for r in bw.results()] == [0.05] * 10
    with pytest.raises(NoPendingResultsError):
        bw.get_result()
    with pytest.raises(ShutDownError):
        bw.add_work({"seconds": 0})
    bw.shut_down()  # harmless
    bw.shut_down(force=True)  # harmless


def test_forced_shutdown_is_quick_and_complete(start_method: str) -> None:
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method)
    bw.add_work(*({"seconds": 30} for _ in range(4)))
    boss = psutil.Process(bw.boss_pid)
    workers = boss.children()
    assert len(workers) == 2
    start = time.monotonic()
    bw.shut_down(force=True)
    assert time.monotonic() - start < 2.5
    assert bw.pending() == 0
    assert not boss.is_running()
    psutil.wait_procs(workers, timeout=5)
    assert not any(w.is_running() for w in workers)
    with pytest.raises(ShutDownError):
        bw.add_work({"seconds": 0})
    with pytest.raises(NoPendingResultsError):
        bw.get_result()


def test_context_manager_forces_on_exception() -> None:
    with pytest.raises(RuntimeError), BossWorkerAsync(handlers.sleep_for, worker_count=1) as bw:
        bw.add_work({"seconds": 30})
        boss = psutil.Process(bw.boss_pid)
        raise RuntimeError("boom")
    assert bw.pending() == 0
    assert not boss.is_running()


def test_init_and_exit_handlers_run_once_per_worker(
    tmp_path: Path, start_method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    with BossWorkerAsync(
        handlers.pid_of_worker,
        init_handler=handlers.write_marker_init,
        exit_handler=handlers.write_marker_exit,
        worker_count=2,
        start_method=start_method,
    ) as bw:
        bw.add_work(*range(20))
        pids = set(bw.results())
    inits = {p.name.split("-")[1] for p in tmp_path.glob("init-*")}
    exits = {p.name.split("-")[1] for p in tmp_path.glob("exit-*")}
    assert len(inits) == 2 and inits == exits
    assert {str(p) for p in pids} <= inits


def test_init_failure_raises_worker_init_error(start_method: str) -> None:
    start = time.monotonic()
    with pytest.raises(WorkerInitError, match="init exploded"):
        BossWorkerAsync(
            handlers.echo, init_handler=handlers.failing_init, worker_count=2, start_method=start_method
        )
    assert time.monotonic() - start < 30


# -- bad input ---------------------------------------------------------------


def test_unpicklable_job_queues_nothing() -> None:
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        with pytest.raises(SerializationError) as info:
            bw.add_work(1, lambda: None, 3)
        assert info.value.__cause__ is not None
        assert bw.pending() == 0
        ids = bw.add_work("still works")
        assert bw.get_result(with_id=True) == (ids[0], "still works")
        assert bw.pending() == 0


def test_unpicklable_result_is_an_error() -> None:
    with BossWorkerAsync(handlers.unpicklable_result, worker_count=1) as bw:
        bw.add_work(1)
        assert bw.get_result()["ERROR"].startswith("BossWorkerAsync: result could not be pickled")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"worker_count": 0}, "worker_count"),
        ({"worker_count": "3"}, "worker_count"),
        ({"global_timeout": -1}, "global_timeout"),
        ({"global_timeout": float("nan")}, "global_timeout"),
        ({"global_timeout": "1"}, "global_timeout"),
        ({"read_size": 10}, "read_size"),
        ({"start_method": "teleport"}, "start_method"),
        ({"result_handler": 3}, "result_handler"),
        ({"max_jobs_per_worker": 0}, "max_jobs_per_worker"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        BossWorkerAsync(handlers.echo, **kwargs)


def test_bad_call_arguments() -> None:
    with pytest.raises(InvalidArgumentError):
        BossWorkerAsync("not callable")  # type: ignore[arg-type]
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        with pytest.raises(InvalidArgumentError):
            bw.add_work()
        with pytest.raises(InvalidArgumentError):
            bw.add_work(1, timeout=-2)
        with pytest.raises(InvalidArgumentError):
            bw.get_result(timeout="soon")  # type: ignore[call-overload]
        assert bw.pending() == 0


def test_exception_hierarchy() -> None:
    for exc in (
        SerializationError,
        ShutDownError,
        NoPendingResultsError,
        BossDiedError,
        WorkerInitError,
        InvalidArgumentError,
    ):
        assert issubclass(exc, BossWorkerError)
        assert exc.__name__ in bossworker.__all__
    assert issubclass(InvalidArgumentError, ValueError)
    assert issubclass(InvalidArgumentError, TypeError)


# -- handlers that fork ---------------------------------------------------------


def test_handler_may_run_subprocesses_and_fork(start_method: str) -> None:
    with BossWorkerAsync(handlers.run_subprocess, worker_count=2, start_method=start_method) as bw:
        bw.add_work(*range(4))
        assert [r["out"] for r in bw.results()] == ["42"] * 4
    with BossWorkerAsync(handlers.fork_and_wait, worker_count=2, start_method=start_method) as bw:
        bw.add_work(*range(4))
        assert [r["child_status"] for r in bw.results()] == [7] * 4


def test_child_returning_from_handler_cannot_confuse_the_pool() -> None:
    with BossWorkerAsync(handlers.fork_and_return, worker_count=1) as bw:
        bw.add_work(*range(5))
        assert [r["parent"] for r in bw.results()] == [True] * 5
        assert bw.get_result(timeout=0.3) is None


def test_logging_uses_the_bossworker_logger(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="bossworker"), BossWorkerAsync(handlers.echo, worker_count=1):
        pass
    assert any(r.name == "bossworker" and "pool started" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here")
def test_forkserver_start_method_works() -> None:
    with BossWorkerAsync(
        handlers.multiply, result_handler=handlers.add_string, start_method="forkserver", worker_count=2
    ) as bw:
        bw.add_work({"a": 3, "b": 4})
        assert bw.get_result()["string"] == "the answer is: 12"
    with BossWorkerAsync(
        handlers.spin_with_alarm_blocked, start_method="forkserver", worker_count=1, global_timeout=0.3
    ) as bw:
        bw.add_work({"seconds": 20}, {"seconds": 0})
        results = [bw.get_result(timeout=30) for _ in range(2)]
    assert {"ERROR": "BossWorkerAsync: timed out"} in results and {"done": True} in results

"""Smoke cases for a real Windows interpreter (run by scripts/wine-smoke).

Each case builds a pool the way a user would and checks one behaviour; the
script prints ``PASS name`` or ``FAIL name: why`` per case, then a summary.
It imports only bossworker and the standard library (an embeddable CPython
has nothing else).  Handlers live at module level: Windows spawns.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable

from bossworker import (
    TIMED_OUT_ERROR,
    BossWorkerAsync,
    Executor,
    NoPendingResultsError,
    ShutDownError,
    TaskTimeoutError,
    WorkerDiedError,
)

# Set in each worker by remember_init (the init_handler of case_init_and_exit_handlers).
_INIT_MARK: str | None = None


def multiply(job: dict[str, int]) -> dict[str, int]:
    return {"product": job["a"] * job["b"]}


def add_string(result: dict[str, object]) -> dict[str, object]:
    if "product" in result:
        result["string"] = f"the answer is: {result['product']}"
    return result


def echo(job: object) -> object:
    return job


def fail(job: object) -> object:
    raise ValueError("rattle")


def nap(job: float) -> float:
    time.sleep(job)
    return job


def leave(job: int) -> int:
    os._exit(job)


def pid_of(job: object) -> int:
    return os.getpid()


def remember_init(mark: str) -> None:
    global _INIT_MARK
    _INIT_MARK = mark


def init_mark(job: object) -> str | None:
    return _INIT_MARK


def write_exit_file(folder: str) -> None:
    with open(os.path.join(folder, f"exit-{os.getpid()}"), "w") as f:
        f.write("bye")


def case_synopsis() -> None:
    with BossWorkerAsync(multiply, result_handler=add_string, global_timeout=2) as bw:
        bw.add_work({"a": 3, "b": 4})
        assert bw.get_result()["string"] == "the answer is: 12"


def case_many_jobs() -> None:
    with BossWorkerAsync(echo, worker_count=2) as bw:
        bw.add_work(*range(500))
        assert sorted(bw.results()) == list(range(500))


def case_handler_exception() -> None:
    with BossWorkerAsync(fail, worker_count=1) as bw:
        bw.add_work(1)
        assert bw.get_result()["ERROR"].startswith("ValueError: rattle")


def case_timeout_kills_and_replaces() -> None:
    with BossWorkerAsync(nap, worker_count=1) as bw:
        start = time.monotonic()
        bw.add_work(30, timeout=0.5)
        assert bw.get_result(timeout=30) == {"ERROR": TIMED_OUT_ERROR}
        assert time.monotonic() - start < 10
        bw.add_work(0)
        assert bw.get_result(timeout=30) == 0


def case_worker_death_costs_one_job() -> None:
    with BossWorkerAsync(leave, worker_count=1) as bw:
        bw.add_work(7)
        assert "worker died (exit code 7)" in bw.get_result(timeout=30)["ERROR"]
    with BossWorkerAsync(pid_of, worker_count=2) as bw:
        bw.add_work(*range(4))
        assert len(list(bw.results())) == 4


def case_nonblocking_and_interleaved() -> None:
    with BossWorkerAsync(echo, worker_count=2) as bw:
        assert bw.get_result_nb() is None
        bw.add_work(1)
        got = None
        deadline = time.monotonic() + 30
        while got is None and time.monotonic() < deadline:
            got = bw.get_result_nb()
        assert got == 1
        bw.add_work(2, 3)
        assert sorted([bw.get_result(), bw.get_result()]) == [2, 3]


def case_large_payload() -> None:
    with BossWorkerAsync(echo, worker_count=1) as bw:
        blob = os.urandom(8 * 1024 * 1024)
        bw.add_work(blob)
        assert bw.get_result(timeout=60) == blob


def case_stats_and_force_stop() -> None:
    bw = BossWorkerAsync(nap, worker_count=2)
    bw.add_work(0, 0)
    assert sorted(bw.results()) == [0, 0]
    stats = bw.stats()
    assert stats.completed == 2 and stats.workers_alive == 2, stats
    bw.add_work(30)
    bw.shut_down(force=True)
    assert bw.pending() == 0


def case_init_and_exit_handlers() -> None:
    # The seed: init_handler once in each worker before its jobs, exit_handler
    # once in each worker that leaves normally.
    with tempfile.TemporaryDirectory() as folder:
        bw = BossWorkerAsync(
            init_mark,
            init_handler=functools.partial(remember_init, "ready"),
            exit_handler=functools.partial(write_exit_file, folder),
            worker_count=2,
        )
        bw.add_work(*range(6))
        assert list(bw.results()) == ["ready"] * 6
        bw.shut_down()
        assert len([n for n in os.listdir(folder) if n.startswith("exit-")]) == 2


def case_pending_and_blocking() -> None:
    # The seed: pending() counts jobs whose results were not taken; a blocking
    # get_result() waits for one (and raises, not hangs, when none is pending).
    with BossWorkerAsync(nap, worker_count=2) as bw:
        assert bw.pending() == 0
        bw.add_work(0.2, 0.2, 0.2)
        assert bw.pending() == 3
        assert bw.get_result() == 0.2
        assert bw.pending() == 2
        assert [bw.get_result(), bw.get_result()] == [0.2, 0.2]
        try:
            bw.get_result()
        except NoPendingResultsError:
            pass
        else:
            raise AssertionError("get_result() with nothing pending returned")


def case_global_timeout() -> None:
    with BossWorkerAsync(nap, worker_count=1, global_timeout=0.5) as bw:
        bw.add_work(30, 0)
        assert sorted(map(str, bw.results())) == ["0", str({"ERROR": TIMED_OUT_ERROR})]


def case_graceful_shutdown_keeps_results() -> None:
    # The seed: shut_down() processes the queue; here every result stays
    # retrievable afterwards.
    bw = BossWorkerAsync(nap, worker_count=2)
    bw.add_work(*[0.05] * 6)
    bw.shut_down()
    assert [bw.get_result() for _ in range(6)] == [0.05] * 6
    assert bw.pending() == 0


def square(x: int) -> int:
    return x * x


def case_executor_submit_and_map() -> None:
    with Executor(max_workers=2) as ex:
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]
        futures = [ex.submit(square, n) for n in range(5)]
        assert sorted(f.result(timeout=30) for f in cf.as_completed(futures, timeout=60)) == [0, 1, 4, 9, 16]


def case_executor_dead_worker() -> None:
    with Executor(max_workers=1) as ex:
        try:
            ex.submit(leave, 3).result(timeout=30)
        except WorkerDiedError as e:
            assert e.exitcode == 3, e
        else:
            raise AssertionError("a task whose worker died returned")
        assert ex.submit(square, 9).result(timeout=30) == 81  # the executor carries on


def case_executor_timeout() -> None:
    with Executor(max_workers=1, timeout=0.5) as ex:
        try:
            ex.submit(nap, 30).result(timeout=30)
        except TaskTimeoutError:
            pass
        else:
            raise AssertionError("a task past its time limit returned")
        assert ex.submit(square, 3).result(timeout=30) == 9


def case_executor_shutdown() -> None:
    ex = Executor(max_workers=2)
    done = [ex.submit(nap, 0.05) for _ in range(4)]
    ex.shutdown(wait=True)  # waits for the work in hand
    assert [f.result(timeout=0) for f in done] == [0.05] * 4
    ex = Executor(max_workers=1)
    stuck = ex.submit(nap, 30)
    start = time.monotonic()
    ex.shutdown(kill=True)  # stops now, no Ctrl-C needed
    assert time.monotonic() - start < 10
    try:
        stuck.result(timeout=10)
    except ShutDownError:
        pass
    else:
        raise AssertionError("a task stopped by shutdown(kill=True) returned")


CASES: dict[str, Callable[[], None]] = {
    name[5:]: fn for name, fn in sorted(globals().items()) if name.startswith("case_") and callable(fn)
}


def main() -> int:
    only = sys.argv[1:]
    passed = failed = 0
    for name, case in CASES.items():
        if only and name not in only:
            continue
        start = time.monotonic()
        try:
            case()
        except BaseException as exc:  # noqa: BLE001 - report every case
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc()
        else:
            passed += 1
            print(f"PASS {name} ({time.monotonic() - start:.1f} s)", flush=True)
    print(f"windows smoke: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

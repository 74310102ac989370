"""Smoke cases for a real Windows interpreter (run by scripts/wine-smoke).

Each case builds a pool the way a user would and checks one behaviour; the
script prints ``PASS name`` or ``FAIL name: why`` per case, then a summary.
It imports only bossworker and the standard library (an embeddable CPython
has nothing else).  Handlers live at module level: Windows spawns.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable

from bossworker import TIMED_OUT_ERROR, BossWorkerAsync


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

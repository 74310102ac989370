"""Main's guarantees with real processes: exactly-once cancel, fork safety,
map exits that leave nothing behind, the right verdict for a forced stop,
a dropped retry that keeps its attempts, a death noticed while waiting for
input, clear refusals of bad arguments, and aadd_work's retries.

Racy scenarios repeat inside the test, so a regression shows on every run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import handlers
import outcome_handlers as oh
from bossworker import (
    BossDiedError,
    BossWorkerAsync,
    Executor,
    InvalidArgumentError,
    ShutDownError,
)
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def _gate(bw: BossWorkerAsync[Any, Any], tmp_path: Path, name: str) -> tuple[int, Path]:
    """Occupy the pool's one worker with a job that waits for a release
    file; return its id and that file (create it to let the job end)."""
    pid_file, release = tmp_path / f"{name}.pid", tmp_path / f"{name}.go"
    [gate] = bw.add_work({"pid_file": str(pid_file), "release_file": str(release), "size": 1})
    wait_until(pid_file.exists, 30, "the gate job to start")
    return gate, release


# -- cancel: bad ids, exactly once ------------------------------------------------------


@pytest.mark.timeout(60)
def test_cancel_refuses_impossible_ids_and_later_cancels_still_work(
    start_method: str, tmp_path: Path
) -> None:
    with BossWorkerAsync(handlers.big_result_when_released, worker_count=1, start_method=start_method) as bw:
        _gate_id, release = _gate(bw, tmp_path, "g")
        [queued] = bw.add_work({"pid_file": str(tmp_path / "q.pid"), "release_file": str(release), "size": 1})
        for bad in (-1, 0, 2**64, 2**70):
            with pytest.raises(InvalidArgumentError, match="job_id must be an int from add_work"):
                bw.cancel(bad)
        assert bw.cancel(queued + 1000) is False  # never issued: no round trip needed
        assert bw.cancel(queued) is True  # would hang if a bad id had moved the reply count
        release.touch()
        outcomes = [bw.get_outcome(timeout=30), bw.get_outcome(timeout=30)]
        assert sorted(bool(o and o.cancelled) for o in outcomes) == [False, True]
        assert bw.pending() == 0


@pytest.mark.timeout(180)
def test_cancel_from_many_threads_drops_a_job_exactly_once(start_method: str, tmp_path: Path) -> None:
    rounds = 30
    with BossWorkerAsync(handlers.big_result_when_released, worker_count=1, start_method=start_method) as bw:
        for round_ in range(rounds):
            _gate_id, release = _gate(bw, tmp_path, f"g{round_}")
            [queued] = bw.add_work({"pid_file": str(tmp_path / f"q{round_}"), "release_file": "", "size": 1})
            barrier = threading.Barrier(4)
            answers: list[bool] = []

            def cancel(
                queued: int = queued, barrier: threading.Barrier = barrier, answers: list[bool] = answers
            ) -> None:
                barrier.wait()
                answers.append(bw.cancel(queued))

            threads = [threading.Thread(target=cancel) for _ in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert sorted(answers) == [False, False, False, True], f"round {round_}: {answers}"
            assert bw.pending() == 1, f"round {round_}"  # the gate only
            release.touch()
            outcomes = list(bw.outcomes())
            assert sorted(o.cancelled for o in outcomes) == [False, True], f"round {round_}"
            assert bw.pending() == 0
        assert bw.stats().cancelled == rounds


# -- map: early exits leave nothing behind; a forced stop is no death ----------------------


@pytest.mark.timeout(120)
def test_map_early_exits_leave_no_reply_entries(start_method: str) -> None:
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        for _round in range(300):
            for value in bw.map(range(50), max_in_flight=16):
                assert value == 0
                break
        bw.stats()  # replies come in order: every CANCEL's reply is read once this one is
        assert bw._client.ledger.claims() == (0, 0, 0)
        # The answers of jobs a worker had when the map was left come when they come.
        ledger = bw._client.ledger
        wait_until(lambda: bw._client.poll() or not ledger.routes, 20, "the last answers to be dropped")
        assert list(bw.map(range(5))) == list(range(5))


@pytest.mark.timeout(240)
def test_map_consumer_is_told_shut_down_on_a_forced_stop(start_method: str) -> None:
    rounds = 20 if start_method == "fork" else 8
    for round_ in range(rounds):
        bw = BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method)
        raised: list[BaseException] = []

        def consume(bw: BossWorkerAsync[Any, Any] = bw, raised: list[BaseException] = raised) -> None:
            try:
                for _ in bw.map([{"seconds": 30}] * 4):
                    pass
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                raised.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        wait_until(lambda bw=bw: bw.stats().running >= 1, 30, "a map job to run")
        bw.shut_down(force=True)
        thread.join(30)
        assert not thread.is_alive()
        assert len(raised) == 1 and type(raised[0]) is ShutDownError, f"round {round_}: {raised!r}"


# -- a retried job dropped before its next attempt ---------------------------------------------


@pytest.mark.timeout(120)
def test_a_retried_job_cancelled_before_its_next_attempt_keeps_its_attempts(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = tmp_path / "hold"
    monkeypatch.setenv("BW_INIT_HOLD_FILE", str(hold))
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    with BossWorkerAsync(
        oh.die_once,
        init_handler=handlers.init_marker_then_hold,
        worker_count=1,
        retries=2,
        start_method=start_method,
    ) as bw:
        hold.touch()  # the replacement for the worker that dies stays in its init
        [job] = bw.add_work(str(tmp_path / "marker"))
        wait_until(lambda: bw.stats().retried == 1, 30, "the job's first attempt to fail")
        assert bw.cancel(job) is True
        hold.unlink()
        outcome = bw.get_outcome(timeout=30)
        assert outcome is not None and outcome.cancelled and not outcome.ok
        assert len(outcome.attempts) == 1 and outcome.attempts[0].worker_pid is not None
        assert "before its next attempt" in str(outcome.error)
        assert bw.pending() == 0


# -- results(until_closed=True) notices a death while waiting for input ---------------------


@pytest.mark.timeout(120)
def test_results_until_closed_notices_the_boss_dying_while_waiting_for_input(start_method: str) -> None:
    for _round in range(3):
        bw = BossWorkerAsync(handlers.echo, worker_count=1, start_method=start_method)
        assert bw.add_work(1) and bw.get_result() == 1
        raised: list[BaseException] = []

        def consume(bw: BossWorkerAsync[Any, Any] = bw, raised: list[BaseException] = raised) -> None:
            try:
                list(bw.results(until_closed=True))
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                raised.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        wait_until(lambda bw=bw: bw._client._reading, 10, "the consumer to wait on the socket")
        os.kill(bw.boss_pid, signal.SIGKILL)
        thread.join(20)  # no producer acts: only the socket can tell it
        assert not thread.is_alive(), "results(until_closed=True) missed the Boss's death"
        assert len(raised) == 1 and isinstance(raised[0], BossDiedError), raised
        bw.shut_down()  # nothing was pending: nothing to report


@pytest.mark.timeout(60)
def test_aresults_until_closed_notices_the_boss_dying_while_waiting_for_input(start_method: str) -> None:
    async def main() -> BaseException | None:
        bw = BossWorkerAsync(handlers.echo, worker_count=1, start_method=start_method)
        try:

            async def consume() -> None:
                async for _ in bw.aresults(until_closed=True):
                    pass

            task = asyncio.ensure_future(consume())
            await asyncio.sleep(0)  # the task starts waiting for input
            for _ in range(100):
                if task.done():
                    break
                await asyncio.sleep(0.01)
            os.kill(bw.boss_pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(task, 20)
            except BossDiedError as exc:
                return exc
            return None
        finally:
            bw.shut_down(force=True)

    assert isinstance(asyncio.run(main()), BossDiedError)


# -- fork safety ---------------------------------------------------------------------------

_FORK_SCRIPT = """
import json, os, sys
sys.path.insert(0, {tests!r})
import handlers
from bossworker import BossWorkerAsync, Executor, WrongProcessError

def child_uses(bw, ex):
    said = []
    for call in (lambda: bw.add_work(1), bw.get_result, lambda: bw.cancel(1), bw.stats, bw.pending,
                 lambda: ex.submit(abs, -1), lambda: list(bw.map([1]))):
        try:
            call()
            said.append("no error")
        except WrongProcessError as exc:
            said.append("os.fork()" in str(exc))
        except Exception as exc:
            said.append(repr(exc))
    bw.boss_pid  # facts stay readable
    with bw, ex:  # leaving these blocks must do nothing to the parent's pool
        pass
    bw.shut_down(force=True)
    ex.shutdown(kill=True)
    return said

if __name__ == "__main__":
    bw = BossWorkerAsync(handlers.echo, worker_count=2, start_method={method!r})
    ex = Executor(2, start_method={method!r})
    bw.add_work(*range(100))
    futures = [ex.submit(abs, -i) for i in range(100)]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(w, json.dumps(child_uses(bw, ex)).encode())
        os.close(w)
        sys.exit(0)  # through atexit: the pools' finalizers run here too
    os.close(w)
    said = json.loads(os.read(r, 65536).decode())
    os.waitpid(pid, 0)
    results = sorted(bw.results())
    values = [f.result(timeout=60) for f in futures]
    bw.add_work(7)
    again = bw.get_result(timeout=60)
    bw.shut_down()
    ex.shutdown()
    print(json.dumps({{"said": said, "results": results == list(range(100)),
                      "values": values == list(range(100)), "again": again}}))
"""


@pytest.mark.timeout(120)
def test_a_forked_child_cannot_use_the_parents_pool_and_leaves_it_alone(
    start_method: str, tmp_path: Path
) -> None:
    script = tmp_path / "fork_child.py"
    script.write_text(textwrap.dedent(_FORK_SCRIPT.format(tests=str(ROOT / "tests"), method=start_method)))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for _run in range(3):
        out = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=90
        )
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["said"] == [True] * 7, report
        assert report["results"] and report["values"] and report["again"] == 7, report


_INHERITED = """
import sys
sys.path.insert(0, {tests!r})
import handlers
from bossworker import BossWorkerAsync

first = None

def use_the_inherited_pool(job):
    return first.add_work(job)

if __name__ == "__main__":
    first = BossWorkerAsync(handlers.echo, worker_count=1, start_method="fork")
    with BossWorkerAsync(use_the_inherited_pool, worker_count=1, start_method="fork") as second:
        second.add_work(1)
        print(second.get_result(timeout=60)["ERROR"].splitlines()[0])
    first.add_work(2)
    assert first.get_result(timeout=60) == 2
    first.shut_down()
"""


@pytest.mark.timeout(60)
def test_a_worker_using_an_inherited_pool_is_told_what_happened(tmp_path: Path) -> None:
    script = tmp_path / "inherited.py"
    script.write_text(textwrap.dedent(_INHERITED.format(tests=str(ROOT / "tests"))))
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert "WrongProcessError" in out.stdout and "os.fork()" in out.stdout, out.stdout


# -- clear refusals -------------------------------------------------------------------------------


def test_a_backend_that_is_no_backend_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="backend must be None"):
        BossWorkerAsync(handlers.echo, backend=5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="backend must be None"):
        Executor(1, backend=5)  # type: ignore[arg-type]


@pytest.mark.timeout(60)
def test_executor_map_refuses_a_timeout_no_clock_can_hold() -> None:
    with Executor(1) as ex:
        for timeout in (math.inf, 1e10, math.nan):
            with pytest.raises(InvalidArgumentError, match="timeout must be"):
                ex.map(abs, [1, 2], timeout=timeout)
        assert list(ex.map(abs, [-1, -2], timeout=30)) == [1, 2]


# -- aadd_work honours retries -----------------------------------------------------------------


@pytest.mark.timeout(90)
def test_aadd_work_retries_as_add_work_does(start_method: str, tmp_path: Path) -> None:
    async def main() -> None:
        async with BossWorkerAsync(oh.die_once, worker_count=2, start_method=start_method) as bw:
            await bw.aadd_work(str(tmp_path / "a"), retries=1)
            outcome = await bw.aget_outcome(timeout=30)
            assert outcome is not None and outcome.ok and outcome.retried == 1, outcome
        async with BossWorkerAsync(oh.die_once, worker_count=2, retries=1, start_method=start_method) as bw:
            await bw.aadd_work(str(tmp_path / "b"))  # the pool's retries=
            outcome = await bw.aget_outcome(timeout=30)
            assert outcome is not None and outcome.ok and outcome.retried == 1, outcome
            await bw.aadd_work(str(tmp_path / "c"), retries=0)  # per call: off
            outcome = await bw.aget_outcome(timeout=30)
            assert outcome is not None and not outcome.ok and outcome.retried == 0

    asyncio.run(main())

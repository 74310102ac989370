"""Outcomes, cancel and bounded retry, against real processes."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

import outcome_handlers as h
from bossworker import (
    BossWorkerAsync,
    InvalidArgumentError,
    JobCancelledError,
    Outcome,
    RemoteTraceback,
    SerializationError,
    Stats,
    TaskError,
    TaskTimeoutError,
    WorkerDiedError,
)
from bossworker.errors import TIMED_OUT_ERROR
from waiting import wait_until


def _by_id(outcomes: list[Outcome[object]]) -> dict[int, Outcome[object]]:
    return {o.job_id: o for o in outcomes}


@pytest.mark.timeout(60)
def test_values_and_exceptions_keep_their_types(start_method: str) -> None:
    with BossWorkerAsync(h.return_none, worker_count=1, start_method=start_method) as bw:
        [job] = bw.add_work(1)
        o = bw.get_outcome()
        assert o is not None and o.job_id == job
        assert o.ok and o.value is None and o.error is None and o.unwrap() is None  # None stays None
    pool_handlers = [h.raise_value_error, h.raise_custom, h.raise_unpicklable, h.unpicklable_result]
    for handler in pool_handlers:
        with BossWorkerAsync(handler, worker_count=1, start_method=start_method) as bw:
            bw.add_work(7)
            o = bw.get_outcome()
            assert o is not None and not o.ok and o.value is None and not o.cancelled
            error = o.error
            if handler is h.raise_value_error:
                assert type(error) is ValueError and str(error) == "rattle 7"
                assert isinstance(error.__cause__, RemoteTraceback)
                assert "raise_value_error" in str(error.__cause__)
                with pytest.raises(ValueError, match="rattle 7"):
                    o.unwrap()
            elif handler is h.raise_custom:
                assert type(error) is h.CustomError and error.code == 7
            elif handler is h.raise_unpicklable:
                assert isinstance(error, TaskError) and error.type_name == "outcome_handlers.UnpicklableError"
                assert "UnpicklableError: held a lock" in str(error)
                assert "raise_unpicklable" in str(error.__cause__)
            else:
                assert isinstance(error, SerializationError) and "could not be pickled" in str(error)
            # get_result() is unchanged: the same failure, as the seed's text.
            bw.add_work(7)
            ref = bw.get_result()
            assert set(ref) == {"ERROR"} and isinstance(ref["ERROR"], str)
            if handler is h.raise_value_error:
                assert ref["ERROR"].startswith("ValueError: rattle 7\nTraceback")
            if handler is h.unpicklable_result:
                assert ref["ERROR"].startswith("BossWorkerAsync: result could not be pickled: ")


@pytest.mark.timeout(60)
def test_timeouts_and_deaths(start_method: str) -> None:
    with BossWorkerAsync(h.sleep_then_pid, worker_count=1, start_method=start_method) as bw:
        bw.add_work(30, timeout=0.3)
        o = bw.get_outcome()
        assert o is not None and isinstance(o.error, TaskTimeoutError) and o.error.timeout == 0.3
        assert 0.25 <= o.run_time < 2 and o.worker_pid is not None
    with BossWorkerAsync(h.die, worker_count=1, start_method=start_method) as bw:
        pid = next(iter(bw.stats().jobs_per_worker))
        bw.add_work(None)
        o = bw.get_outcome()
        assert o is not None and isinstance(o.error, WorkerDiedError)
        assert o.error.reason == "SIGKILL" and o.error.exitcode == -signal.SIGKILL
        assert o.worker_pid == pid and len(o.attempts) == 1
        bw.add_work(None)  # and the seed's text for it
        assert bw.get_result()["ERROR"] == "BossWorkerAsync: worker died (SIGKILL) while running this job"
    with BossWorkerAsync(h.sleep_then_pid, worker_count=1, start_method=start_method) as bw:
        bw.add_work(30, timeout=0.3)
        assert bw.get_result() == {"ERROR": TIMED_OUT_ERROR}


@pytest.mark.timeout(60)
def test_details_are_plausible() -> None:
    with BossWorkerAsync(h.timed_sleep, worker_count=2) as bw:
        workers = {c.pid for c in psutil.Process(bw.boss_pid).children()}
        before = time.time()
        bw.add_work(*[0.2] * 4)
        outcomes = list(bw.outcomes())
        after = time.time()
    assert len(outcomes) == 4 and bw.pending() == 0
    for o in outcomes:
        assert o.ok and o.value is not None and o.worker_pid == o.value["pid"] and o.worker_pid in workers
        assert 0.19 <= o.run_time < 1.0
        assert before <= o.queued_at <= o.started_at <= o.finished_at <= after  # type: ignore[operator]
        # started_at is derived (finished_at - run_time): it must match when the
        # handler really started, give or take the answer's trip back to main,
        # which finished_at - end measures on its own.
        trip = o.finished_at - o.value["end"]
        assert abs((o.started_at - o.value["start"]) - trip) < 0.05  # type: ignore[operator]
        assert [a.worker_pid for a in o.attempts] == [o.worker_pid]
    # Two workers, four jobs of 0.2 s: two had to wait for the first two.
    waits = sorted(o.started_at - o.queued_at for o in outcomes)  # type: ignore[operator]
    assert waits[-1] - waits[0] >= 0.15


def _block_file(tmp_path: Path) -> str:
    return str(tmp_path / "go")


@pytest.mark.timeout(60)
def test_cancel_queued_not_running(start_method: str, tmp_path: Path) -> None:
    go = _block_file(tmp_path)
    with BossWorkerAsync(h.wait_for_file, worker_count=1, start_method=start_method) as bw:
        ids = bw.add_work(*[go] * 6)
        wait_until(lambda: bw.stats().running == 1, what="the first job starting")
        assert bw.cancel(ids[2]) is True
        assert bw.cancel(ids[2]) is False  # already gone
        assert bw.cancel(ids[0]) is False  # running
        assert bw.cancel(10_000) is False  # never issued
        assert bw.pending() == 5
        assert bw.stats().cancelled == 1
        Path(go).touch()
        outcomes = _by_id(list(bw.outcomes()))
        assert sorted(outcomes) == ids
        gone = outcomes[ids[2]]
        assert gone.cancelled and not gone.ok and isinstance(gone.error, JobCancelledError)
        assert gone.worker_pid is None and gone.attempts == () and gone.started_at is None
        with pytest.raises(JobCancelledError):
            gone.unwrap()
        assert all(o.ok for i, o in outcomes.items() if i != ids[2])
        assert bw.pending() == 0
        assert bw.cancel(ids[1]) is False  # done
        stats = bw.stats()
        assert stats.completed == 5 and stats.cancelled == 1 and stats.queued == 0


@pytest.mark.timeout(60)
def test_cancel_leaves_get_result_exact(tmp_path: Path) -> None:
    go = _block_file(tmp_path)
    with BossWorkerAsync(h.wait_for_file, worker_count=1) as bw:
        ids = bw.add_work(*[go] * 4)
        assert [bw.cancel(i) for i in ids[2:]] == [True, True]  # queued behind the blocked first
        assert bw.pending() == 2
        Path(go).touch()
        results = list(bw.results(with_id=True))
        assert sorted(i for i, _ in results) == ids[:2]
        assert bw.pending() == 0 and bw.get_result_nb() is None


@pytest.mark.timeout(60)
def test_cancel_racing_dispatch_gives_exactly_one_outcome() -> None:
    """A cancel that races the job's dispatch: either the job is dropped
    (a cancelled outcome, never run) or it runs (a real outcome); never both,
    never neither, and pending() ends at 0."""
    with BossWorkerAsync(h.echo, worker_count=2) as bw:
        dropped = 0
        for round_ in range(200):
            ids = bw.add_work(*range(3))
            cancelled = bw.cancel(ids[round_ % 3])
            dropped += cancelled
            outcomes = [bw.get_outcome(timeout=20) for _ in range(3)]
            assert all(o is not None for o in outcomes)
            by_id = _by_id(outcomes)  # type: ignore[arg-type]
            assert sorted(by_id) == ids
            assert by_id[ids[round_ % 3]].cancelled is cancelled
            assert bw.pending() == 0 and bw.get_outcome(blocking=False) is None
        assert bw.stats().cancelled == dropped


@pytest.mark.timeout(60)
def test_retry_a_job_whose_worker_died(start_method: str, tmp_path: Path) -> None:
    with BossWorkerAsync(h.die_once, worker_count=2, retries=1, start_method=start_method) as bw:
        n = 20
        bw.add_work(*[str(tmp_path / f"m{i}") for i in range(n)])
        outcomes = list(bw.outcomes())
        stats = bw.stats()
    assert len(outcomes) == n
    for o in outcomes:
        assert o.ok, o.error
        assert len(o.attempts) == 2 and o.retried == 1
        first, last = o.attempts
        assert isinstance(first.error, WorkerDiedError) and first.error.reason == "SIGKILL"
        assert last.error is None and last.worker_pid == o.worker_pid == o.value["pid"]  # type: ignore[index]
        assert first.worker_pid != last.worker_pid  # the first one died
        assert first.finished_at <= last.finished_at
    assert stats.retried == n and stats.completed == n and stats.failed == 0
    assert stats.queued == 0 and stats.running == 0


@pytest.mark.timeout(60)
def test_retry_is_bounded_and_off_by_default(tmp_path: Path) -> None:
    with BossWorkerAsync(h.die, worker_count=1, retries=2) as bw:
        bw.add_work(None)
        o = bw.get_outcome()
        assert o is not None and isinstance(o.error, WorkerDiedError)
        assert len(o.attempts) == 3 and all(isinstance(a.error, WorkerDiedError) for a in o.attempts)
        # Per call: retries=0 turns it off for these jobs.
        bw.add_work(None, retries=0)
        o = bw.get_outcome()
        assert o is not None and len(o.attempts) == 1
        stats = bw.stats()
        assert stats.retried == 2 and stats.failed == 2 and stats.completed == 2
    # retries=0 (the default) behaves as before: the death is the answer.
    with BossWorkerAsync(h.die_once, worker_count=1) as bw:
        bw.add_work(str(tmp_path / "once"))
        assert bw.get_result() == {"ERROR": "BossWorkerAsync: worker died (SIGKILL) while running this job"}
        assert bw.stats().retried == 0
        # Per call: retries=1 on a pool without retries; get_result sees the last attempt.
        bw.add_work(str(tmp_path / "again"), retries=1)
        assert bw.get_result()["marker"] == str(tmp_path / "again")
        assert bw.stats().retried == 1
    # A handler's exception is never retried.
    with BossWorkerAsync(h.raise_value_error, worker_count=1, retries=3) as bw:
        bw.add_work(1)
        o = bw.get_outcome()
        assert o is not None and type(o.error) is ValueError and len(o.attempts) == 1
        assert bw.stats().retried == 0


@pytest.mark.timeout(60)
def test_retry_on_timeouts_only_when_asked(tmp_path: Path) -> None:
    # The worker's own SIGALRM stops the first attempt; the Boss kills the
    # second kind (deaf to SIGALRM) and retries once the process is gone.
    for handler in (h.hang_once, h.hang_deaf_once):
        with BossWorkerAsync(handler, worker_count=1, retries=1, retry_on=("died", "timed_out")) as bw:
            bw.add_work(str(tmp_path / handler.__name__), timeout=0.3)
            o = bw.get_outcome()
            assert o is not None and o.ok and o.value == "second"
            assert isinstance(o.attempts[0].error, TaskTimeoutError) and len(o.attempts) == 2
            stats = bw.stats()
            assert stats.retried == 1 and stats.timed_out == 0 and stats.failed == 0
        with BossWorkerAsync(handler, worker_count=1, retries=1) as bw:  # "died" only: not retried
            bw.add_work(str(tmp_path / (handler.__name__ + "2")), timeout=0.3)
            o = bw.get_outcome()
            assert o is not None and isinstance(o.error, TaskTimeoutError) and len(o.attempts) == 1


@pytest.mark.timeout(60)
def test_async_outcomes(tmp_path: Path) -> None:
    async def main() -> list[Outcome[object]]:
        async with BossWorkerAsync(h.echo, worker_count=2) as bw:
            await bw.aadd_work(*range(10))
            first = await bw.aget_outcome()
            assert first is not None
            return [first] + [o async for o in bw.aoutcomes()]

    outcomes = asyncio.run(main())
    assert sorted(o.value for o in outcomes) == list(range(10))  # type: ignore[type-var]


def test_bad_arguments() -> None:
    for kwargs, match in [
        ({"retries": -1}, "retries must be at least 0"),
        ({"retries": 256}, "retries must be at most 255"),
        ({"retries": 1.5}, "retries must be an int"),
        ({"retry_on": "died"}, "retry_on must be a tuple"),
        ({"retry_on": ("died", "bored")}, "retry_on names 'bored'"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match):
            BossWorkerAsync(h.echo, **kwargs)  # type: ignore[arg-type]
    with BossWorkerAsync(h.echo, worker_count=1) as bw:
        with pytest.raises(InvalidArgumentError, match="job_id must be an int"):
            bw.cancel("1")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match="retries must be at least 0"):
            bw.add_work(1, retries=-1)
        assert bw.pending() == 0


def test_help_documents_every_parameter_and_stats_field() -> None:
    doc = inspect.getdoc(BossWorkerAsync) or ""
    for name in inspect.signature(BossWorkerAsync).parameters:
        assert f"\n{name}\n" in doc, f"{name} is not documented in BossWorkerAsync's docstring"
    stats_doc = inspect.getdoc(Stats) or ""
    for name in Stats.__dataclass_fields__:
        assert f"\n{name}\n" in stats_doc, f"Stats.{name} is not documented"
    assert "timed_out`` is a part of ``failed" in stats_doc
    for method in (BossWorkerAsync.get_outcome, BossWorkerAsync.cancel, BossWorkerAsync.outcomes):
        assert method.__doc__


def test_workers_pid_is_in_the_answer_header(tmp_path: Path) -> None:
    """The pid in the header is the answering worker's, for results too."""
    with BossWorkerAsync(h.sleep_then_pid, worker_count=3) as bw:
        bw.add_work(*[0.0] * 30)
        pids = [(o.worker_pid, o.value) for o in bw.outcomes()]
    assert len(pids) == 30 and all(pid == value for pid, value in pids)
    assert os.getpid() not in {pid for pid, _ in pids}


# -- outcomes as streams: map_outcomes, outcomes(until_closed=, progress=) ------


@pytest.mark.timeout(60)
def test_map_outcomes_in_order_with_details_and_real_errors(start_method: str) -> None:
    with BossWorkerAsync(h.raise_on_odd, worker_count=2, start_method=start_method) as bw:
        workers = {c.pid for c in psutil.Process(bw.boss_pid).children()}
        before = time.time()
        got = list(bw.map_outcomes(range(200), max_in_flight=16))
        after = time.time()
        # A map's jobs are its own: nothing reaches get_outcome or pending.
        assert bw.pending() == 0 and bw.get_outcome(blocking=False) is None
    assert [o.job_id for o in got] == sorted(o.job_id for o in got)  # input order
    for n, o in enumerate(got):
        assert o.worker_pid in workers and len(o.attempts) == 1
        assert before <= o.queued_at <= o.started_at <= o.finished_at <= after  # type: ignore[operator]
        if n % 2:
            assert not o.ok and type(o.error) is ValueError and str(o.error) == f"odd {n}"
            assert isinstance(o.error.__cause__, RemoteTraceback)
        else:
            assert o.ok and o.value == n and o.unwrap() == n


@pytest.mark.timeout(60)
def test_map_outcomes_unordered_retries_and_async(tmp_path: Path) -> None:
    markers = [str(tmp_path / f"m{i}") for i in range(12)]
    with BossWorkerAsync(h.die_once, worker_count=2, retries=1) as bw:
        got = list(bw.map_outcomes(markers, ordered=False, max_in_flight=4))
        assert sorted(o.value["marker"] for o in got) == sorted(markers)  # type: ignore[index]
        for o in got:
            assert o.ok and len(o.attempts) == 2 and isinstance(o.attempts[0].error, WorkerDiedError)
        # retries=0 for one map: the death is the outcome.
        [o] = bw.map_outcomes([str(tmp_path / "once")], retries=0)
        assert isinstance(o.error, WorkerDiedError) and len(o.attempts) == 1
        # A plain map takes the pool's retries too (it used to ignore them).
        assert [r["marker"] for r in bw.map([str(tmp_path / "m-map")])] == [str(tmp_path / "m-map")]
        assert bw.stats().retried == 13

    async def main() -> list[Outcome[int]]:
        async def numbers() -> AsyncIterator[int]:
            for i in range(30):
                yield i

        async with BossWorkerAsync(h.echo, worker_count=2) as pool:
            return [o async for o in pool.amap_outcomes(numbers(), max_in_flight=5)]

    outcomes = asyncio.run(main())
    assert [o.value for o in outcomes] == list(range(30)) and all(o.ok for o in outcomes)


@pytest.mark.timeout(120)
def test_outcomes_until_closed_beside_a_producer_thread(tmp_path: Path) -> None:
    """A consumer of outcomes(until_closed=True) beside a producer that adds
    work, cancels some of it, then closes input: every job yields exactly one
    outcome, and the loop ends only after the last.  Repeated: the end of
    input races the last answers."""
    for _ in range(20):
        with BossWorkerAsync(h.echo, worker_count=2) as bw:
            added: list[int] = []

            def produce(bw: BossWorkerAsync[int, int], added: list[int]) -> None:
                for i in range(5):
                    added.extend(bw.add_work(*range(i * 10, i * 10 + 10)))
                bw.close_input()

            thread = threading.Thread(target=produce, args=(bw, added))
            thread.start()
            got = list(bw.outcomes(until_closed=True))
            thread.join(10)
            assert sorted(o.job_id for o in got) == sorted(added) and len(got) == 50
    # A cancel from another thread while the consumer is the one reading
    # the socket (it reads the Boss's reply): the cancelled outcome is filed
    # as the reply is read, so the consumer takes it at once.  Also for a
    # plain blocking get_outcome(), which used to wait for the next answer.
    for round_ in range(10):
        _cancel_beside_a_reading_consumer(str(tmp_path / f"go{round_}"), until_closed=bool(round_ % 2))


def _cancel_beside_a_reading_consumer(go: str, until_closed: bool) -> None:
    results: list[Outcome[object] | None] = []

    def consume() -> None:
        if until_closed:
            results.extend(bw.outcomes(until_closed=True))
        else:
            results.append(bw.get_outcome())

    with BossWorkerAsync(h.wait_for_file, worker_count=1) as bw:
        ids = bw.add_work(*[go] * 3)
        consumer = threading.Thread(target=consume)
        consumer.start()
        wait_until(lambda: bw.stats().running == 1, what="the first job starting")
        assert bw.cancel(ids[2]) is True
        wait_until(lambda: len(results) == 1, what="the cancelled job's outcome")
        first = results[0]
        assert first is not None and first.job_id == ids[2] and first.cancelled
        Path(go).touch()
        bw.close_input()
        consumer.join(30)
        assert not consumer.is_alive()
        results.extend(bw.outcomes())
    assert sorted(o.job_id for o in results if o is not None) == ids


@pytest.mark.timeout(60)
def test_aoutcomes_until_closed_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> list[Outcome[object]]:
        async with BossWorkerAsync(h.echo, worker_count=2) as bw:

            async def produce() -> None:
                for i in range(4):
                    await bw.aadd_work(*range(i * 5, i * 5 + 5))
                    await asyncio.sleep(0)
                bw.close_input()

            producer = asyncio.ensure_future(produce())
            got = [o async for o in bw.aoutcomes(until_closed=True, progress={"file": sys.stderr})]
            await producer
            return got

    outcomes = asyncio.run(main())
    assert sorted(o.value for o in outcomes) == list(range(20))  # type: ignore[type-var]
    # The bar ran (tqdm is installed for the tests) and counted every outcome.
    assert "20/20" in capsys.readouterr().err

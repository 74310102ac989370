"""Input as a stream: map/amap with bounded in-flight, close_input() with
results(until_closed=True), progress bars, and the pool's generic types."""

from __future__ import annotations

import asyncio
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest

from bossworker import (
    BossWorkerAsync,
    InputClosedError,
    SerializationError,
    ShutDownError,
    progressbar,
)
from stream_handlers import double, fail_on_odd, jitter, nap
from waiting import wait_until

ROOT = Path(__file__).resolve().parent.parent


def rounds(start_method: str, fork_rounds: int) -> int:
    """Repeats of a racy scenario: each round starts a pool, which costs
    ~10x more under spawn, so those rounds are fewer."""
    return fork_rounds if start_method == "fork" else max(3, fork_rounds // 6)


class Counted:
    """An endless input that records how far ahead of the consumer it was
    read: items taken minus results the consumer received."""

    def __init__(self) -> None:
        self.taken = 0
        self.received = 0
        self.most_ahead = 0

    def __iter__(self) -> Iterator[int]:
        for i in itertools.count():
            self.taken += 1
            self.most_ahead = max(self.most_ahead, self.taken - self.received)
            yield i


# -- map ------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_map_ordered_over_an_endless_generator_keeps_at_most_n_in_flight(start_method: str) -> None:
    source = Counted()
    with BossWorkerAsync(jitter, worker_count=3, start_method=start_method) as bw:
        got = []
        for value in bw.map(source, max_in_flight=7):
            source.received += 1
            got.append(value)
            if len(got) == 300:
                break
        assert got == list(range(300))
        assert source.most_ahead == 7  # the window was used, and never exceeded
        # The abandoned map's answers never reach get_result(), nor pending().
        assert bw.pending() == 0
        bw.add_work(1000)
        assert bw.get_result() == 1000
        assert bw.pending() == 0


@pytest.mark.timeout(60)
def test_map_unordered_yields_each_result_once_with_bounded_in_flight(start_method: str) -> None:
    source = Counted()
    with BossWorkerAsync(jitter, worker_count=3, start_method=start_method) as bw:
        got = []
        for value in bw.map(source, ordered=False, max_in_flight=5):
            source.received += 1
            got.append(value)
            if len(got) == 200:
                break
        assert source.most_ahead <= 5
        assert len(set(got)) == 200
        assert set(got) <= set(range(source.taken))
        assert sorted(bw.map(range(50), ordered=False)) == list(range(50))  # a finite input ends


@pytest.mark.timeout(60)
def test_map_and_get_result_never_take_each_others_results() -> None:
    with BossWorkerAsync(fail_on_odd, worker_count=2, start_method="fork") as bw:
        ids = bw.add_work(100, 102, 104)
        out = list(bw.map(range(6), timeout=30))
        assert out[0::2] == [0, 2, 4]
        assert [r["ERROR"].splitlines()[0] for r in out[1::2]] == [f"ValueError: odd: {i}" for i in (1, 3, 5)]
        assert bw.pending() == 3
        assert sorted(bw.results(with_id=True)) == list(zip(ids, [100, 102, 104], strict=True))


def test_map_refuses_an_item_that_cannot_be_pickled_and_add_work_of_a_list_is_one_job() -> None:
    with BossWorkerAsync(len, worker_count=1, start_method="fork") as bw:
        results = bw.map([[1], lambda: 0, [3]])
        assert next(results) == 1
        with pytest.raises(SerializationError, match=r"item #1 of map\(\)'s input"):
            next(results)
        assert bw.add_work([1, 2, 3]) == [2]  # ONE job, the list (id 1 went to map)
        assert bw.get_result() == 3
        with pytest.raises(ValueError, match="max_in_flight"):
            bw.map([1], max_in_flight=0)
        with pytest.raises(ValueError, match="progress"):
            bw.map([1], progress="yes")  # type: ignore[arg-type]


# -- close_input --------------------------------------------------------------------


def test_add_work_after_close_input_raises_input_closed_error() -> None:
    with BossWorkerAsync(double, worker_count=1, start_method="fork") as bw:
        bw.add_work(1)
        bw.close_input()
        bw.close_input()  # harmless again
        with pytest.raises(InputClosedError, match=r"close_input\(\) was called") as caught:
            bw.add_work(2)
        assert isinstance(caught.value, ShutDownError)
        with pytest.raises(InputClosedError):
            next(bw.map([3]))
        assert list(bw.results(until_closed=True)) == [2]  # the work in hand still runs


@pytest.mark.timeout(90)
def test_a_consumer_thread_beside_a_producer_thread_gets_every_result_then_ends(start_method: str) -> None:
    """The race: the consumer may find nothing pending before the producer's
    first add_work, between two of them, or after close_input()."""
    for round_no in range(rounds(start_method, 30)):
        _producer_and_consumer_threads(round_no, start_method)


def _producer_and_consumer_threads(round_no: int, start_method: str) -> None:
    count = (0, 1, 20)[round_no % 3]
    with BossWorkerAsync(double, worker_count=2, start_method=start_method) as bw:
        got: list[int] = []
        errors: list[Exception] = []
        consumer_in = threading.Event()

        def consume() -> None:
            try:
                consumer_in.set()
                for value in bw.results(until_closed=True):
                    assert isinstance(value, int)
                    got.append(value)
            except Exception as exc:  # noqa: BLE001 - reported by the test's thread
                errors.append(exc)

        def produce() -> None:
            if round_no % 2:
                consumer_in.wait(10)  # half the rounds: the consumer is waiting first
            for i in range(count):
                bw.add_work(i)
            bw.close_input()

        threads = [threading.Thread(target=consume), threading.Thread(target=produce)]
        for t in threads if round_no % 2 else reversed(threads):
            t.start()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), f"round {round_no}: a thread is stuck"
        assert not errors, errors
        assert sorted(got) == [2 * i for i in range(count)], f"round {round_no}"


@pytest.mark.timeout(90)
def test_asyncio_consumer_task_beside_a_producer_task_or_thread(start_method: str) -> None:
    async def round_trip(round_no: int, start_method: str) -> None:
        count = (0, 1, 20)[round_no % 3]
        async with BossWorkerAsync(double, worker_count=2, start_method=start_method) as bw:

            async def consume() -> list[int]:
                return [v async for v in bw.aresults(until_closed=True) if isinstance(v, int)]

            async def produce() -> None:
                for i in range(count):
                    await bw.aadd_work(i)
                    await asyncio.sleep(0)
                bw.close_input()

            def produce_in_thread() -> None:
                for i in range(count):
                    bw.add_work(i)
                bw.close_input()

            consumer = asyncio.ensure_future(consume())
            await asyncio.sleep(0)  # the consumer starts waiting with nothing pending
            if round_no % 2:
                await produce()
            else:
                thread = threading.Thread(target=produce_in_thread)
                thread.start()
                await asyncio.to_thread(thread.join, 30)
            got = await asyncio.wait_for(consumer, 30)
            assert sorted(got) == [2 * i for i in range(count)], f"round {round_no}"

    for round_no in range(rounds(start_method, 24)):
        asyncio.run(round_trip(round_no, start_method))


# -- amap ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_amap_over_an_async_generator_and_a_plain_iterable() -> None:
    source = Counted()

    async def slow_source() -> AsyncIterator[int]:
        for i in itertools.count():
            source.taken += 1
            source.most_ahead = max(source.most_ahead, source.taken - source.received)
            if i % 10 == 0:
                await asyncio.sleep(0.001)  # a source that makes the consumer wait
            yield i

    async def main() -> None:
        async with BossWorkerAsync(jitter, worker_count=3, start_method="fork") as bw:
            got = []
            async for value in bw.amap(slow_source(), max_in_flight=6):
                source.received += 1
                got.append(value)
                if len(got) == 150:
                    break
            assert got == list(range(150))
            assert source.most_ahead <= 6
            unordered = [v async for v in bw.amap(range(40), ordered=False, max_in_flight=4)]
            assert sorted(unordered) == list(range(40))
            assert [v async for v in bw.amap([])] == []
            assert bw.pending() == 0

    asyncio.run(main())


# -- progress -----------------------------------------------------------------------


def test_progress_bars_show_the_known_totals() -> None:
    pytest.importorskip("tqdm")
    with BossWorkerAsync(double, worker_count=2, start_method="fork") as bw:
        out = StringIO()
        assert list(bw.map(range(30), progress={"file": out, "mininterval": 0})) == [2 * i for i in range(30)]
        assert "30/30" in out.getvalue()
        bw.add_work(*range(10))
        out = StringIO()
        assert sorted(bw.results(progress={"file": out, "mininterval": 0})) == [2 * i for i in range(10)]
        assert "10/10" in out.getvalue()
        out = StringIO()
        assert len(list(bw.map(iter(range(5)), progress={"file": out, "mininterval": 0}))) == 5
        assert "5it" in out.getvalue()  # no len(): a count, no total


def test_progress_without_tqdm_prints_one_hint_and_works(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm now raises ImportError
    monkeypatch.setattr(progressbar, "_hint_shown", False)
    with BossWorkerAsync(double, worker_count=2, start_method="fork") as bw:
        assert list(bw.map(range(5), progress=True)) == [0, 2, 4, 6, 8]
        bw.add_work(1, 2)
        assert sorted(bw.results(progress=True)) == [2, 4]

        async def main() -> list[Any]:
            await bw.aadd_work(3)
            return [v async for v in bw.aresults(progress=True)]

        assert asyncio.run(main()) == [6]
    assert capsys.readouterr().err.splitlines().count(progressbar.NO_TQDM_HINT) == 1


# -- memory -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_map_memory_stays_flat_over_a_long_input() -> None:
    """Main's peak RSS (fresh interpreters) after 300,000 tiny jobs is that
    after 20,000, within 4 MiB (bench/map_rss.py measures 1,000,000)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from map_rss import measure
    finally:
        sys.path.remove(str(ROOT / "bench"))
    short = measure(20_000, 1024)
    long = measure(300_000, 1024)
    assert long["peak_rss_kib"] - short["peak_rss_kib"] < 4 * 1024, (short, long)


# -- typing -------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_mypy_checks_a_users_jobs_and_start_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api = pytest.importorskip("mypy.api")
    good = (ROOT / "tests" / "typed_user_script.py").read_text()
    (tmp_path / "good.py").write_text(good)
    bad_job = good.replace(
        'ids: list[int] = bw.add_work({"w": 2, "h": 3}', 'ids: list[int] = bw.add_work("not a dict"'
    )
    assert bad_job != good
    (tmp_path / "bad_job.py").write_text(bad_job)
    bad_method = good.replace('start_method="spawn"', 'start_method="sapwn"')
    assert bad_method != good
    (tmp_path / "bad_method.py").write_text(bad_method)
    bad_result = good.replace("total: int = first + 1", "total: str = first")
    (tmp_path / "bad_result.py").write_text(bad_result)
    monkeypatch.setenv("MYPYPATH", str(ROOT / "src"))  # the package, not an editable install's hook
    stdout, stderr, _status = api.run(
        [
            "--strict",
            "--no-error-summary",
            # A cache of its own: a shared one replays the errors of an
            # earlier run (same module names, other temporary paths).
            "--cache-dir",
            str(tmp_path / ".mypy_cache"),
            *(str(tmp_path / name) for name in ("good.py", "bad_job.py", "bad_method.py", "bad_result.py")),
        ]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    by_file = {
        name: [e for e in errors if e.startswith(str(tmp_path / name))]
        for name in ("good.py", "bad_job.py", "bad_method.py", "bad_result.py")
    }
    assert by_file["good.py"] == [], stdout + stderr
    assert any('"add_work"' in e and '"str"' in e for e in by_file["bad_job.py"]), stdout
    assert any('"start_method"' in e and "sapwn" in e for e in by_file["bad_method.py"]), stdout
    assert any("incompatible types in assignment" in e.lower() for e in by_file["bad_result.py"]), stdout
    assert len(errors) == sum(len(v) for v in by_file.values()), stdout


@pytest.mark.timeout(120)
def test_leaving_a_map_early_cancels_its_jobs_not_started() -> None:
    """A map left after 3 results of 500 in flight: the Boss drops the jobs
    no worker has, so the pool's graceful shut-down does not wait for them,
    and the pool stays exact for other work (repeated: the cancels race the
    dispatch of the next jobs)."""
    for round_ in range(6):
        with BossWorkerAsync(nap, worker_count=2) as bw:
            for value in bw.map(range(500), max_in_flight=500, ordered=bool(round_ % 2)):
                if value >= 0:
                    break  # the first result: 498 or so jobs are still queued
            assert bw.add_work(7) and bw.get_result() == 7 and bw.pending() == 0
            stats = wait_until(lambda: (s := bw.stats()).queued == 0 and s.running == 0 and s)
            # What ran: the first answers, those sent ahead to the two workers
            # (a few each), and nothing of the rest.
            assert stats.completed + stats.cancelled == 501
            assert stats.cancelled >= 400, stats

    # amap, left from a task.
    async def main() -> int:
        async with BossWorkerAsync(nap, worker_count=2) as bw:
            async for _ in bw.amap(range(500), max_in_flight=500):
                break
            stats = bw.stats()
            while stats.queued or stats.running:
                await asyncio.sleep(0.01)
                stats = bw.stats()
            return stats.cancelled

    assert asyncio.run(main()) >= 400

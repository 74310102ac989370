"""Large payloads travel through shared-memory segments; none may leak."""

from __future__ import annotations

import gc
import glob
import os
import pickle

import pytest

import handlers
from bossworker import BossWorkerAsync
from bossworker.payload import THRESHOLD, Segments, chunks_of, dump, new_prefix

BIG = os.urandom(THRESHOLD * 4)


def our_segments() -> list[str]:
    return glob.glob(f"/dev/shm/bossworker-{os.getpid()}-*")


@pytest.fixture(autouse=True)
def no_leaked_segments() -> None:
    if new_prefix() is None:
        pytest.skip("no writable /dev/shm on this machine")
    assert our_segments() == []
    yield
    gc.collect()
    assert our_segments() == []


def test_dump_does_not_copy_big_buffers() -> None:
    chunks, size = chunks_of(dump({"data": BIG}))
    assert any(c is BIG for c in chunks)
    assert size > len(BIG)
    assert pickle.loads(b"".join(chunks)) == {"data": BIG}
    small = dump({"a": 1})
    assert type(small) is bytes and pickle.loads(small) == {"a": 1}


def test_segment_round_trip_and_inline_fallback(tmp_path: object) -> None:
    segments = Segments(new_prefix())
    assert segments.store(1, "j", dump(BIG))
    assert segments.load(1, "j") == BIG
    assert not segments.store(2, "j", dump(b"small"))  # below the threshold: inline
    assert not Segments(None).store(3, "j", dump(BIG))  # no shared memory: inline
    with pytest.raises(FileNotFoundError):
        segments.load(1, "j")  # loading removed it


def test_big_jobs_and_results_round_trip(start_method: str) -> None:
    payloads = [BIG, {"data": BIG, "n": 1}, [BIG, BIG], "x" * THRESHOLD * 2, bytearray(BIG)]
    with BossWorkerAsync(handlers.echo, worker_count=2, start_method=start_method) as bw:
        ids = bw.add_work(*payloads)
        got = dict(bw.get_result(with_id=True) for _ in payloads)
    assert [got[i] for i in ids] == payloads


def test_forced_stop_frees_unretrieved_results() -> None:
    bw = BossWorkerAsync(handlers.echo, worker_count=2)
    bw.add_work(BIG, BIG, BIG)
    bw.get_result()  # the others are surely in flight or done by now
    bw.shut_down(force=True)
    assert our_segments() == []


def test_graceful_stop_keeps_results_until_retrieved_then_gc_frees_the_rest() -> None:
    bw = BossWorkerAsync(handlers.echo, worker_count=2)
    bw.add_work(BIG, BIG)
    bw.shut_down()
    assert len(our_segments()) == 2  # waiting for get_result()
    assert bw.get_result() == BIG
    assert len(our_segments()) == 1
    del bw  # the other is never retrieved: the finalizer frees it
    gc.collect()


def test_dead_and_timed_out_workers_leave_no_segments() -> None:
    with BossWorkerAsync(handlers.exit_hard, worker_count=1) as bw:
        bw.add_work({"code": 3, "data": BIG})
        assert "worker died (exit code 3)" in bw.get_result(timeout=30)["ERROR"]
    with BossWorkerAsync(handlers.spin_with_alarm_blocked, worker_count=1, global_timeout=0.3) as bw:
        bw.add_work({"seconds": 20, "data": BIG}, {"seconds": 0, "data": BIG})
        results = [bw.get_result(timeout=30) for _ in range(2)]
        assert {"ERROR": "BossWorkerAsync: timed out"} in results
        assert {"done": True} in results

"""The job codec alone (bossworker.jobs): frames in, values out, no processes."""

from __future__ import annotations

import os
import pickle
import struct
import threading
from collections.abc import Iterator, Sequence

import pytest

from bossworker import errors
from bossworker.answers import value as result_value
from bossworker.boss.core import boss_answer
from bossworker.errors import MemoryLimitError, WorkerDiedError
from bossworker.jobs import (
    Facts,
    answer_facts,
    answer_frame,
    decode_error,
    error_answer,
    error_text,
    frame_text,
    job_frame,
    job_frames,
    load_job,
    result_answer,
    result_segment,
    retried_job_frames,
    text_frame,
)
from bossworker.memory import shown_over
from bossworker.outcome import error_from_answer
from bossworker.payload import THRESHOLD, Chunked, Segments, dump, new_prefix
from bossworker.protocol import Buffer, Decoder, Flag, Frame, Kind, RetryOn, answer_pid, job_retry

NO_SHM = Segments(None)


def decode(buffers: Sequence[Buffer]) -> list[Frame]:
    """Every frame in ``buffers``, sent back to back, fed in odd-sized pieces."""
    data = b"".join(bytes(b) for b in buffers)
    decoder = Decoder(chunk_size=4096)
    for start in range(0, len(data), 1000):
        decoder.feed(data[start : start + 1000])
    assert decoder.at_frame_boundary
    return decoder.take()


@pytest.fixture
def shm() -> Iterator[Segments]:
    prefix = new_prefix()
    if prefix is None:
        pytest.skip("no writable /dev/shm on this platform")
    segments = Segments(prefix)
    yield segments
    segments.discard_all()


# -- jobs ----------------------------------------------------------------------------------


def test_many_tiny_jobs_are_one_buffer_and_round_trip() -> None:
    jobs = [{"a": i, "b": 3} for i in range(20_000)]
    ids = list(range(100, 100 + len(jobs)))
    buffers = job_frames(ids, [dump(j) for j in jobs], 2.5, NO_SHM)
    assert len(buffers) == 1  # add_work of many tiny jobs is one write
    frames = decode(buffers)
    assert [f.job_id for f in frames] == ids
    assert {f.kind for f in frames} == {Kind.JOB}
    assert {f.limit for f in frames} == {2.5}
    assert [load_job(f, NO_SHM) for f in frames] == jobs
    assert job_retry(frames[0].raw) == (0, 0)


def test_a_big_job_travels_inline_uncopied_without_shared_memory() -> None:
    big = b"x" * (THRESHOLD * 2)
    pickled = dump({"blob": big})
    assert isinstance(pickled, Chunked)
    buffers = job_frames([1, 2, 3], [dump(1), pickled, dump(3)], 0.0, NO_SHM)
    # The big buffer itself is handed on, not a copy of it.
    assert any(b is big for b in buffers)
    frames = decode(buffers)
    assert [load_job(f, NO_SHM) for f in frames] == [1, {"blob": big}, 3]
    assert not any(f.flags & Flag.SEGMENT for f in frames)


def test_a_big_job_goes_to_a_segment_and_is_loaded_from_it(shm: Segments) -> None:
    big = os.urandom(THRESHOLD + 1)
    buffers = job_frames([7], [dump(big)], 1.0, shm)
    (frame,) = decode(buffers)
    assert frame.flags & Flag.SEGMENT and len(frame.payload) == 0
    assert os.path.exists(shm.path(7, "j"))
    assert load_job(frame, shm) == big
    assert not os.path.exists(shm.path(7, "j"))  # loading consumes it


def test_jobs_already_in_segments_are_not_stored_again(shm: Segments) -> None:
    big = dump(b"y" * THRESHOLD)
    assert shm.store(5, "j", big)
    (frame,) = decode(job_frames([5], [big], 0.0, NO_SHM, in_segments={5}))
    assert frame.flags & Flag.SEGMENT
    assert load_job(frame, shm) == b"y" * THRESHOLD


def test_retried_jobs_carry_their_settings_and_stay_inline(shm: Segments) -> None:
    big = b"z" * (THRESHOLD * 2)
    buffers = retried_job_frames([1, 2], [dump("small"), dump(big)], 3.0, 2, RetryOn.DIED | RetryOn.MEMORY)
    frames = decode(buffers)
    assert [job_retry(f.raw) for f in frames] == [(2, RetryOn.DIED | RetryOn.MEMORY)] * 2
    assert [load_job(f, shm) for f in frames] == ["small", big]
    assert not any(f.flags & Flag.SEGMENT for f in frames)
    # Only a job already in a segment (too big for a frame) travels there.
    assert shm.store(9, "j", dump(big))
    (frame,) = decode(retried_job_frames([9], [dump(big)], 0.0, 1, RetryOn.DIED, in_segments={9}))
    assert frame.flags & Flag.SEGMENT and job_retry(frame.raw) == (1, RetryOn.DIED)
    assert load_job(frame, shm) == big


def test_job_frame_is_what_job_frames_writes_for_a_small_job() -> None:
    payload = pickle.dumps([1, 2, 3])
    assert job_frame(4, payload, 1.5) == b"".join(bytes(b) for b in job_frames([4], [payload], 1.5, NO_SHM))


def test_a_job_that_does_not_unpickle_raises_the_unpickling_error() -> None:
    (frame,) = decode([job_frame(1, b"not a pickle", 0.0)])
    with pytest.raises(pickle.UnpicklingError):
        load_job(frame, NO_SHM)


# -- answers --------------------------------------------------------------------------------


def test_a_small_result_is_one_buffer_with_the_workers_pid_and_run_time() -> None:
    started = 0.0  # perf_counter() counts up from an arbitrary start: ran > 0
    answer = result_answer(3, dump({"product": 12}), NO_SHM, started)
    assert len(answer) == 1 and result_segment(answer) is None
    (frame,) = decode(answer)
    assert (frame.kind, frame.job_id) == (Kind.RESULT, 3)
    assert answer_pid(frame.raw) == os.getpid()
    assert frame.ran > 0
    assert result_value(frame, NO_SHM) == {"product": 12}


def test_a_big_result_travels_inline_in_chunks_or_in_a_segment(shm: Segments) -> None:
    big = b"r" * (THRESHOLD * 2)
    inline = result_answer(1, dump(big), NO_SHM, 0.0)
    assert any(b is big for b in inline) and result_segment(inline) is None
    (frame,) = decode(inline)
    assert result_value(frame, NO_SHM) == big

    in_segment = result_answer(2, dump(big), shm, 0.0)
    assert result_segment(in_segment) == 2
    (frame,) = decode(in_segment)
    assert frame.flags & Flag.SEGMENT
    assert result_value(frame, shm) == big


def test_a_result_that_does_not_unpickle_is_that_jobs_error() -> None:
    (frame,) = decode([answer_frame(Kind.RESULT, 8, b"\x80\x05garbage")])
    value = result_value(frame, NO_SHM)
    assert value["ERROR"].startswith("BossWorkerAsync: result could not be unpickled: ")


def test_timed_out_and_error_answers_become_error_dicts() -> None:
    (timed_out,) = decode([answer_frame(Kind.TIMED_OUT, 1, ran=2.0, pid=42)])
    assert result_value(timed_out, NO_SHM) == {"ERROR": "BossWorkerAsync: timed out"}
    assert answer_pid(timed_out.raw) == 42 and timed_out.ran == 2.0
    (failed,) = decode([error_answer(2, "ValueError: rattle\ntraceback…")])
    assert result_value(failed, NO_SHM) == {"ERROR": "ValueError: rattle\ntraceback…"}
    assert failed.flags == 0 and answer_pid(failed.raw) == 0


def test_an_error_carries_its_exception_when_it_pickles() -> None:
    (frame,) = decode([error_answer(5, "KeyError: 'k'", KeyError("k"), flags=Flag.DIED, pid=7)])
    assert frame.flags == Flag.EXCEPTION | Flag.DIED
    text, exc = decode_error(frame.flags, frame.payload)
    assert text == error_text(frame) == "KeyError: 'k'"
    assert exc is not None
    restored = pickle.loads(exc)
    assert type(restored) is KeyError and restored.args == ("k",)
    assert result_value(frame, NO_SHM) == {"ERROR": "KeyError: 'k'"}


class _Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("held a lock")
        self.lock = threading.Lock()


def test_an_error_whose_exception_does_not_pickle_carries_the_text_alone() -> None:
    (frame,) = decode([error_answer(6, "_Unpicklable: held a lock", _Unpicklable())])
    assert not frame.flags & Flag.EXCEPTION
    assert decode_error(frame.flags, frame.payload) == ("_Unpicklable: held a lock", None)


def test_a_torn_exception_payload_is_a_struct_error() -> None:
    with pytest.raises(struct.error):
        decode_error(Flag.EXCEPTION, b"\x01\x00")


# -- facts: what the Boss measured travels as data, the text stays as users read it --------


def test_a_memory_kill_gives_main_the_exact_sizes_and_the_same_text() -> None:
    rss, cap = 130 * 1024 * 1024 + 12_345, 120 * 1024 * 1024 + 1  # neither a round 0.1 MiB
    text = errors.MEMORY_LIMIT_ERROR.format(**shown_over(rss, cap))
    (frame,) = decode([boss_answer(4, Kind.ERROR, text, Flag.MEMORY, 9, 0.5, Facts(rss=rss, limit=cap))])
    assert frame.flags == Flag.MEMORY | Flag.FACTS and answer_pid(frame.raw) == 9
    assert error_text(frame) == text
    assert text == "BossWorkerAsync: worker exceeded its memory limit (130.1 MiB > 120.0 MiB)"
    assert result_value(frame, NO_SHM) == {"ERROR": text}
    error = error_from_answer(frame, 0.0)
    assert isinstance(error, MemoryLimitError)
    assert (error.rss, error.limit, str(error)) == (rss, cap, text)  # exact, not read back from "130.1"


@pytest.mark.parametrize(
    ("exitcode", "reason"), [(-9, "SIGKILL"), (3, "exit code 3"), (None, "its Dask worker died: gone")]
)
def test_a_death_gives_main_its_exit_code_and_reason(exitcode: int | None, reason: str) -> None:
    text = errors.worker_died_error(reason)
    facts = Facts(exitcode=exitcode, reason=reason)
    (frame,) = decode([boss_answer(4, Kind.ERROR, text, Flag.DIED, 9, 0.5, facts)])
    assert answer_facts(frame) == facts
    assert result_value(frame, NO_SHM) == {"ERROR": text}
    error = error_from_answer(frame, 0.0, "task")
    assert isinstance(error, WorkerDiedError)
    assert (error.exitcode, error.reason) == (exitcode, reason)
    assert str(error).startswith(f"the worker running this task died ({reason});")


def test_facts_ride_after_an_exception_and_leave_it_intact() -> None:
    facts = Facts(exitcode=-11, reason="SIGSEGV")
    (frame,) = decode([error_answer(5, "KeyError: 'k'", KeyError("k"), flags=Flag.DIED, facts=facts)])
    assert frame.flags == Flag.EXCEPTION | Flag.DIED | Flag.FACTS
    text, exc = decode_error(frame.flags, frame.payload)
    assert text == "KeyError: 'k'" and exc is not None and pickle.loads(exc).args == ("k",)
    assert answer_facts(frame) == facts


def test_no_facts_or_broken_facts_read_as_unknown() -> None:
    died = errors.worker_died_error("SIGKILL").encode()
    (plain,) = decode([answer_frame(Kind.ERROR, 1, died, flags=Flag.DIED)])
    assert answer_facts(plain) == Facts()
    for tail in (b"", b"\x07", b"not json" + struct.pack("<I", 8), b"[1]" + struct.pack("<I", 3)):
        (torn,) = decode([answer_frame(Kind.ERROR, 1, b"text" + tail, flags=Flag.FACTS | Flag.DIED)])
        assert answer_facts(torn) == Facts()
    odd = b'{"exitcode":"9","rss":1.5,"reason":7}'
    payload = b"t" + odd + struct.pack("<I", len(odd))
    (typed,) = decode([answer_frame(Kind.ERROR, 1, payload, flags=Flag.FACTS)])
    assert answer_facts(typed) == Facts() and error_text(typed) == "t"


def test_text_frames_round_trip_and_never_raise_on_bad_utf8() -> None:
    (frame,) = decode([text_frame(Kind.INIT_FAILED, 2, "init failed: \u00e9")])
    assert (frame.kind, frame.job_id) == (Kind.INIT_FAILED, 2)
    assert frame_text(frame) == "init failed: \u00e9"
    (lone,) = decode([text_frame(Kind.INIT_FAILED, 0, "bad \udc80 surrogate")])
    assert frame_text(lone) == "bad ? surrogate"
    (raw,) = decode([answer_frame(Kind.ERROR, 1, b"\xff\xfe")])
    assert error_text(raw) == "\ufffd\ufffd"


# -- the contract texts (users match on them: they must not change) ------------------------


def test_the_texts_main_and_workers_write_are_unchanged() -> None:
    exc = OSError(2, "gone")
    assert (
        errors.worker_died_error("SIGKILL") == "BossWorkerAsync: worker died (SIGKILL) while running this job"
    )
    assert errors.worker_died_error("x").startswith(errors.WORKER_DIED_PREFIX)
    assert errors.no_worker_could_start_error("boom") == "BossWorkerAsync: no worker could start: boom"
    assert errors.result_not_picklable_error("E") == "BossWorkerAsync: result could not be pickled: E"
    assert errors.result_too_big_error(9, 8) == (
        "BossWorkerAsync: the result pickles to 9 bytes, above the 8-byte limit of a frame, "
        "and /dev/shm had no room for it"
    )
    assert errors.result_not_unpicklable_error(ValueError("v")) == (
        "BossWorkerAsync: result could not be unpickled: ValueError('v')"
    )
    assert errors.handlers_not_unpicklable_error("E") == (
        "BossWorkerAsync: the handlers could not be unpickled on the Dask worker "
        "(is their module importable there?): E"
    )
    assert errors.could_not_start_worker_error("E") == "BossWorkerAsync: could not start a worker: E"
    assert errors.POOL_SHUTTING_DOWN_ERROR == "BossWorkerAsync: the pool is shutting down"
    assert errors.POOL_NOT_SET_UP_ERROR == (
        "BossWorkerAsync: the pool is not set up on this Dask worker (is it shutting down?)"
    )
    assert errors.DASK_TASK_CANCELLED_ERROR == "BossWorkerAsync: the Dask task was cancelled"
    assert errors.dask_start_error("tcp://h:1", "E") == (
        "BossWorkerAsync: could not start on the Dask cluster at tcp://h:1: E"
    )
    assert errors.job_payload_lost_error(exc) == "BossWorkerAsync: the job's payload is lost: [Errno 2] gone"
    assert errors.job_not_sent_error(exc) == (
        "BossWorkerAsync: the job could not be sent to a Dask worker: FileNotFoundError(2, 'gone')"
    )
    assert errors.dask_worker_died_error(exc) == (
        "BossWorkerAsync: worker died (its Dask worker died: [Errno 2] gone) while running this job"
    )
    assert errors.dask_task_failed_error("E") == "BossWorkerAsync: the Dask task failed: E"


def test_a_system_exit_keeps_its_code_whatever_reducer_pickled_it() -> None:
    """tblib's exception reducers (installed by importing distributed, and
    inherited by forked workers) rebuild a SystemExit without calling its
    __init__: its args survive, its code did not.  Main restores it."""
    import copyreg
    import io

    from tblib import pickling_support

    from bossworker.outcome import rebuild_exception

    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer)
    pickler.dispatch_table = copyreg.dispatch_table.copy()
    pickler.dispatch_table[SystemExit] = pickling_support.pickle_exception
    pickler.dump(SystemExit(6))
    assert pickle.loads(buffer.getvalue()).code is None  # what the reducer alone gives
    rebuilt = rebuild_exception(buffer.getvalue(), "SystemExit: 6", "SystemExit", "tb")
    assert type(rebuilt) is SystemExit and rebuilt.code == 6

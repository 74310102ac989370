"""The job codec: how a job and its answer look as frames, at both ends.

::

    main                               Boss                          worker
    job_frames() / retried_job_frames()  --JOB-->  (forwards raw)  -->  load_job()
    answers.py      <--RESULT | ERROR | TIMED_OUT--  (forwards raw)  <--  result_answer()
                                                                         error_answer()
                                                                         answer_frame()

:mod:`bossworker.protocol` says how any frame is laid out (the header, the
decoder); this module says what a JOB's and an answer's payload mean: a
pickle inline or in a ``/dev/shm`` segment (``Flag.SEGMENT``), an ERROR's
UTF-8 text with or without the pickled exception (``Flag.EXCEPTION``) and
with or without the :class:`Facts` the Boss measured (``Flag.FACTS``), and
the INIT_FAILED / text frames.  Both ends, main and the worker, and the
Dask Boss in between, pack and read these frames only through here.

Fast paths: :func:`job_frames` joins the frames of small jobs into one
buffer (``add_work`` of 20,000 tiny jobs is one write) and hands large
pickles on uncopied; :func:`result_answer` answers a small result as one
buffer.  Neither makes an object per job beyond the header bytes.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .errors import result_too_big_error
from .payload import THRESHOLD, Pickled, Segments, chunks_of, dump_exception
from .protocol import (
    HEADER,
    MAX_PAYLOAD,
    Buffer,
    Flag,
    Frame,
    Kind,
    answer_header,
    encode,
    job_header,
)

__all__ = [
    "Facts",
    "answer_facts",
    "answer_frame",
    "decode_error",
    "encode_error",
    "error_answer",
    "error_text",
    "frame_text",
    "job_frame",
    "job_frames",
    "load_job",
    "result_answer",
    "result_segment",
    "retried_job_frames",
    "text_frame",
]

# An ERROR payload that carries the exception (Flag.EXCEPTION): u32 length
# of the text, the UTF-8 text, then the pickled exception.
_ERROR_TEXT_LENGTH = struct.Struct("<I")
# An ERROR payload that carries Facts (Flag.FACTS) ends with them: their
# JSON, then its length as a u32 (so the text and exception before it are
# laid out as without them).
_FACTS_LENGTH = struct.Struct("<I")

# Payloads smaller than this are joined into one buffer before sending
# (one copy of a few bytes each beats one more system-call buffer each).
_JOIN_BELOW = 64 * 1024
# A worker's result smaller than this is answered as one buffer (never one
# a segment would take: result_answer looks at this size first).
_ONE_BUFFER_BELOW = min(64 * 1024, THRESHOLD)

_pack = HEADER.pack
# Members used once per job, bound once: on Python 3.11 every ``Kind.X`` /
# ``Flag.X`` goes through EnumType.__getattr__ (~0.3 µs each).
_JOB, _RESULT = Kind.JOB, Kind.RESULT
_SEGMENT = Flag.SEGMENT


# -- text frames and ERROR payloads --------------------------------------------


def text_frame(kind: Kind, job_id: int, text: str) -> bytes:
    """A frame whose payload is ``text`` in UTF-8 (INIT_FAILED, or an ERROR
    with no exception and no answer details)."""
    return encode(kind, job_id, text.encode("utf-8", "replace"))


def frame_text(frame: Frame) -> str:
    """The UTF-8 text payload of a frame (INIT_FAILED), never raising."""
    return bytes(frame.payload).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Facts:
    """What the Boss measured about the end of the worker that ran a job.

    An ERROR the Boss makes for a worker that died (``Flag.DIED``) or went
    past its memory cap (``Flag.MEMORY``) carries these as data
    (``Flag.FACTS``), beside the text users read: main takes the numbers
    from here (:func:`answer_facts`), never back from the text.
    """

    #: How the worker ended, as multiprocessing says it (negative: killed by
    #: that signal); None if unknown (a Dask worker's death, a memory kill
    #: answered before the process was reaped).
    exitcode: int | None = None
    #: The same in words, as the ERROR text shows it: ``"SIGKILL"``,
    #: ``"exit code 3"``, ``"its Dask worker died: ..."``; "" if none.
    reason: str = ""
    #: For a worker killed past ``max_worker_memory``: its resident size as
    #: measured, and the cap, in bytes (0 otherwise).
    rss: int = 0
    limit: int = 0

    def to_json(self) -> bytes:
        """These facts as the JSON an ERROR payload ends with."""
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: Buffer) -> Facts:
        """The facts in ``data`` (see :meth:`to_json`); any field missing or
        of the wrong type keeps its default (a payload is never trusted)."""
        try:
            got = json.loads(bytes(data))
        except ValueError:
            return cls()
        if not isinstance(got, dict):
            return cls()
        exitcode = got.get("exitcode")
        reason, rss, limit = got.get("reason"), got.get("rss"), got.get("limit")
        return cls(
            exitcode if type(exitcode) is int else None,
            reason if isinstance(reason, str) else "",
            rss if type(rss) is int else 0,
            limit if type(limit) is int else 0,
        )


def encode_error(text: bytes, exception: bytes | None, facts: Facts | None = None) -> tuple[int, bytes]:
    """An ERROR payload and the flags saying how to read it: the text
    alone, or (Flag.EXCEPTION) the text and the pickled exception; then,
    with ``facts`` (Flag.FACTS), those."""
    if exception is None:
        flags, payload = 0, text
    else:
        flags, payload = Flag.EXCEPTION, _ERROR_TEXT_LENGTH.pack(len(text)) + text + exception
    if facts is not None:
        data = facts.to_json()
        flags |= Flag.FACTS
        payload += data + _FACTS_LENGTH.pack(len(data))
    return flags, payload


def _split_facts(flags: int, payload: Buffer) -> tuple[memoryview, memoryview | None]:
    """An ERROR payload without its facts, and the facts' bytes (None if it
    has none, or if its length field does not fit)."""
    view = memoryview(payload).cast("B")
    size = _FACTS_LENGTH.size
    if not flags & Flag.FACTS or len(view) < size:
        return view, None
    (n,) = _FACTS_LENGTH.unpack_from(view, len(view) - size)
    if n > len(view) - size:
        return view, None
    end = len(view) - size - n
    return view[:end], view[end : end + n]


def decode_error(flags: int, payload: Buffer) -> tuple[str, memoryview | None]:
    """An ERROR payload's text and, if it carries one, the pickled exception
    (without its facts: see :func:`answer_facts`).

    Raises :class:`struct.error` if ``Flag.EXCEPTION`` is set and the payload
    is shorter than its length field; a text length past the end gives the
    text that is there and an empty exception."""
    view, _facts = _split_facts(flags, payload)
    if not flags & Flag.EXCEPTION:
        return bytes(view).decode("utf-8", "replace"), None
    (n,) = _ERROR_TEXT_LENGTH.unpack_from(view)
    start = _ERROR_TEXT_LENGTH.size
    return bytes(view[start : start + n]).decode("utf-8", "replace"), view[start + n :]


def answer_facts(frame: Frame) -> Facts:
    """The :class:`Facts` an ERROR answer carries; empty ones (every field
    unknown) if it carries none."""
    if frame.kind != Kind.ERROR:
        return Facts()
    _view, data = _split_facts(frame.flags, frame.payload)
    return Facts() if data is None else Facts.from_json(data)


def error_text(frame: Frame) -> str:
    """The text of an ERROR answer (what ``get_result()`` shows)."""
    return decode_error(frame.flags, frame.payload)[0]


# -- jobs: main packs, the worker reads -----------------------------------------


def job_frames(
    ids: Sequence[int],
    pickles: Sequence[Pickled],
    timeout: float,
    segments: Segments,
    in_segments: set[int] | frozenset[int] = frozenset(),
) -> list[Buffer]:
    """The JOB frames of ``pickles`` (ids ``ids``), as buffers to send in order.

    A small pickle travels inline, and the frames of small jobs are joined
    into one buffer; a pickle of ``THRESHOLD`` bytes or more goes to a
    segment if ``segments`` takes it (or already went: ``in_segments``),
    else inline, its chunks handed on uncopied when large."""
    out: list[Buffer] = []
    small: list[Buffer] = []
    for job_id, pickled in zip(ids, pickles, strict=True):
        if type(pickled) is bytes and len(pickled) < THRESHOLD:  # the usual case, made cheap
            small += (_pack(_JOB, 0, len(pickled), job_id, timeout), pickled)
            continue
        if job_id in in_segments or segments.store(job_id, "j", pickled):
            small.append(_pack(_JOB, _SEGMENT, 0, job_id, timeout))
            continue
        chunks, size = chunks_of(pickled)
        small.append(_pack(_JOB, 0, size, job_id, timeout))
        if size < _JOIN_BELOW:
            small += chunks
        else:
            out.append(b"".join(small))
            small = []
            out += chunks
    out.append(b"".join(small))
    return out


def retried_job_frames(
    ids: Sequence[int],
    pickles: Sequence[Pickled],
    timeout: float,
    retries: int,
    retry_on: int,
    in_segments: set[int] | frozenset[int] = frozenset(),
) -> list[Buffer]:
    """The JOB frames of jobs that may be retried: ``retries`` and
    ``retry_on`` (``RetryOn`` bits) ride in each header, and a job travels
    inline unless it is in ``in_segments`` (too big for a frame): a segment
    would be consumed by its first attempt."""
    out: list[Buffer] = []
    for job_id, pickled in zip(ids, pickles, strict=True):
        if job_id in in_segments:
            out.append(job_header(Kind.JOB, Flag.SEGMENT, 0, job_id, timeout, retries, retry_on))
            continue
        chunks, size = chunks_of(pickled)
        out.append(job_header(Kind.JOB, 0, size, job_id, timeout, retries, retry_on))
        out += chunks
    return out


def job_frame(job_id: int, payload: Buffer, timeout: float) -> bytes:
    """One JOB frame carrying ``payload`` inline (no retry settings)."""
    return encode(Kind.JOB, job_id, payload, timeout)


def load_job(frame: Frame, segments: Segments) -> Any:
    """The job a JOB frame carries, from its payload or its segment."""
    if frame.flags & _SEGMENT:
        return segments.load(frame.job_id, "j")
    return pickle.loads(frame.payload)


# -- answers: the worker packs, main reads ---------------------------------------


def answer_frame(
    kind: Kind, job_id: int, payload: Buffer = b"", flags: int = 0, ran: float = 0.0, pid: int = 0
) -> bytes:
    """One answer frame (RESULT, ERROR, TIMED_OUT): ``ran`` is how long the
    job ran and ``pid`` the worker that ran it (0: none, e.g. an answer the
    Dask Boss makes)."""
    header = answer_header(kind, flags, len(payload), job_id, ran, pid)
    return header + payload if payload else header


def error_answer(
    job_id: int,
    text: str,
    exc: BaseException | None = None,
    *,
    flags: int = 0,
    ran: float = 0.0,
    pid: int = 0,
    facts: Facts | None = None,
) -> bytes:
    """An ERROR answer: ``text`` (what ``get_result()`` shows) and, when it
    pickles and fits in a frame, the exception itself, so that main can
    raise it as it is; then ``facts``, if given."""
    pickled: bytes | None = None
    if exc is not None:
        try:
            pickled = dump_exception(exc)
        except BaseException:  # noqa: BLE001 - any failure means: the text alone
            pickled = None
    data = text.encode("utf-8", "replace")
    if pickled is not None and len(pickled) + len(data) + _ERROR_TEXT_LENGTH.size > MAX_PAYLOAD:
        pickled = None
    extra, payload = encode_error(data, pickled, facts)
    return answer_frame(Kind.ERROR, job_id, payload, flags | extra, ran, pid)


def result_answer(
    job_id: int, pickled: Pickled, segments: Segments, started: float, pid: int = 0
) -> list[Buffer]:
    """A worker's RESULT answer for ``pickled``, as buffers to send: in a
    segment if ``segments`` takes it, else inline (uncopied when large), or
    an ERROR if it is too big for a frame.  ``started`` is the job's start
    (``time.perf_counter()``): the answer carries how long it ran; ``pid``
    the worker's (0: this process's)."""
    pid = pid or os.getpid()
    if type(pickled) is bytes and len(pickled) < _ONE_BUFFER_BELOW:  # the usual case: one buffer
        ran = time.perf_counter() - started
        return [answer_header(_RESULT, 0, len(pickled), job_id, ran, pid) + pickled]
    if segments.store(job_id, "r", pickled):
        return [answer_frame(_RESULT, job_id, flags=_SEGMENT, ran=time.perf_counter() - started, pid=pid)]
    chunks, size = chunks_of(pickled)
    if size > MAX_PAYLOAD:  # no room in /dev/shm, and too big for a frame
        text = result_too_big_error(size, MAX_PAYLOAD)
        return [error_answer(job_id, text, ran=time.perf_counter() - started, pid=pid)]
    ran = time.perf_counter() - started
    return [answer_header(_RESULT, 0, size, job_id, ran, pid), *chunks]


def result_segment(answer: Sequence[Buffer]) -> int | None:
    """The job id if ``answer`` (buffers from :func:`result_answer`) is a
    RESULT whose payload waits in a segment, else None."""
    head = answer[0]
    if len(answer) != 1 or len(head) != HEADER.size:
        return None  # an inline payload follows the header
    kind, flags, _, job_id, _ = HEADER.unpack(head)
    return job_id if kind == Kind.RESULT and flags & Flag.SEGMENT else None

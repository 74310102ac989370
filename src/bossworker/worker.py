"""The worker process: run jobs one at a time, answer each at once.

A worker talks only to its Boss, over one blocking socket::

    Boss --JOB, JOB, ..., SHUTDOWN-->  worker
    Boss <--READY | INIT_FAILED-----  worker   (once, after init_handler)
    Boss <--RESULT | ERROR | TIMED_OUT  worker   (one per JOB, in order)

The Boss may send several jobs ahead (pipelining).  The worker still
answers each job *before it starts the next one*: the Boss learns that the
next job has started from the arrival of the previous answer (which keeps its
deadlines exact), and a worker that dies mid-job can never take an
already-finished answer down with it.

Timeouts are enforced twice.  Here, gently: SIGALRM interrupts Python code
and the worker lives on.  In the Boss, firmly: if no answer comes shortly
after the deadline (C code that ignores signals), the Boss kills the worker.

Leaving: a worker leads its own process group (the Boss kills the group
when the worker goes), and before ``os._exit`` it flushes what its handlers
hold (see :class:`bossworker.process.ExitFlush`), except in a child a
handler forked that came back into this loop.  It leaves no result segment
for a Boss that is gone or going (see :class:`bossworker.process.Watched`):
under forkserver nothing ends it with its Boss, and elsewhere the
parent-death signal comes after main may have seen the Boss die.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

from . import logfwd
from .config import WorkerSpec
from .errors import JobAlarm, job_not_unpicklable_error, result_not_picklable_error
from .jobs import answer_frame, error_answer, load_job, result_answer, result_segment, text_frame
from .payload import PICKLE_PROTOCOL, dump
from .portable import HAS_ALARM, LateSocket, send_chunks, watch_forks
from .process import (
    Closable,
    ExitFlush,
    Watched,
    close_inherited,
    exit_now,
    ignore_interrupts,
    lead_own_group,
    open_pidfd,
    set_parent_death_signal,
)
from .protocol import Decoder, Frame, InitFailure, Kind, SendQueue, encode

__all__ = ["PICKLE_PROTOCOL", "WorkerSpec", "describe_exception", "run_worker"]


# Exit codes a worker uses on purpose, so the Boss can tell them from a crash.
EXIT_OK = 0
EXIT_INIT_FAILED = 3


class _BossGone(Exception):
    """The Boss has exited: nobody will take this worker's answers."""


class _Alarm:
    """The worker-side timeout: SIGALRM that only bites while a job runs."""

    __slots__ = ("armed", "fired")

    def __init__(self) -> None:
        self.armed = False
        self.fired = False
        if HAS_ALARM:  # else (the portable path) the Boss's kill is the only limit
            signal.signal(signal.SIGALRM, self._on_alarm)

    def _on_alarm(self, signum: int, frame: FrameType | None) -> None:
        if self.armed:
            self.fired = True
            raise JobAlarm


def describe_exception(exc: BaseException) -> str:
    """``"ValueError: rattle"`` then the traceback, as the ERROR text."""
    head = "".join(traceback.format_exception_only(exc)).strip()
    return f"{head}\n{''.join(traceback.format_exception(exc))}"


def _send_all(sock: socket.socket, queue: SendQueue) -> None:
    while queue:
        queue.consume(send_chunks(sock, queue.chunks()))


def _answer(kind: Kind, job_id: int, started: float) -> bytes:
    """An answer without payload (TIMED_OUT): how long the job ran and this
    worker's pid ride in its header (see jobs.answer_frame)."""
    return answer_frame(kind, job_id, ran=time.perf_counter() - started, pid=os.getpid())


def _error(job_id: int, started: float, text: str, exc: BaseException | None = None) -> bytes:
    """An ERROR answer from this worker (see jobs.error_answer)."""
    return error_answer(job_id, text, exc, ran=time.perf_counter() - started, pid=os.getpid())


def _run_job(
    spec: WorkerSpec, alarm: _Alarm, frame: Frame, boss: Watched | None = None, pid: int = 0
) -> list[bytes | bytearray | memoryview]:
    """Run one job and return the answer frame as buffers to send.

    The answer's ``ran`` field (``Frame.ran``) carries how long the job took (wall
    time, loading and pickling included): the Boss sizes its pipelining on
    it, without counting the time a worker waited for work.

    Raises :class:`_BossGone` instead of leaving a result segment when
    ``boss`` says the Boss has exited or is exiting: nobody would remove it.
    ``pid`` is this worker's (0: ask the system).
    """
    job_id = frame.job_id
    timeout = frame.limit
    started = time.perf_counter()
    alarm.fired = False
    try:
        try:
            job = load_job(frame, spec.segments)
        except BaseException as exc:  # noqa: BLE001 - this job's failure: main says it could not be unpickled
            return [_error(job_id, started, job_not_unpicklable_error(describe_exception(exc)), exc)]
        alarm.armed = True
        try:
            if timeout > 0 and HAS_ALARM:
                signal.setitimer(signal.ITIMER_REAL, timeout)
            value = spec.work_handler(job)
        finally:
            # An alarm that fires in here still raises JobAlarm: fine, the
            # job did run out of time.
            if timeout > 0 and HAS_ALARM:
                signal.setitimer(signal.ITIMER_REAL, 0)
            alarm.armed = False
    except JobAlarm:
        return [_answer(Kind.TIMED_OUT, job_id, started)]
    except BaseException as exc:  # noqa: BLE001 - one bad job must not kill the worker
        if alarm.fired:  # the handler swallowed our JobAlarm, then failed
            return [_answer(Kind.TIMED_OUT, job_id, started)]
        return [_error(job_id, started, describe_exception(exc), exc)]
    if alarm.fired:  # the handler caught JobAlarm itself and went on
        return [_answer(Kind.TIMED_OUT, job_id, started)]
    try:
        pickled = dump(value)
    except BaseException as exc:  # noqa: BLE001
        # The exception travels too: main raises it (or a PicklingError
        # caused by it), as ProcessPoolExecutor does.
        return [_error(job_id, started, result_not_picklable_error(describe_exception(exc)), exc)]
    answer = result_answer(job_id, pickled, spec.segments, started, pid)
    if boss is not None:
        # Looked at once the segment exists (not before: the Boss may be
        # killed while it is written): main may have seen the Boss die
        # already (it sees that as soon as the Boss's descriptors close,
        # before its parent-death signal reaches us) and freed the pool's
        # segments.  Only for a segment: a small answer is sent or fails.
        segment = result_segment(answer)
        if segment is not None and boss.leaving():
            spec.segments.discard(segment)
            raise _BossGone
    return answer


def _exit(flush: ExitFlush, code: int) -> NoReturn:
    """Flush what the handlers hold (bounded in time), then exit."""
    flush.run()
    exit_now(code)


def _leave(spec: WorkerSpec, flush: ExitFlush) -> NoReturn:
    """Run the exit handler (its failure is reported, not raised) and exit."""
    if spec.exit_handler is not None:
        try:
            spec.exit_handler()
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    _exit(flush, EXIT_OK)


def unpickle_spec(data: bytes) -> Any:
    """Unpickle what was pickled for a new process; on failure raise
    :class:`SpecError` carrying the error (main adds the import hint)."""
    try:
        return pickle.loads(data)
    except BaseException as exc:  # any failure here is the handlers' import
        raise SpecError(describe_exception(exc)) from exc


class SpecError(Exception):
    """The handlers could not be unpickled in this process (see unpickle_spec)."""


def run_worker(
    sock_or_late: socket.socket | LateSocket,
    spec: WorkerSpec | bytes,
    boss_pid: int,
    inherited: Sequence[Closable] = (),
) -> None:
    """The body of a worker process. Never returns: it ends in ``os._exit``.

    Its socket is opened here (see :class:`~bossworker.portable.LateSocket`):
    a worker whose Boss was stopped before the socket could be fetched leaves
    quietly, with no traceback.

    ``spec`` comes pickled (bytes) from a Boss that does not fork its
    workers: unpickling it here, not in multiprocessing's bootstrap, lets a
    handler that cannot be imported be reported to the Boss (INIT_FAILED,
    NOT_IMPORTABLE) instead of killing the process with a traceback only on
    stderr.
    """
    if isinstance(sock_or_late, LateSocket):
        opened = sock_or_late.open()
        if opened is None:
            os._exit(0)  # the Boss is gone: nobody is left to answer
        sock = opened
    else:
        sock = sock_or_late
    lead_own_group()  # whatever runs from here on is in the group
    close_inherited(inherited)
    ignore_interrupts()
    # Watched so as to leave no result segment behind for a Boss that is
    # gone.  Under forkserver (or without prctl) nothing kills us with it.
    boss: Watched | None = Watched(boss_pid)
    if not (os.getppid() == boss_pid and set_parent_death_signal(boss_pid)):
        pidfd = open_pidfd(boss_pid, older_than_me=True)
        boss = Watched(boss_pid, pidfd) if pidfd is not None else None
    flush = ExitFlush()  # after this, what the handlers set up is flushed at exit
    gc.freeze()  # never walk the objects inherited from the Boss (and main)
    forked = watch_forks()
    sock.setblocking(True)
    out = SendQueue()

    if isinstance(spec, bytes):
        try:
            spec = unpickle_spec(spec)
        except SpecError as exc:
            out.append(text_frame(Kind.INIT_FAILED, InitFailure.NOT_IMPORTABLE, str(exc)))
            try:
                _send_all(sock, out)
            finally:
                exit_now(EXIT_INIT_FAILED)
    assert isinstance(spec, WorkerSpec)
    # Every write to the Boss's socket holds this: a handler's threads may
    # log (a LOG frame each) while the loop sends an answer.
    send_lock = threading.RLock()
    running = [0]  # the job under way, for the LOG frames' headers (0: none)
    if spec.log_level is not None:

        def send_log(job_id: int, payload: bytes) -> None:
            sock.sendall(encode(Kind.LOG, job_id, payload))

        logfwd.install(logfwd.ForwardHandler(send_log, lambda: running[0], send_lock), spec.log_level)
    if spec.init_handler is not None:
        try:
            spec.init_handler()
        except BaseException as exc:  # noqa: BLE001
            out.append(text_frame(Kind.INIT_FAILED, 0, describe_exception(exc)))
            try:
                _send_all(sock, out)
            finally:
                _exit(flush, EXIT_INIT_FAILED)
    alarm = _Alarm()
    out.append(encode(Kind.READY))
    decoder = Decoder(spec.read_size)
    todo: deque[Frame] = deque()
    done = 0
    max_jobs = spec.max_jobs
    pid = os.getpid()
    shutdown = Kind.SHUTDOWN  # bound once: Kind.X is slow on 3.11 (see boss/link.py)
    unsent_segment: int | None = None  # a result segment whose frame is not sent yet
    try:
        _send_all(sock, out)  # READY
        while True:
            if not todo:
                n = sock.recv_into(decoder.get_buffer())
                if not n:  # the Boss is gone
                    _exit(flush, EXIT_OK)
                decoder.buffer_updated(n)
                todo.extend(decoder.take())
                continue
            frame = todo.popleft()
            if frame.kind == shutdown:
                _leave(spec, flush)
            running[0] = frame.job_id
            answer = _run_job(spec, alarm, frame, boss, pid)
            running[0] = 0
            if forked.value:
                # The handler forked and its child returned into our loop:
                # that child must not speak on the Boss's socket, nor flush
                # its parent's queues.
                exit_now(EXIT_OK)
            # Answer before starting the next job.
            unsent_segment = result_segment(answer)
            with send_lock:  # a handler's threads may be logging (LOG frames)
                if len(answer) == 1:
                    sock.sendall(answer[0])  # the usual answer: one buffer
                else:
                    out.extend(answer)
                    _send_all(sock, out)
            unsent_segment = None
            done += 1
            if max_jobs is not None and done >= max_jobs:
                _leave(spec, flush)
    except (BrokenPipeError, ConnectionResetError, _BossGone):
        # The Boss is gone; nobody is left to answer, nor to remove the
        # segment of an answer it never got.
        if unsent_segment is not None:
            spec.segments.discard(unsent_segment)
        _exit(flush, EXIT_OK)
    except BaseException:  # noqa: BLE001 - our own bug: say so and die
        traceback.print_exc(file=sys.stderr)
        _exit(flush, 1)

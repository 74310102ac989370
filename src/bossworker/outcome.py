"""What one job came to: :class:`Outcome`, and the one place answers become exceptions.

An answer frame (RESULT, ERROR or TIMED_OUT) says how a job ended; this
module turns it into an :class:`Outcome` (``BossWorkerAsync.get_outcome``)
or, for a failure, into the exception that stands for it (shared with
:class:`bossworker.Executor`, so both raise the same thing for the same
answer):

=====================================  =========================================
the answer                             ``Outcome.error`` / the future's exception
=====================================  =========================================
the handler raised, exception pickles  that exception, its own type and message;
                                       the worker-side traceback is ``__cause__``
                                       (a :class:`RemoteTraceback`)
the handler raised, it does not        :class:`TaskError` (``type_name``, text)
the job ran out of time                :class:`TaskTimeoutError`
its worker died (Flag.DIED)            :class:`WorkerDiedError` (``reason``, ``exitcode``)
its worker exceeded the memory cap     ``MemoryLimitError`` (Flag.MEMORY; ``rss``, ``limit``)
the result could not be pickled        :class:`PicklingError` (also ``pickle.PicklingError``;
                                       ``__cause__``: what pickling raised), or that
                                       exception itself if not an ``Exception``
the job could not be unpickled in its  :class:`UnpicklingError` (``__cause__``: what
worker                                 unpickling raised there)
the result could not be unpickled      :class:`UnpicklingError` (also
                                       ``pickle.UnpicklingError``; ``__cause__``: what
                                       unpickling raised, ``SystemExit`` included)
no worker could start                  :class:`WorkerInitError`
anything else the engine reports       :class:`TaskError`
=====================================  =========================================

The figures in the last two (an exit code, the memory sizes) are the
:class:`~bossworker.jobs.Facts` the Boss measured and sent as data
(``Flag.FACTS``); the ERROR texts only show them to people.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, TypeVar

from .errors import (
    JOB_NOT_UNPICKLABLE_PREFIX,
    NO_WORKER_COULD_START_PREFIX,
    RESULT_NOT_PICKLABLE_PREFIX,
    JobCancelledError,
    MemoryLimitError,
    PicklingError,
    RemoteTraceback,
    TaskError,
    TaskTimeoutError,
    UnpicklingError,
    WorkerDiedError,
    WorkerInitError,
)
from .jobs import Facts, answer_facts, decode_error
from .protocol import Buffer, Flag, Frame, Kind, answer_pid

__all__ = ["Attempt", "Outcome", "error_from_answer", "rebuild_exception", "unpickling_error"]

R = TypeVar("R")

# The engine's own ERROR texts begin so; a handler's exception text begins
# with its type's name.
_ENGINE_PREFIX = "BossWorkerAsync:"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt at a job: the worker that ran it and how it ended.

    A job has one attempt unless it was retried (``retries=``): then one
    per run, oldest first, the last being the one its :class:`Outcome` reports.
    """

    #: pid of the worker that ran it; None if none did (no worker could start).
    worker_pid: int | None
    #: Seconds it ran, as its worker measured it (the Boss, for a worker that
    #: died or was killed at its deadline).
    run_time: float
    #: How it failed (see :attr:`Outcome.error`); None if it succeeded.
    error: BaseException | None
    #: When main received this attempt's answer (``time.time()``).
    finished_at: float


@dataclass(frozen=True, slots=True)
class Outcome(Generic[R]):
    """How one job ended, from :meth:`BossWorkerAsync.get_outcome`.

    Exactly one of these holds: ``ok`` (``value`` is the handler's return
    value, untouched: ``None`` stays ``None`` and ``result_handler`` is not
    applied), ``cancelled`` (dropped by :meth:`BossWorkerAsync.cancel`
    before it started; ``error`` is a :class:`JobCancelledError`), or it
    failed (``error`` says how; see the table in :mod:`bossworker.outcome`).
    :meth:`unwrap` returns the value or raises the error.

    Times are ``time.time()`` in main: ``queued_at`` when :meth:`BossWorkerAsync.add_work`
    was called, ``finished_at`` when main received the answer, and
    ``started_at`` is *derived*: ``finished_at - run_time``, so it is the
    start as seen from main, late by the answer's trip from the worker
    (typically well under a millisecond) and never before ``queued_at``.
    ``run_time`` is measured by the worker (wall time: loading the job,
    the handler, pickling the result), by the Boss for a worker that died
    or was killed at its deadline.
    """

    #: The id :meth:`BossWorkerAsync.add_work` returned for the job.
    job_id: int
    #: True when the handler returned: ``value`` is what it returned.
    ok: bool
    #: The handler's return value, untouched; None unless ``ok``.
    value: R | None = None
    #: Why the job did not succeed (None when ``ok``): the handler's own
    #: exception, or the engine's verdict (:class:`TaskTimeoutError`,
    #: :class:`WorkerDiedError`, :class:`JobCancelledError`, ...).
    error: BaseException | None = None
    #: True when :meth:`BossWorkerAsync.cancel` dropped the job before it started.
    cancelled: bool = False
    #: pid of the worker that ran the (last) attempt; None if none did
    #: (cancelled, or no worker could start).
    worker_pid: int | None = None
    #: Seconds the (last) attempt ran, measured by the worker (by the Boss
    #: for a worker that died or was killed at its deadline).
    run_time: float = 0.0
    #: ``time.time()`` in main when the job was added.
    queued_at: float = 0.0
    #: ``finished_at - run_time`` (never before ``queued_at``): the start as
    #: seen from main; None for a cancelled job.
    started_at: float | None = None
    #: ``time.time()`` in main when the answer arrived.
    finished_at: float = 0.0
    #: Every attempt, oldest first; more than one only when the job was
    #: retried (``retries=``).  Empty for a cancelled job.
    attempts: tuple[Attempt, ...] = field(default=())

    def unwrap(self) -> R:
        """The handler's return value; for a job that failed or was
        cancelled, raise its :attr:`error`."""
        if self.ok:
            return self.value  # type: ignore[return-value]  # R may be Optional: None is a value
        assert self.error is not None
        _raise(self.error)

    @property
    def retried(self) -> int:
        """How many times the job was run again after a failed attempt."""
        return max(0, len(self.attempts) - 1)


def _raise(error: BaseException) -> NoReturn:
    raise error


def rebuild_exception(exc_pickle: Buffer | None, text: str, type_name: str, tb: str) -> BaseException:
    """The exception a job raised in its worker, rebuilt in main: its own
    type from ``exc_pickle``, or a :class:`TaskError` with its ``text`` and
    ``type_name`` when it could not be pickled there or unpickled here.
    The worker-side traceback ``tb`` becomes its ``__cause__``."""
    exc: object = None
    if exc_pickle is not None:
        try:
            exc = pickle.loads(exc_pickle)
        except BaseException:  # noqa: BLE001 - even SystemExit: this job's text stands in
            exc = None
    if isinstance(exc, SystemExit) and exc.code is None and len(exc.args) == 1:
        # A SystemExit rebuilt without its __init__ (tblib's reducers do
        # that, and importing distributed installs them) has its args but
        # lost its code: restore CPython's rule, code = the one argument.
        exc.code = exc.args[0]
    if not isinstance(exc, BaseException):
        exc = TaskError(
            f"{text} (raised in the worker; the exception itself could not be pickled, "
            "so it arrives as this TaskError with its text and traceback)",
            type_name,
        )
    _set_cause(exc, RemoteTraceback(f'\n"""\n{tb}"""'))
    return exc


# BaseException's own __cause__ slot (a getset descriptor).
_CAUSE: Any = vars(BaseException)["__cause__"]


def _set_cause(exc: BaseException, cause: BaseException) -> None:
    """``exc.__cause__ = cause``, also for an exception whose class refuses
    attribute assignment (a frozen dataclass raises ``FrozenInstanceError``
    from its ``__setattr__``): the slot is set through ``BaseException``'s
    own descriptor, which such a ``__setattr__`` does not guard."""
    try:
        exc.__cause__ = cause
    except Exception:  # noqa: BLE001 - the class's __setattr__ refused
        with contextlib.suppress(Exception):
            _CAUSE.__set__(exc, cause)


def unpickling_error(exc: BaseException, what: str = "job") -> UnpicklingError:
    """The error of a job whose result could not be unpickled in main;
    ``exc`` is what unpickling raised (any ``BaseException``: a
    ``SystemExit`` raised there is this job's failure, not main's exit)."""
    error = UnpicklingError(f"the {what}'s result could not be unpickled in main: {exc!r}")
    error.__cause__ = exc
    return error


def _not_picklable(text: str, exc_pickle: Buffer | None, what: str) -> BaseException:
    """The error of a job whose return value its worker could not pickle:
    a :class:`PicklingError` (also ``pickle.PicklingError``) whose
    ``__cause__`` is the error pickling raised; but if that was not an
    ``Exception`` (``SystemExit``, ``KeyboardInterrupt``), that exception
    itself, as ``ProcessPoolExecutor`` raises it."""
    original = rebuild_exception(exc_pickle, text, "", text) if exc_pickle is not None else None
    if original is not None and not isinstance(original, Exception):
        return original
    error = PicklingError(f"the {what}'s return value could not be pickled in the worker: {text}")
    error.__cause__ = original if original is not None else RemoteTraceback(f'\n"""\n{text}\n"""')
    return error


def error_from_answer(frame: Frame, limit: float, what: str = "job") -> BaseException:
    """The exception for a failed answer (ERROR or TIMED_OUT; not RESULT).

    ``limit`` is the job's time limit in seconds (for the message);
    ``what`` names the unit of work in messages ("job", "task")."""
    if frame.kind == Kind.TIMED_OUT:
        return TaskTimeoutError(
            f"the {what} ran past its time limit of {limit:g} s; it was stopped (its worker "
            "killed and replaced if it had to be), and the others carry on",
            limit,
        )
    text, exc_pickle = decode_error(frame.flags, frame.payload)
    if text.startswith(RESULT_NOT_PICKLABLE_PREFIX):
        return _not_picklable(text, exc_pickle, what)
    if text.startswith(JOB_NOT_UNPICKLABLE_PREFIX):
        unpickling = UnpicklingError(f"the {what} could not be unpickled in its worker: {text}")
        if exc_pickle is not None:
            unpickling.__cause__ = rebuild_exception(exc_pickle, text, "", text)
        return unpickling
    if frame.flags & Flag.EXCEPTION or not text.startswith(_ENGINE_PREFIX):
        # The handler's own exception: "module.Type: message\n" + traceback.
        head, _, tb = text.partition("\n")
        type_name = head.partition(":")[0]
        return rebuild_exception(exc_pickle, head, type_name, tb)
    error: BaseException
    if frame.flags & Flag.MEMORY:  # the memory cap (max_worker_memory) killed its worker
        facts = answer_facts(frame)
        error = MemoryLimitError(text, facts.rss, facts.limit)
    elif frame.flags & Flag.DIED:
        error = _died(text, answer_facts(frame), what)
    elif text.startswith(NO_WORKER_COULD_START_PREFIX):
        error = WorkerInitError(f"no worker could run the initializer, so this {what} never ran: {text}")
    else:
        error = TaskError(text)
    error.__cause__ = RemoteTraceback(f'\n"""\n{text}\n"""')
    return error


def _died(text: str, facts: Facts, what: str) -> WorkerDiedError:
    return WorkerDiedError(
        f"the worker running this {what} died ({facts.reason or text}); it was replaced and the pool "
        "carries on (unlike ProcessPoolExecutor, whose whole pool would now be broken)",
        facts.reason,
        facts.exitcode,
    )


def _attempt(frame: Frame, received: float, error: BaseException | None) -> Attempt:
    pid = answer_pid(frame.raw)
    return Attempt(pid or None, max(0.0, frame.ran), error, received)


def cancelled_outcome(
    job_id: int, queued_at: float, when: float, retried: Sequence[tuple[float, Frame]] = ()
) -> Outcome[R]:
    """The outcome of a job dropped by ``cancel()`` before it started, or,
    for a retried job (``retried``: its failed attempts, each with its
    arrival time), before its next attempt: those attempts are listed, and
    the last one's worker is named."""
    if not retried:
        error = JobCancelledError(f"job {job_id} was cancelled before it started")
        return Outcome(job_id, False, None, error, True, None, 0.0, queued_at, None, when, ())
    attempts = tuple(_attempt(f, t, error_from_answer(f, 0.0)) for t, f in retried)
    error = JobCancelledError(
        f"job {job_id} was cancelled before its next attempt: it had run {len(attempts)} time(s), "
        f"and its last attempt failed ({attempts[-1].error})"
    )
    last = attempts[-1]
    return Outcome(job_id, False, None, error, True, last.worker_pid, 0.0, queued_at, None, when, attempts)


def make_outcome(
    frame: Frame,
    value: object,
    ok: bool,
    queued_at: float,
    limit: float,
    received: float,
    retried: Sequence[tuple[float, Frame]],
) -> Outcome[R]:
    """The outcome of answer ``frame``: ``ok`` and ``value`` (the result, or
    the exception) decoded by the caller; the rest from what main recorded
    (see :meth:`Client.take_record`)."""
    error = None if ok else value
    assert error is None or isinstance(error, BaseException)
    attempts = [_attempt(f, t, error_from_answer(f, limit)) for t, f in retried]
    last = _attempt(frame, received, error)
    attempts.append(last)
    run_time = last.run_time
    started_at = max(queued_at, received - run_time)
    return Outcome(
        frame.job_id,
        ok,
        value if ok else None,  # type: ignore[arg-type]  # the caller decoded R
        error,
        False,
        last.worker_pid,
        run_time,
        queued_at,
        started_at,
        received,
        tuple(attempts),
    )

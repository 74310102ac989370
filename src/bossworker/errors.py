"""The exceptions bossworker raises.

Every exception is a :class:`BossWorkerError`, so ``except BossWorkerError``
catches all of them::

    BossWorkerError                 anything raised by bossworker itself
    ├── InvalidArgumentError        you passed something we cannot use (also a
    │                               TypeError and a ValueError)
    ├── SerializationError          a job (or a handler under spawn) cannot be pickled
    │   ├── PicklingError           a task or its result cannot be pickled (also a
    │   │                           pickle.PicklingError)
    │   └── UnpicklingError         a result cannot be unpickled in main (also a
    │                               pickle.UnpicklingError)
    ├── ShutDownError               you already shut the pool (or Executor) down
    │   │                           (also a RuntimeError, as concurrent.futures raises)
    │   └── InputClosedError        you called close_input(): the pool takes no more work
    ├── NoPendingResultsError       a blocking wait would never end: nothing is pending
    ├── BossDiedError               the Boss process is gone; the pool is broken
    ├── WrongProcessError           a pool (or Executor) used in a process other than
    │                               the one that made it (an os.fork() child, a worker)
    ├── WorkerInitError             no worker could start (its init_handler raised
    │                               or overran init_timeout, or no process could be made)
    │
    │   What one task's future raises (bossworker.Executor):
    ├── TaskTimeoutError            the task ran past its time limit (also a TimeoutError)
    ├── WorkerDiedError             the task's worker died under it (also a
    │                               concurrent.futures.process.BrokenProcessPool)
    ├── MemoryLimitError            the job's worker went past max_worker_memory and
    │                               was killed (also a MemoryError)
    ├── TaskError                   the task failed in a way that cannot be re-raised
    │                               as its own exception (unpicklable exception, ...)
    └── JobCancelledError           Outcome.error of a job dropped by cancel() (also a
                                    concurrent.futures.CancelledError)

    RemoteTraceback                 not raised: the ``__cause__`` of a task's own
                                    exception re-raised in main, carrying the
                                    worker-side traceback text

A failure *inside one job* is never raised by the queue API: it travels back
as that job's result, ``{"ERROR": "..."}``, so one bad job never poisons the
pool.  A job that ran out of time gets exactly ``{"ERROR": TIMED_OUT_ERROR}``.
The Executor turns the same answers into exceptions raised by that one
future's ``result()``: the task's own exception, or one of the three above;
``BossWorkerAsync.get_outcome()`` puts the same exceptions in
``Outcome.error`` (see :mod:`bossworker.outcome`).
"""

from __future__ import annotations

import pickle
from concurrent.futures import CancelledError
from concurrent.futures.process import BrokenProcessPool

__all__ = [
    "DASK_TASK_CANCELLED_ERROR",
    "INIT_TIMEOUT_ERROR",
    "INPUT_CLOSED_ERROR",
    "JOB_NOT_UNPICKLABLE_PREFIX",
    "MEMORY_AT_START_ERROR",
    "MEMORY_LIMIT_ERROR",
    "MEMORY_LIMIT_PREFIX",
    "NOT_IMPORTABLE_HINT",
    "NO_DASK_SLOT_ERROR",
    "NO_WORKER_COULD_START_PREFIX",
    "POOL_NOT_SET_UP_ERROR",
    "POOL_SHUTTING_DOWN_ERROR",
    "PROTOCOL_VIOLATION_ERROR",
    "RESULT_NOT_PICKLABLE_PREFIX",
    "START_FAILED_ERROR",
    "TIMED_OUT_ERROR",
    "WORKER_DIED_PREFIX",
    "BossDiedError",
    "BossWorkerError",
    "InputClosedError",
    "InvalidArgumentError",
    "JobCancelledError",
    "MemoryLimitError",
    "NoPendingResultsError",
    "PicklingError",
    "RemoteTraceback",
    "SerializationError",
    "ShutDownError",
    "TaskError",
    "TaskTimeoutError",
    "UnpicklingError",
    "WorkerDiedError",
    "WorkerInitError",
    "could_not_start_worker_error",
    "dask_start_error",
    "dask_task_failed_error",
    "dask_worker_died_error",
    "dask_worker_died_reason",
    "exited_before_ready_text",
    "handlers_not_unpicklable_error",
    "job_not_sent_error",
    "job_not_unpicklable_error",
    "job_payload_lost_error",
    "no_worker_could_start_error",
    "result_not_picklable_error",
    "result_not_unpicklable_error",
    "result_too_big_error",
    "worker_died_error",
]


#: The ERROR text of a job that ran out of time (the Perl original's, verbatim).
TIMED_OUT_ERROR = "BossWorkerAsync: timed out"

#: Why a worker still starting was killed: its ``init_handler`` (or, without
#: one, the start of its process) overran ``init_timeout``.  Counts as an init
#: failure.  Format with ``seconds=``.
INIT_TIMEOUT_ERROR = "BossWorkerAsync: init_handler did not return within {seconds:g} s (init_timeout)"

#: Why a worker slot is empty: the Boss could not create the process (or its
#: socket).  ``error`` is the system's word: ``BlockingIOError: [Errno 11]
#: Resource temporarily unavailable`` for a process limit (RLIMIT_NPROC, a
#: container's pids.max), ``OSError: [Errno 24] Too many open files`` for
#: RLIMIT_NOFILE.  The Boss retries with a back-off, like an init failure.
START_FAILED_ERROR = "BossWorkerAsync: could not start a worker process: {error}"

#: The ERROR of the job a worker was running when bytes that are not a valid
#: frame (or a frame that makes no sense there) came from its socket: usually
#: a handler that wrote to a descriptor it does not own.  The worker is killed
#: and replaced; no other job is affected.  Format with ``detail=``.
PROTOCOL_VIOLATION_ERROR = (
    "BossWorkerAsync: the worker broke the frame protocol while running this job "
    "(did the handler write to the worker's socket?); it was replaced: {detail}"
)

#: The ERROR of a job whose worker went past ``max_worker_memory`` while it
#: ran: the Boss killed the worker (SIGKILL) and replaced it; the answer frame
#: carries ``protocol.Flag.MEMORY``.  Format with ``rss_mib=`` (what the Boss
#: measured, rounded up to 0.1) and ``limit_mib=`` (the cap, rounded down).
MEMORY_LIMIT_ERROR = (
    "BossWorkerAsync: worker exceeded its memory limit ({rss_mib:.1f} MiB > {limit_mib:.1f} MiB)"
)
#: How :data:`MEMORY_LIMIT_ERROR` begins.
MEMORY_LIMIT_PREFIX = "BossWorkerAsync: worker exceeded its memory limit ("

#: Why a worker was refused before it took a job: it was over the cap as soon
#: as it was ready (the interpreter, the imports and ``init_handler``), so
#: every job would be killed.  Counts as an init failure.  Format with
#: ``rss_mib=`` and ``limit_mib=``.
MEMORY_AT_START_ERROR = (
    "BossWorkerAsync: a worker used {rss_mib:.1f} MiB once started (init_handler included), "
    "above max_worker_memory ({limit_mib:.1f} MiB); raise max_worker_memory"
)

#: What ``add_work`` (or ``map``) raises after ``close_input()``.
INPUT_CLOSED_ERROR = (
    "close_input() was called: this pool takes no more work (the work in hand still runs and "
    "its results stay retrievable; shut_down() when done)"
)

#: Why a process started with ``spawn`` or ``forkserver`` cannot find a handler.
NOT_IMPORTABLE_HINT = (
    "under start_method={method!r} a new process imports the handlers by name, so they must be "
    "module-level functions of an importable module: a function defined under 'python -c', in an "
    "interactive session, or inside 'if __name__ == \"__main__\":' cannot be found there "
    "(move it to a module, or use start_method='fork')"
)
# How the engine's ERROR texts begin, for the answers the Boss or a worker
# writes on a job's behalf.  outcome.error_from_answer sorts an engine ERROR
# that carries no flag by RESULT_NOT_PICKLABLE_PREFIX and
# NO_WORKER_COULD_START_PREFIX (a death or a memory kill by its Flag and
# Facts, never by its text); the others are for users matching on texts.
# Each is how the function below that writes the text begins.
#: A job whose worker died under it: ``... (SIGKILL) while running this job``.
WORKER_DIED_PREFIX = "BossWorkerAsync: worker died ("
#: A job whose return value the worker could not pickle.
RESULT_NOT_PICKLABLE_PREFIX = "BossWorkerAsync: result could not be pickled"
#: A job its worker could not unpickle (a class or function it cannot import, a
#: ``__reduce__`` that raises there).
JOB_NOT_UNPICKLABLE_PREFIX = "BossWorkerAsync: job could not be unpickled in the worker"
#: A job answered because no worker could get through its init_handler.
NO_WORKER_COULD_START_PREFIX = "BossWorkerAsync: no worker could start"


# ---------------------------------------------------------------------------
# The texts with details to fill in
#
# Users match on these texts (and tests pin them): change one here and it
# changes everywhere it is written.  Each is a small function; its docstring
# says when it is written (by the Boss, a worker, main or the Dask side).
# ---------------------------------------------------------------------------


def worker_died_error(reason: str) -> str:
    """The ERROR of a job whose worker died under it; ``reason`` is how it
    ended (``"SIGKILL"``, ``"exit code 3"``)."""
    return f"{WORKER_DIED_PREFIX}{reason}) while running this job"


def no_worker_could_start_error(last_error: str) -> str:
    """The ERROR of a job no worker could be started for; ``last_error`` is
    the last start-up failure."""
    return f"{NO_WORKER_COULD_START_PREFIX}: {last_error}"


def job_not_unpicklable_error(detail: str) -> str:
    """The ERROR of a job its worker could not unpickle; ``detail`` is the
    unpickling error (``describe_exception``)."""
    return f"{JOB_NOT_UNPICKLABLE_PREFIX}: {detail}"


def result_not_picklable_error(detail: str) -> str:
    """The ERROR of a job whose return value the worker could not pickle;
    ``detail`` is the pickling error (``describe_exception``)."""
    return f"{RESULT_NOT_PICKLABLE_PREFIX}: {detail}"


def result_too_big_error(size: int, limit: int) -> str:
    """The ERROR of a job whose result pickles to more than a frame holds
    while ``/dev/shm`` has no room for it."""
    return (
        f"BossWorkerAsync: the result pickles to {size} bytes, above the {limit}-byte limit "
        "of a frame, and /dev/shm had no room for it"
    )


def result_not_unpicklable_error(exc: BaseException) -> str:
    """What ``get_result()`` hands out (as ``{"ERROR": ...}``) for a result
    main could not unpickle."""
    return f"BossWorkerAsync: result could not be unpickled: {exc!r}"


def handlers_not_unpicklable_error(detail: str) -> str:
    """Why one of our processes on a Dask worker could not start: the
    handlers did not unpickle there (``detail``: ``describe_exception``)."""
    return (
        "BossWorkerAsync: the handlers could not be unpickled on the Dask worker "
        f"(is their module importable there?): {detail}"
    )


def could_not_start_worker_error(detail: str) -> str:
    """Why a Dask worker's slot has no worker: its process could not be made."""
    return f"BossWorkerAsync: could not start a worker: {detail}"


#: Why a Dask worker's slot gives up starting a worker: the pool is closing.
POOL_SHUTTING_DOWN_ERROR = "BossWorkerAsync: the pool is shutting down"

#: The ERROR of a Dask task that ran where the pool's plugin is not set up.
POOL_NOT_SET_UP_ERROR = "BossWorkerAsync: the pool is not set up on this Dask worker (is it shutting down?)"

#: The ERROR of a job whose Dask task was cancelled under it.
DASK_TASK_CANCELLED_ERROR = "BossWorkerAsync: the Dask task was cancelled"

#: Why the Dask Boss could not start (INIT_FAILED to main) when no Dask
#: worker reported a worker slot.
NO_DASK_SLOT_ERROR = "no Dask worker could start a worker"


def dask_start_error(where: str, detail: str) -> str:
    """Why the Dask Boss could not start (INIT_FAILED to main); ``where``
    names the cluster."""
    return f"BossWorkerAsync: could not start on the Dask cluster at {where}: {detail}"


def job_payload_lost_error(exc: BaseException) -> str:
    """The ERROR of a job whose shared-memory payload the Dask Boss could not read."""
    return f"BossWorkerAsync: the job's payload is lost: {exc}"


def job_not_sent_error(exc: BaseException) -> str:
    """The ERROR of a large job the Dask Boss could not scatter to a Dask worker."""
    return f"BossWorkerAsync: the job could not be sent to a Dask worker: {exc!r}"


def dask_worker_died_reason(exc: BaseException) -> str:
    """How a job's Dask worker ended (Dask's ``KilledWorker``), in words: the
    ``reason`` of its :class:`WorkerDiedError`."""
    return f"its Dask worker died: {exc}"


def dask_worker_died_error(exc: BaseException) -> str:
    """The ERROR of a job whose Dask worker died (Dask's ``KilledWorker``):
    a :func:`worker_died_error`, so it reads as any worker death."""
    return worker_died_error(dask_worker_died_reason(exc))


def dask_task_failed_error(detail: str) -> str:
    """The ERROR of a job whose Dask task failed outside our worker."""
    return f"BossWorkerAsync: the Dask task failed: {detail}"


def exited_before_ready_text(reason: str) -> str:
    """The start-up failure of a worker that exited without a word (no
    INIT_FAILED) before it was ready; ``reason`` is how it ended.  Written by
    the worker's supervisor (the Boss, or a Dask worker's plugin)."""
    return f"worker exited ({reason}) before it was ready"


class BossWorkerError(Exception):
    """Base class of every exception raised by bossworker."""


class InvalidArgumentError(BossWorkerError, TypeError, ValueError):
    """An argument has the wrong type or value; nothing was changed."""


class SerializationError(BossWorkerError):
    """An object could not be pickled. The original error is ``__cause__``.

    Raised by ``add_work`` for an unpicklable job (no job of that call is
    queued) and by the constructor for a handler that a ``spawn`` or
    ``forkserver`` worker could not import.
    """


class PicklingError(SerializationError, pickle.PicklingError):
    """A task (in main) or its return value (in its worker) could not be
    pickled; raised by that task's future only.  Also a
    ``pickle.PicklingError``, so code written for ``ProcessPoolExecutor``
    (``except pickle.PicklingError``) keeps working.  The error pickling
    raised is ``__cause__``."""


class UnpicklingError(SerializationError, pickle.UnpicklingError, BrokenProcessPool):
    """A task's return value could not be unpickled in main, or the task
    itself in its worker; raised by that task's future (or in its
    ``Outcome.error``) only.  Also a ``pickle.UnpicklingError``, and a
    ``BrokenProcessPool``: what ``ProcessPoolExecutor`` raises there (its
    whole pool breaks; here only that future fails).  The error unpickling
    raised (any exception, ``SystemExit`` and ``KeyboardInterrupt``
    included) is ``__cause__``."""


class ShutDownError(BossWorkerError, RuntimeError):
    """The pool has been shut down and can take no more work.

    Also a :class:`RuntimeError`: ``concurrent.futures`` executors raise that
    for a ``submit()`` after ``shutdown()``, and code catching it keeps working.
    """


class InputClosedError(ShutDownError):
    """Work was added after :meth:`~bossworker.BossWorkerAsync.close_input`.

    The pool itself still runs: results of the work in hand stay
    retrievable.  A :class:`ShutDownError`, since either way the pool takes
    no more work.
    """


class WrongProcessError(BossWorkerError, RuntimeError):
    """A pool or Executor was used in a process other than the one that made it.

    An ``os.fork()`` child (or a worker that inherited the object) holds a
    copy of main's socket to the Boss: using it would cross-wire the two
    processes' results and stop the other's pool.  Nothing was touched;
    make a new pool in this process instead.
    """


class NoPendingResultsError(BossWorkerError):
    """A blocking ``get_result()`` was asked for with nothing pending.

    Without this it would wait forever (the Perl original does).
    """


class BossDiedError(BossWorkerError):
    """The Boss process died; calls that need it raise this instead of hanging."""


class WorkerInitError(BossWorkerError):
    """Every initial worker failed to start; the pool was not started.

    A worker fails to start when its ``init_handler`` raises or does not
    return within ``init_timeout``, or when its process cannot be created
    (a process or file limit).  The message carries the last failure: the
    worker-side traceback, the timeout, or the system's error.
    """


class TaskTimeoutError(BossWorkerError, TimeoutError):
    """A task ran past its time limit; raised by that task's future only.

    Its worker was interrupted (SIGALRM) or, if that did not stop it (C code),
    killed and replaced; the other tasks carry on.  ``timeout`` is the limit
    in seconds.
    """

    def __init__(self, message: str, timeout: float = 0.0) -> None:
        super().__init__(message)
        self.timeout = timeout


class WorkerDiedError(BossWorkerError, BrokenProcessPool):
    """The worker running a task died (a signal, ``os._exit``, a segfault, the
    OOM killer); raised by that task's future only.

    Unlike ``ProcessPoolExecutor``, whose whole pool breaks, the Executor
    replaces the worker and stays usable; this is a ``BrokenProcessPool`` so
    that code written to catch that keeps working.  ``reason`` is how the
    worker ended (``"SIGKILL"``, ``"exit code 3"``); ``exitcode`` is the
    multiprocessing-style exit code (negative for a signal), or None if it
    is not known.
    """

    def __init__(self, message: str, reason: str = "", exitcode: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.exitcode = exitcode


class MemoryLimitError(BossWorkerError, MemoryError):
    """A job's worker went past ``max_worker_memory``: the Boss killed it
    mid-job and replaced it; the other jobs carry on.

    Also a :class:`MemoryError`, so code that catches running out of memory
    catches this too.  ``rss`` is the worker's resident size the Boss
    measured, ``limit`` the cap, both in bytes (0 if unknown).
    """

    def __init__(self, message: str, rss: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.rss = rss
        self.limit = limit


class TaskError(BossWorkerError):
    """A task failed and its own exception cannot be raised in main: it could
    not be pickled (or unpickled), or the engine reported the failure as text.

    ``type_name`` is the original exception's qualified type name (empty if
    unknown); the worker-side traceback is the ``__cause__``.
    """

    def __init__(self, message: str, type_name: str = "") -> None:
        super().__init__(message)
        self.type_name = type_name


class RemoteTraceback(Exception):
    """The worker-side traceback of a task's exception, attached to that
    exception as its ``__cause__`` when it is re-raised in main (as
    ``ProcessPoolExecutor`` does), so a printed traceback shows both sides."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class JobCancelledError(BossWorkerError, CancelledError):
    """The ``error`` of the :class:`~bossworker.outcome.Outcome` of a job
    that :meth:`BossWorkerAsync.cancel` dropped before it started (raised by
    that outcome's ``unwrap()``).  Also a ``concurrent.futures.CancelledError``."""


class JobAlarm(BaseException):
    """Internal, never raised to users: raised in a worker by its SIGALRM
    while a job runs (see ``worker._Alarm``).  A BaseException, so that a
    handler's ``except Exception`` does not swallow it; the Executor's work
    handler (``executor_worker.call``) lets it through.  Here, not in
    worker.py, so that the Executor's worker side need not import the
    worker's module to name it.  Not in the package's public names."""

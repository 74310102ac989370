"""The exceptions bossworker raises.

Every exception is a :class:`BossWorkerError`, so ``except BossWorkerError``
catches all of them::

    BossWorkerError                 anything raised by bossworker itself
    ├── InvalidArgumentError        you passed something we cannot use (also a
    │                               TypeError and a ValueError)
    ├── SerializationError          a job (or a handler under spawn) cannot be pickled
    ├── ShutDownError               you already shut the pool down
    ├── NoPendingResultsError       a blocking wait would never end: nothing is pending
    ├── BossDiedError               the Boss process is gone; the pool is broken
    └── WorkerInitError             no worker could start (its init_handler raised
                                    or overran init_timeout, or no process could be made)

A failure *inside one job* is never raised: it travels back as that job's
result, ``{"ERROR": "..."}``, so one bad job never poisons the pool.  A job
that ran out of time gets exactly ``{"ERROR": TIMED_OUT_ERROR}``.
"""

from __future__ import annotations

__all__ = [
    "INIT_TIMEOUT_ERROR",
    "NOT_IMPORTABLE_HINT",
    "PROTOCOL_VIOLATION_ERROR",
    "START_FAILED_ERROR",
    "TIMED_OUT_ERROR",
    "BossDiedError",
    "BossWorkerError",
    "InvalidArgumentError",
    "NoPendingResultsError",
    "SerializationError",
    "ShutDownError",
    "WorkerInitError",
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

#: Why a process started with ``spawn`` or ``forkserver`` cannot find a handler.
NOT_IMPORTABLE_HINT = (
    "under start_method={method!r} a new process imports the handlers by name, so they must be "
    "module-level functions of an importable module: a function defined under 'python -c', in an "
    "interactive session, or inside 'if __name__ == \"__main__\":' cannot be found there "
    "(move it to a module, or use start_method='fork')"
)


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


class ShutDownError(BossWorkerError):
    """The pool has been shut down and can take no more work."""


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

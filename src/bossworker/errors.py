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
    └── WorkerInitError             no worker could finish its init_handler

A failure *inside one job* is never raised: it travels back as that job's
result, ``{"ERROR": "..."}``, so one bad job never poisons the pool.  A job
that ran out of time gets exactly ``{"ERROR": TIMED_OUT_ERROR}``.
"""

from __future__ import annotations

__all__ = [
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
    """Every initial worker failed in its ``init_handler``; the pool was not started.

    The message carries the worker-side traceback.
    """

"""The answer decoder: an answer frame as main hands it out.  The only place
main unpickles a RESULT.

::

    RESULT | ERROR | TIMED_OUT --decode()-->  (True, value) | (False, exception)   Executor
                               --value()-->   value | {"ERROR": text}              get_result()
                               --outcome()--> Outcome                              get_outcome()
    cancel marker              --outcome()--> Outcome(cancelled=True)

A result that does not unpickle in main is that job's failure, never the
pool's: :class:`~bossworker.errors.SerializationError` in an outcome or a
future, ``{"ERROR": ...}`` for ``get_result()``.
"""

from __future__ import annotations

import pickle
from typing import Any

from .errors import TIMED_OUT_ERROR, result_not_unpicklable_error
from .jobs import error_text
from .ledger import JobRecord
from .outcome import Outcome, cancelled_outcome, error_from_answer, make_outcome, unpickling_error
from .payload import Segments
from .protocol import Flag, Frame, Kind

__all__ = ["decode", "outcome", "value"]


def _load(frame: Frame, segments: Segments) -> Any:
    """A RESULT's value: unpickled from the frame or from its segment."""
    if frame.flags & Flag.SEGMENT:
        return segments.load(frame.job_id, "r")
    return pickle.loads(frame.payload)


def decode(frame: Frame, segments: Segments, limit: float, what: str = "job") -> tuple[bool, Any]:
    """``(True, value)`` for a RESULT that unpickles, else ``(False,
    exception)``: the job's own error rebuilt (see :mod:`bossworker.outcome`)
    or a :class:`SerializationError` whose ``__cause__`` is the unpickling
    error.  ``limit`` is the job's time limit, ``what`` names it in texts."""
    if frame.kind != Kind.RESULT:
        return False, error_from_answer(frame, limit, what)
    try:
        return True, _load(frame, segments)
    except BaseException as exc:  # noqa: BLE001 - even SystemExit: this job's failure only
        return False, unpickling_error(exc, what)


def value(frame: Frame, segments: Segments) -> Any:
    """What ``get_result()`` hands out for an answer frame: the unpickled
    result, or ``{"ERROR": text}`` (a result that does not unpickle is that
    job's ERROR, never raised)."""
    if frame.kind == Kind.RESULT:
        try:
            return _load(frame, segments)
        except BaseException as exc:  # noqa: BLE001 - even SystemExit: this job's ERROR, never main's
            return {"ERROR": result_not_unpicklable_error(exc)}
    if frame.kind == Kind.TIMED_OUT:
        return {"ERROR": TIMED_OUT_ERROR}
    return {"ERROR": error_text(frame)}


def outcome(frame: Frame, segments: Segments, record: JobRecord) -> Outcome[Any]:
    """An answer frame, or a cancelled job's marker, as its Outcome;
    ``record`` is what the ledger knew of the job."""
    queued_at, limit, received, retried = record
    if frame.kind == Kind.CANCEL_REPLY:  # a job cancel() dropped, at ``received``
        return cancelled_outcome(frame.job_id, queued_at, received, retried)
    ok, decoded = decode(frame, segments, limit)
    return make_outcome(frame, decoded, ok, queued_at, limit, received, retried)

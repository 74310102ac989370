"""Output records and the summary, as pure functions: no I/O, no state.

A record is one JSON line, ``{"line": n, "result": ...}`` or
``{"line": n, "error": "...", "detail": "..."}``, compact and strict (no
NaN or Infinity, which are not JSON).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from ..errors import TIMED_OUT_ERROR
from .errors import one_line

__all__ = [
    "Outcome",
    "Record",
    "RunOutcome",
    "error_record",
    "is_blank",
    "is_error",
    "parse_job",
    "result_record",
    "summary",
]

#: One encoder for the whole run: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


class Outcome(enum.Enum):
    """What became of one job."""

    RESULT = "result"
    ERROR = "error"  # the handler raised, the worker died, bad JSON in or out
    TIMED_OUT = "timed out"  # an error too, counted apart


class RunOutcome(enum.Enum):
    """How a whole run ended; the value is the summary's wording."""

    DONE = "done"
    INTERRUPTED = "interrupted"
    OUTPUT_CLOSED = "output closed"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Record:
    """One output line, ready to write (``text`` ends in a newline)."""

    text: str
    outcome: Outcome = Outcome.RESULT

    @property
    def failed(self) -> bool:
        return self.outcome is not Outcome.RESULT

    @property
    def timed_out(self) -> bool:
        return self.outcome is Outcome.TIMED_OUT


def result_record(number: int, value: Any) -> Record:
    """The record for a job's result; a dict with an ``ERROR`` key is a failure."""
    if is_error(value):
        text = str(value["ERROR"])
        return error_record(number, text, timed_out=text == TIMED_OUT_ERROR)
    try:
        return Record(_ENCODER.encode({"line": number, "result": value}) + "\n")
    except (TypeError, ValueError, RecursionError) as exc:
        return error_record(number, f"the result cannot be written as JSON: {one_line(exc)}")


def is_error(value: Any) -> bool:
    """A pool result that reports a failure (the pool's convention)."""
    return isinstance(value, dict) and "ERROR" in value


def error_record(number: int, message: str, *, timed_out: bool = False) -> Record:
    """``{"line": n, "error": first line}``, plus ``"detail"`` (the rest,
    e.g. a traceback) when the message has several lines."""
    first, _, rest = message.strip().partition("\n")
    fields: dict[str, Any] = {"line": number, "error": first}
    if rest.strip():
        fields["detail"] = rest
    outcome = Outcome.TIMED_OUT if timed_out else Outcome.ERROR
    return Record(_ENCODER.encode(fields) + "\n", outcome)


def parse_job(raw: bytes) -> Any:
    """The JSON value on one input line; :class:`ValueError` with a short message if invalid."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON: {one_line(exc)}") from None


def is_blank(raw: bytes) -> bool:
    """A line that produces no record: empty or nothing but white space."""
    return not raw.strip()


def summary(
    *, jobs: int, errors: int, timeouts: int, elapsed: float, outcome: RunOutcome, unfinished: int
) -> str:
    """``bossworker: 5 jobs, 1 error, 0 timeouts, 0.42 s (11.9 jobs/s)``, and
    what was left unfinished if the run ended early."""
    text = (
        f"bossworker: {_plural(jobs, 'job')}, {_plural(errors, 'error')}, "
        f"{_plural(timeouts, 'timeout')}, {elapsed:.2f} s"
    )
    if elapsed > 0 and jobs:
        text += f" ({jobs / elapsed:.1f} jobs/s)"
    if outcome is not RunOutcome.DONE:
        text += f"; {outcome.value}, {_plural(unfinished, 'line')} read but not finished"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

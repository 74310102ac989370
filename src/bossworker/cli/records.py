"""Output records and the summary, as pure functions: no I/O, no state.

A record is one JSON line, ``{"line": n, "result": ...}`` or
``{"line": n, "error": "...", "detail": "..."}``, compact and strict (no
NaN or Infinity, which are not JSON).
"""

from __future__ import annotations

import enum
import json
import traceback
from typing import Any, NamedTuple

from ..errors import (
    TIMED_OUT_ERROR,
    MemoryLimitError,
    RemoteTraceback,
    TaskError,
    TaskTimeoutError,
    WorkerDiedError,
)
from ..outcome import Outcome as JobOutcome
from .errors import one_line

__all__ = [
    "Facts",
    "Outcome",
    "Record",
    "RunOutcome",
    "Tally",
    "error_record",
    "is_blank",
    "is_error",
    "outcome_record",
    "parse_job",
    "result_record",
    "summary",
]

#: The ``outcome`` word of a job (joblog column, ``--details``) that is not
#: an ``error:TYPE`` (the handler raised TYPE).
OK = "ok"
TIMED_OUT = "timed_out"
DIED = "died"
MEMORY = "memory"
INVALID_JSON = "invalid_json"  # the input line is not JSON: the job never ran
UNWRITABLE = "unwritable"  # the result is not JSON
ERROR_DICT = "error"  # the handler returned a dict with an "ERROR" key (the pool's convention)

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
    HALTED = "halted"


class Facts(NamedTuple):
    """What the job log and ``--details`` say of one job.  (Tuples, not frozen
    dataclasses: one is made per line, and a tuple is made 3x faster.)"""

    kind: str  # the outcome word: ok, error:TYPE, timed_out, died, memory, ...
    worker_pid: int | None = None
    started_at: float | None = None  # time.time()
    run_time: float = 0.0
    attempts: int = 0
    memory_kills: int = 0  # attempts the memory cap killed


class Record(NamedTuple):
    """One output line, ready to write (``text`` ends in a newline)."""

    text: str
    outcome: Outcome = Outcome.RESULT
    facts: Facts | None = None

    @property
    def failed(self) -> bool:
        return self.outcome is not Outcome.RESULT

    @property
    def timed_out(self) -> bool:
        return self.outcome is Outcome.TIMED_OUT


class Tally:
    """The counts of a run's records (for the summary and ``--halt``)."""

    __slots__ = ("errors", "finished", "jobs", "memory_kills", "retries", "timeouts")

    def __init__(self) -> None:
        self.finished = 0  # records made (written or held back by --ordered)
        self.jobs = 0  # records written
        self.errors = 0
        self.timeouts = 0
        self.retries = 0
        self.memory_kills = 0

    def count(self, record: Record) -> None:
        """A record was written."""
        self.jobs += 1
        self.errors += record.failed
        self.timeouts += record.timed_out
        if record.facts is not None:
            self.retries += max(0, record.facts.attempts - 1)
            self.memory_kills += record.facts.memory_kills


def result_record(number: int, value: Any, facts: Facts | None = None, details: bool = False) -> Record:
    """The record for a job's result; a dict with an ``ERROR`` key is a failure."""
    if is_error(value):
        text = str(value["ERROR"])
        timed_out = text == TIMED_OUT_ERROR
        if facts is not None:
            facts = _with_kind(facts, TIMED_OUT if timed_out else ERROR_DICT)
        return error_record(number, text, timed_out=timed_out, facts=facts, details=details)
    fields: dict[str, Any] = {"line": number, "result": value}
    if details and facts is not None:
        fields["details"] = _details(facts)
    try:
        return Record(_ENCODER.encode(fields) + "\n", facts=facts)
    except (TypeError, ValueError, RecursionError) as exc:
        if facts is not None:
            facts = _with_kind(facts, UNWRITABLE)
        return error_record(
            number, f"the result cannot be written as JSON: {one_line(exc)}", facts=facts, details=details
        )


def outcome_record(number: int, outcome: JobOutcome[Any], details: bool = False) -> Record:
    """The record for a job's :class:`bossworker.Outcome` (not a cancelled one):
    the same text :func:`result_record` makes of ``get_result()``'s value,
    and the job's :class:`Facts`."""
    attempts = outcome.attempts
    memory_kills = 0
    if len(attempts) > 1 or not outcome.ok:  # else there is none to count
        memory_kills = sum(isinstance(a.error, MemoryLimitError) for a in attempts)
    facts = Facts(OK, outcome.worker_pid, outcome.started_at, outcome.run_time, len(attempts), memory_kills)
    if outcome.ok:
        return result_record(number, outcome.value, facts, details)
    error = outcome.error
    assert error is not None
    kind, text = _describe(error)
    return error_record(
        number, text, timed_out=kind == TIMED_OUT, facts=_with_kind(facts, kind), details=details
    )


def _describe(error: BaseException) -> tuple[str, str]:
    """A failed job's outcome word and the pool's ERROR text for it (as
    ``get_result()`` would give it: first line, then the traceback)."""
    if isinstance(error, TaskTimeoutError):
        return TIMED_OUT, TIMED_OUT_ERROR
    cause = error.__cause__
    remote = _remote_text(cause.tb) if isinstance(cause, RemoteTraceback) else ""
    if isinstance(error, MemoryLimitError):
        return MEMORY, remote or str(error)
    if isinstance(error, WorkerDiedError):
        return DIED, remote or str(error)
    if remote.startswith("Traceback"):  # the handler's own exception
        if isinstance(error, TaskError) and error.type_name:  # it could not be pickled
            head = str(error).partition(" (raised in the worker")[0]
            type_name = error.type_name
        else:
            head = "".join(traceback.format_exception_only(error)).strip()
            type_name = type(error).__qualname__
        return f"error:{type_name}", f"{head}\n{remote}"
    return f"error:{type(error).__name__}", remote or one_line(error)


def _remote_text(tb: str) -> str:
    """The text a :class:`RemoteTraceback` wraps in triple quotes."""
    text = tb.strip("\n")
    if text.startswith('"""'):
        text = text[3:]
    if text.endswith('"""'):
        text = text[:-3]
    return text.strip("\n")


def _with_kind(facts: Facts, kind: str) -> Facts:
    return facts._replace(kind=kind)


def _details(facts: Facts) -> dict[str, Any]:
    return {
        "worker_pid": facts.worker_pid,
        "start_time": None if facts.started_at is None else round(facts.started_at, 6),
        "run_time": round(facts.run_time, 6),
        "attempts": facts.attempts,
        "outcome": facts.kind,
    }


def is_error(value: Any) -> bool:
    """A pool result that reports a failure (the pool's convention)."""
    return isinstance(value, dict) and "ERROR" in value


def error_record(
    number: int, message: str, *, timed_out: bool = False, facts: Facts | None = None, details: bool = False
) -> Record:
    """``{"line": n, "error": first line}``, plus ``"detail"`` (the rest,
    e.g. a traceback) when the message has several lines, and ``"details"``
    (the job's facts) with ``details``."""
    first, _, rest = message.strip().partition("\n")
    fields: dict[str, Any] = {"line": number, "error": first}
    if rest.strip():
        fields["detail"] = rest
    if details:
        fields["details"] = _details(facts if facts is not None else Facts(INVALID_JSON))
    outcome = Outcome.TIMED_OUT if timed_out else Outcome.ERROR
    return Record(_ENCODER.encode(fields) + "\n", outcome, facts)


def invalid_json_record(number: int, message: str, details: bool = False) -> Record:
    """The error record of an input line that is not JSON (the job never ran)."""
    return error_record(number, message, facts=Facts(INVALID_JSON), details=details)


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
    *,
    jobs: int,
    errors: int,
    timeouts: int,
    elapsed: float,
    outcome: RunOutcome,
    unfinished: int,
    retries: int = 0,
    memory_kills: int = 0,
    resumed: int = 0,
    halt: str = "",
    left: str = "",
) -> str:
    """``bossworker: 5 jobs, 1 error, 0 timeouts, 0.42 s (11.9 jobs/s)``;
    retries, memory kills and resumed (skipped) lines when there were any;
    what was left unfinished if the run ended early (``halt``: the --halt
    spec that stopped it; ``left``: an estimate of the time the rest needs)."""
    text = f"bossworker: {_plural(jobs, 'job')}, {_plural(errors, 'error')}, {_plural(timeouts, 'timeout')}"
    if retries:
        text += f", {_plural(retries, 'retry')}"
    if memory_kills:
        text += f", {_plural(memory_kills, 'memory kill')}"
    if resumed:
        text += f", {_plural(resumed, 'line')} skipped (done before, --resume)"
    text += f", {elapsed:.2f} s"
    if elapsed > 0 and jobs:
        text += f" ({jobs / elapsed:.1f} jobs/s)"
    if outcome is not RunOutcome.DONE:
        how = f"halted (--halt {halt})" if outcome is RunOutcome.HALTED and halt else outcome.value
        text += f"; {how}, {_plural(unfinished, 'line')} read but not finished"
        if left:
            text += f"; {left}"
    return text


def _plural(count: int, noun: str) -> str:
    if count == 1:
        return f"{count} {noun}"
    return f"{count} {noun[:-1]}ies" if noun.endswith("y") else f"{count} {noun}s"

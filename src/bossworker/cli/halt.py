"""``--halt``: when a run stops early because too many jobs failed (GNU
parallel's form, ``now|soon,fail=N|P%``).  Pure: parsing and the test."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["MIN_JOBS_FOR_RATE", "HaltSpec", "HaltWhen", "parse_halt"]

#: A failure *rate* is judged only once this many jobs have finished: over
#: fewer, one early failure would be "100 %".
MIN_JOBS_FOR_RATE = 10

_SPEC = re.compile(r"(now|soon),fail=(\d+(?:\.\d+)?)(%?)")
_FORMS = "WHEN,fail=N or WHEN,fail=P% with WHEN 'now' or 'soon' (e.g. soon,fail=1 or now,fail=10%)"


class HaltWhen(enum.Enum):
    """What stopping means."""

    SOON = "soon"  # start no more jobs; the running ones finish and are written
    NOW = "now"  # kill the running jobs too


@dataclass(frozen=True, slots=True)
class HaltSpec:
    """Stop after ``count`` failures, or once failures are ``percent`` % of the
    jobs finished (at least :data:`MIN_JOBS_FOR_RATE` of them)."""

    when: HaltWhen
    count: int | None = None
    percent: float | None = None

    def tripped(self, failed: int, finished: int) -> bool:
        """Whether ``failed`` failures out of ``finished`` jobs call for a stop."""
        if self.count is not None:
            return failed >= self.count
        assert self.percent is not None
        return finished >= MIN_JOBS_FOR_RATE and failed * 100 >= self.percent * finished

    def __str__(self) -> str:
        amount = f"{self.count}" if self.count is not None else f"{self.percent:g}%"
        return f"{self.when.value},fail={amount}"


def parse_halt(text: str) -> HaltSpec:
    """``now,fail=1`` / ``soon,fail=3`` / ``soon,fail=10%`` as a :class:`HaltSpec`;
    :class:`ValueError` naming the accepted forms for anything else."""
    match = _SPEC.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--halt takes {_FORMS}; not {text!r}")
    when = HaltWhen(match[1])
    if match[3]:
        percent = float(match[2])
        if not 0 < percent <= 100:
            raise ValueError(f"--halt: the failure rate must be above 0% and at most 100%, not {match[2]}%")
        return HaltSpec(when, percent=percent)
    if "." in match[2] or int(match[2]) < 1:
        raise ValueError(f"--halt: the number of failures must be a whole number >= 1, not {match[2]}")
    return HaltSpec(when, count=int(match[2]))

"""What main hands a waiting caller, sans-IO: a map's :class:`Lane`, a
``cancel_jobs`` :class:`CancelTicket`, a ``stats()`` :class:`StatsTicket`,
and a job's :data:`JobRecord`.

These are plain holders, filled in by :class:`~bossworker.ledger.MainLedger`
as frames are read and read by the facades (``map``, ``cancel``, ``stats``,
outcomes); no I/O, no lock.  The rules that fill them (which reply goes to
which ticket, when a lane's answers are dropped, exactly-once cancel) stay
in the ledger: a ticket only holds what its asker will be told.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .protocol import Frame

__all__ = ["CancelTicket", "JobRecord", "Lane", "StatsTicket"]

#: What main knows of one answered job beyond its answer frame (see
#: :meth:`~bossworker.ledger.MainLedger.take_record`): when it was queued (wall clock) and its
#: time limit, when its answer arrived, and the answers of the attempts that
#: failed and were retried (each with its arrival time).
JobRecord = tuple[float, float, float, list[tuple[float, Frame]]]


class Lane:
    """The answers to one stream's jobs (``map``), filed there by the ledger instead of
    get_result()'s queue, so a map and get_result() never take each
    other's results.  Its jobs are not counted by ``pending``."""

    __slots__ = ("abandoned", "frames", "outstanding", "queued", "received", "retried")

    def __init__(self, records: bool = False) -> None:
        self.frames: deque[Frame] = deque()  # answers read, oldest first
        self.outstanding = 0  # jobs sent whose answer has not been read
        self.abandoned = False  # nobody will take the answers: drop them
        # With ``records`` (a map of outcomes), what take_lane_record hands
        # out; kept here, so they go with the lane.
        self.queued: dict[int, tuple[float, float]] | None = {} if records else None
        self.received: dict[int, float] = {}
        self.retried: dict[int, list[tuple[float, Frame]]] = {}


class CancelTicket:
    """One ``cancel_jobs`` call's replies, filled in as they are read."""

    __slots__ = ("answers", "due", "mapped")

    def __init__(self, mapped: list[bool], asked: int) -> None:
        self.mapped = mapped  # per id asked: a map's job (never dropped from outside: False)
        self.answers: list[bool | None] = [None] * asked  # per CANCEL sent, in order
        self.due = asked  # replies still to come

    def result(self) -> list[bool | None]:
        """The answer per id asked: None where no reply came (Boss gone)."""
        replies = iter(self.answers)
        return [False if mapped else next(replies) for mapped in self.mapped]


class StatsTicket:
    """One ``stats()`` call's reply."""

    __slots__ = ("reply",)

    def __init__(self) -> None:
        self.reply: dict[str, Any] | None = None

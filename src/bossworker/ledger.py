"""Main's bookkeeping, sans-IO: what main knows of its jobs and of the Boss.

::

     facade (pool, streams, Executor)        MainLedger                    driver
     add_work ----> check_can_add()     +-------------------------+   (client.py on connection.py:
                    register_jobs()     | phase (Phase)           |    a socket, a lock, leader/followers;
     cancel  -----> ask_cancel()   ---> | intake (Intake)         |    aio.py: an event loop)
     stats   -----> ask_stats()    ---> | ids, pending, results   | <-- receive(frames, now)
     get_result <-- result_or_verdict() | lanes, per-job records  | <-- lost(), end_of_file(),
     map     <----- lane_frame_or_verdict | cancel / stats tickets |     closed()
                                        +-------------------------+ --> Wake: whom to wake

The ledger never touches a socket, a thread, a lock, a clock or a selector:
a driver feeds it the frames it decoded (:meth:`MainLedger.receive`, with
the wall-clock time they arrived), tells it what happened to the connection
(:meth:`lost`, :meth:`end_of_file`, :meth:`closed`), sends the bytes its
methods return, and wakes whom the returned :class:`Wake` names.  The
blocking driver (:class:`~bossworker.client.Client`, on
:class:`~bossworker.connection.Connection`) and the asyncio one
(:mod:`bossworker.aio`) differ only in how they wait; every answer they give
comes from here, so the twins cannot drift.  Its tests need no process
(``tests/test_ledger.py``).

Main's state is two enums from :mod:`bossworker.phases` (:class:`Phase`,
:class:`Intake`), each changed in one method here (:meth:`MainLedger._enter`,
:meth:`MainLedger._decide`); which moves are legal is that module's rule.

Rules with their one home here: job ids and the pending count; where each
answer goes (``get_result``'s queue or a map's :class:`Lane`); the per-job
records outcomes are made of (queued, time limit, arrival, retried attempts);
the pairing of CANCEL and STATS replies with their askers (the Boss answers
each in the order it got them: a FIFO of tickets, so a reply nobody waits
for leaves nothing behind); exactly-once cancel; the verdict for a forced
stop versus a dead Boss (:class:`ShutDownError` versus
:class:`BossDiedError`).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from .errors import (
    INPUT_CLOSED_ERROR,
    BossDiedError,
    InputClosedError,
    InvalidArgumentError,
    NoPendingResultsError,
    ShutDownError,
)
from .jobs import frame_text
from .phases import Intake, Phase, Wake
from .protocol import Flag, Frame, Kind, encode
from .tickets import CancelTicket, JobRecord, Lane, StatsTicket

__all__ = [
    "FORCED_STOP_ERROR",
    "MAX_JOB_ID",
    "CancelTicket",
    "Intake",
    "JobRecord",
    "Lane",
    "MainLedger",
    "Phase",
    "StatsTicket",
    "Wake",
]

#: The largest job id a frame header can carry (an unsigned 64-bit field).
MAX_JOB_ID = 2**64 - 1

FORCED_STOP_ERROR = "the pool was stopped with shut_down(force=True); its unretrieved results were discarded"


# What waits for the n-th CANCEL_REPLY: (job id, the user's ticket and the
# index of its answer) or (job id, the abandoned lane that sent it).
_CancelClaim = tuple[int, CancelTicket, int] | tuple[int, Lane, int]


class MainLedger:
    """Main's bookkeeping. See the module docstring."""

    def __init__(self, keep_records: bool = True) -> None:
        self.phase = Phase.STARTING
        self.intake = Intake.OPEN
        self.init_error: str | None = None  # INIT_FAILED's text
        self.init_failure = 0  # INIT_FAILED's InitFailure
        self.said_ready = False  # READY was read (the phase may have moved on since)
        # Per-job details for outcomes (the Executor needs none: False).
        self.keep_records = keep_records
        self.next_id = 1  # the next job id; also 1 + the number of jobs added
        self.pending = 0  # jobs added (outside maps) whose answers have not been taken
        self.results: deque[Frame] = deque()  # answers read, not taken, oldest first
        # Jobs dropped by cancel(outcomes=True), for get_outcome()
        # (get_result() never sees them); when, in ``received``.
        self.cancelled: deque[int] = deque()
        # Per-job records, kept while a job is pending (popped by take_record):
        # (queued_at, time limit), when its answer arrived, failed attempts.
        self.queued: dict[int, tuple[float, float]] = {}
        self.received: dict[int, float] = {}
        self.retried: dict[int, list[tuple[float, Frame]]] = {}
        self.routes: dict[int, Lane] = {}  # job id -> the Lane its answer goes to
        # The Boss answers CANCELs and STATS_REQUESTs in the order it got
        # them: who waits for each reply to come, oldest first.
        self._cancel_claims: deque[_CancelClaim] = deque()
        self._stats_claims: deque[StatsTicket] = deque()
        # Exactly-once cancel: CANCELs in flight per job, and the jobs one of
        # them dropped already (a second reply saying "dropped" is False).
        self._cancelling: dict[int, int] = {}
        self._dropped: set[int] = set()
        self._cancel_outcomes: set[int] = set()  # jobs whose drop yields a get_outcome marker
        # Segments of answers nobody will take (an abandoned map's): the driver frees them.
        self.orphans: list[int] = []

    # -- the phases: changed here only ----------------------------------------------

    def _enter(self, phase: Phase) -> bool:
        """Move to ``phase`` if that is a move; False if the phase is final."""
        if not self.phase.can_move_to(phase):
            return False  # DONE, DIED and CLOSED are final: later news changes nothing
        self.phase = phase
        return True

    def _decide(self, intake: Intake) -> bool:
        """Move the intake on (never back); False if it was there or beyond."""
        if not intake.is_beyond(self.intake):
            return False
        self.intake = intake
        return True

    # -- what the phases mean ----------------------------------------------------

    @property
    def ended(self) -> bool:
        """Nothing more will be read: BYE, end of file, or main closed the socket."""
        return not self.phase.live

    @property
    def sending(self) -> bool:
        """Bytes may still be sent to the Boss."""
        return self.phase in (Phase.STARTING, Phase.FAILED, Phase.SERVING)

    @property
    def boss_died(self) -> bool:
        """The socket ended before the Boss said BYE (and main did not stop it by force)."""
        return self.phase is Phase.DIED

    @property
    def forced(self) -> bool:
        """``shut_down(force=True)`` has begun."""
        return self.intake is Intake.FORCED

    @property
    def accepting(self) -> bool:
        """No shut-down has begun (close_input() aside)."""
        return self.intake in (Intake.OPEN, Intake.INPUT_CLOSED)

    @property
    def input_closed(self) -> bool:
        """No more work will be added: close_input() or a shut-down."""
        return self.intake is not Intake.OPEN

    @property
    def started(self) -> bool:
        """The Boss said READY or INIT_FAILED, or nothing more will come."""
        return self.phase is not Phase.STARTING

    # -- what the driver tells us about the connection -------------------------------

    def lost(self) -> Wake:
        """The Boss is gone (a send failed, its process exited): the driver
        reads what the socket still holds, then calls :meth:`end_of_file`."""
        return Wake.WAITERS if self._enter(Phase.LOST) else Wake.NONE

    def end_of_file(self) -> Wake:
        """The socket said end of file (or the last read after :meth:`lost`
        is done).  Without BYE, the Boss died, unless main stopped it by force."""
        self._enter(Phase.CLOSED if self.forced else Phase.DIED)
        return Wake.WAITERS | Wake.INPUT

    def closed(self) -> Wake:
        """Main shut the socket down: nothing more is read."""
        self._enter(Phase.CLOSED)
        return Wake.WAITERS | Wake.INPUT

    # -- what main decides -----------------------------------------------------------

    def close_input(self) -> bool:
        """No more add_work. False if input was already closed."""
        return self._decide(Intake.INPUT_CLOSED)

    def stop_accepting(self) -> bool:
        """A shut-down begins: no more add_work. False if one had begun."""
        return self._decide(Intake.STOPPING)

    def begin_forced_stop(self) -> Wake:
        """``shut_down(force=True)`` begins: waiters for results or replies
        now raise :class:`ShutDownError`, not :class:`BossDiedError`."""
        self._decide(Intake.FORCED)
        return Wake.WAITERS | Wake.INPUT

    # -- start-up ------------------------------------------------------------------

    def ready_verdict(self) -> tuple[str | None, int] | None:
        """After :attr:`started`: None if the Boss said READY, else the
        INIT_FAILED text and failure code (text None: the Boss died first)."""
        if self.said_ready:
            return None
        return self.init_error, self.init_failure

    # -- work in -------------------------------------------------------------------

    def check_can_add(self) -> None:
        """Raise if no work may be added now (the verdict add_work gives)."""
        if not self.accepting:
            raise ShutDownError("the pool has been shut down; it takes no more work")
        if self.intake is Intake.INPUT_CLOSED:
            raise InputClosedError(INPUT_CLOSED_ERROR)
        if self.phase in (Phase.LOST, Phase.DIED):
            raise BossDiedError("the Boss process has died")
        if self.ended:
            raise ShutDownError("the pool has been shut down; it takes no more work")

    def register_jobs(self, count: int, now: float, limit: float, lane: Lane | None = None) -> range:
        """Take ids for ``count`` jobs (after :meth:`check_can_add`); with a
        ``lane``, their answers go there and they are not pending.  Returns
        the ids and whom to wake."""
        first = self.next_id
        self.next_id += count
        ids = range(first, first + count)
        if lane is None:
            self.pending += count
            if self.keep_records:
                self.queued.update(dict.fromkeys(ids, (now, limit)))
        else:
            lane.outstanding += count
            self.routes.update(dict.fromkeys(ids, lane))
            if lane.queued is not None:
                lane.queued.update(dict.fromkeys(ids, (now, limit)))
        return ids

    def forget_jobs(self, ids: Sequence[int]) -> None:
        """Undo the registration of jobs whose sending failed."""
        if self.forced:
            return  # a forced stop has discarded everything already
        lane = self.routes.get(ids[0]) if ids else None
        if lane is None:
            self.pending -= len(ids)
            for job_id in ids:
                self.queued.pop(job_id, None)
        else:
            lane.outstanding -= len(ids)
            for job_id in ids:
                self.routes.pop(job_id, None)

    # -- frames in -------------------------------------------------------------------

    def receive(self, frames: Iterable[Frame], now: float) -> Wake:
        """File the frames of one read, in order; ``now`` is when they came
        (wall clock).  Returns whom to wake."""
        wake = Wake.NONE
        for frame in frames:
            kind = frame.kind
            wake |= Wake.WAITERS
            if kind in (Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT):
                lane = self.routes.pop(frame.job_id, None) if self.routes else None
                if lane is None:
                    self.results.append(frame)
                    if self.keep_records:
                        self.received[frame.job_id] = now
                else:
                    if lane.queued is not None and not lane.abandoned:
                        lane.received[frame.job_id] = now
                    lane.outstanding -= 1
                    if not lane.abandoned:
                        lane.frames.append(frame)
                    # else: the driver frees its segment (see dropped_segments)
                    elif frame.flags & Flag.SEGMENT:
                        self.orphans.append(frame.job_id)
            elif kind == Kind.RETRYING:
                self._retrying(frame, now)
            elif kind == Kind.CANCEL_REPLY:
                wake |= self._cancel_reply(frame.job_id, bytes(frame.payload) == b"\x01", now)
            elif kind == Kind.STATS:
                if self._stats_claims:
                    self._stats_claims.popleft().reply = json.loads(bytes(frame.payload))
            elif kind == Kind.READY:
                self.said_ready = True
                self._enter(Phase.SERVING)
            elif kind == Kind.INIT_FAILED:
                self.init_error = frame_text(frame)
                self.init_failure = frame.job_id
                self._enter(Phase.FAILED)
            elif kind == Kind.BYE:
                self._enter(Phase.DONE)
                wake |= Wake.INPUT
        return wake

    def take_orphans(self) -> list[int]:
        """Segment ids of answers dropped since the last call (free them)."""
        orphans, self.orphans = self.orphans, []
        return orphans

    def _retrying(self, frame: Frame, now: float) -> None:
        lane = self.routes.get(frame.job_id) if self.routes else None
        if lane is None:
            retried = self.retried
        elif lane.queued is not None and not lane.abandoned:
            retried = lane.retried
        else:
            return  # nobody will ask for this job's attempts
        retried.setdefault(frame.job_id, []).append((now, Frame.parse(bytes(frame.payload))))

    # -- cancel --------------------------------------------------------------------------

    def ask_cancel(self, job_ids: Sequence[int], outcomes: bool) -> tuple[CancelTicket, bytes]:
        """Start one ``cancel_jobs`` round trip: returns its ticket and the
        CANCEL frames to send (none: the ticket is answered already).

        Every id is checked before anything is counted, so a bad id costs
        nothing later: an id that is not an int from 1 to :data:`MAX_JOB_ID`
        raises :class:`InvalidArgumentError`; an id this pool never issued,
        or a map's job, is answered False without asking the Boss."""
        for job_id in job_ids:
            if isinstance(job_id, bool) or not isinstance(job_id, int) or not 1 <= job_id <= MAX_JOB_ID:
                raise InvalidArgumentError(
                    f"job_id must be an int from add_work() (1 to {MAX_JOB_ID}), not {job_id!r}; "
                    "nothing was sent, and the pool is unchanged"
                )
        mapped = [job_id in self.routes or job_id >= self.next_id for job_id in job_ids]
        asked = [job_id for job_id, skip in zip(job_ids, mapped, strict=True) if not skip]
        ticket = CancelTicket(mapped, len(asked))
        if not asked or self.ended or not self.sending:
            ticket.due = 0
            if asked:
                ticket.answers = [None] * len(asked)
            return ticket, b""
        data = b"".join(encode(Kind.CANCEL, job_id) for job_id in asked)
        for index, job_id in enumerate(asked):
            self._cancel_claims.append((job_id, ticket, index))
            self._cancelling[job_id] = self._cancelling.get(job_id, 0) + 1
        if outcomes:
            self._cancel_outcomes.update(asked)
        return ticket, data

    def cancel_result(self, ticket: CancelTicket) -> list[bool | None] | None:
        """The answers of a cancel round trip, or None while replies are due
        and may still come."""
        if ticket.due and not self.ended:
            return None
        return ticket.result()

    def _cancel_reply(self, _job_id: int, dropped: bool, now: float) -> Wake:
        if not self._cancel_claims:
            return Wake.NONE  # a reply nobody asked for: a Boss bug; nothing to file
        job_id, owner, index = self._cancel_claims.popleft()  # the Boss answers in order
        if isinstance(owner, Lane):  # an abandoned map's job: nobody waits for this reply
            if dropped and self.routes.get(job_id) is owner:
                del self.routes[job_id]
                owner.outstanding -= 1  # no answer will come for it
            return Wake.NONE
        left = self._cancelling[job_id] - 1
        if left:
            self._cancelling[job_id] = left
        else:
            del self._cancelling[job_id]
        # Exactly once: a job is dropped by one CANCEL, whatever the others say.
        first = dropped and job_id not in self._dropped
        if first and left:
            self._dropped.add(job_id)  # other CANCELs of it are in flight
        elif not left:
            self._dropped.discard(job_id)
        owner.answers[index] = first
        owner.due -= 1
        told = job_id in self._cancel_outcomes
        if told and not left:
            self._cancel_outcomes.discard(job_id)
        if not first or self.forced:  # a forced stop has discarded everything already
            return Wake.WAITERS
        self.pending -= 1  # no result will ever come for it
        if told:
            # Filed in the same step as the pending count, so a reader
            # waiting for outcomes sees it before it waits again.  Its
            # records stay until the marker is taken: a retried job's
            # attempts are part of its outcome.
            self.received[job_id] = now
            self.cancelled.append(job_id)
            return Wake.WAITERS | Wake.INPUT
        self.queued.pop(job_id, None)
        self.retried.pop(job_id, None)
        return Wake.WAITERS

    # -- stats ---------------------------------------------------------------------------

    def ask_stats(self) -> StatsTicket:
        """Start a STATS round trip (the driver sends STATS_REQUEST)."""
        if self.phase in (Phase.LOST, Phase.DIED):
            raise BossDiedError("the Boss process has died")
        if not self.accepting or self.ended:
            raise ShutDownError("the pool has been shut down")
        ticket = StatsTicket()
        self._stats_claims.append(ticket)
        return ticket

    def stats_result(self, ticket: StatsTicket) -> dict[str, Any] | None:
        """The STATS reply, None while it may still come; raises once it cannot."""
        if ticket.reply is not None:
            return ticket.reply
        if self.forced or self.phase is Phase.CLOSED:
            raise ShutDownError("the pool was shut down before the Boss answered")
        if self.ended:
            raise BossDiedError("the Boss process died before it answered")
        return None

    # -- results out -------------------------------------------------------------------

    def has_result(self, cancelled: bool = False) -> bool:
        """A result (or, with ``cancelled``, a cancelled job's marker) is filed."""
        return bool(self.results) or (cancelled and bool(self.cancelled))

    def take_result(self, cancelled: bool = False) -> tuple[Frame, Wake]:
        """The oldest filed result (after :meth:`has_result`); with
        ``cancelled``, a cancelled job's marker first, as a CANCEL_REPLY
        frame (when it was dropped is its record's arrival time)."""
        if cancelled and self.cancelled:
            return Frame(Kind.CANCEL_REPLY, 0, self.cancelled.popleft(), 0.0, b""), Wake.NONE
        self.pending -= 1
        # Waiters with nothing left to wait for must say so.
        return self.results.popleft(), (Wake.WAITERS if self.pending == 0 else Wake.NONE)

    def take_all(self) -> tuple[list[Frame], Wake]:
        """Every filed result, oldest first (none after a forced stop began)."""
        if not self.results or self.forced:
            return [], Wake.NONE
        frames = list(self.results)
        self.results.clear()
        self.pending -= len(frames)
        return frames, (Wake.WAITERS if self.pending == 0 else Wake.NONE)

    def take_record(self, job_id: int) -> JobRecord:
        """What main knows of job ``job_id`` (answered, or dropped by a
        cancel), forgotten here.  Whoever takes its frame calls this once."""
        queued_at, limit = self.queued.pop(job_id, (0.0, 0.0))
        received = self.received.pop(job_id, 0.0)
        retried = self.retried.pop(job_id, []) if self.retried else []
        return queued_at, limit, received, retried

    @staticmethod
    def take_lane_record(lane: Lane, job_id: int) -> JobRecord:
        """:meth:`take_record` for a job of a ``Lane(records=True)``."""
        queued_at, limit = lane.queued.pop(job_id, (0.0, 0.0)) if lane.queued is not None else (0.0, 0.0)
        return queued_at, limit, lane.received.pop(job_id, 0.0), lane.retried.pop(job_id, [])

    def result_or_verdict(
        self, must_be_pending: bool, forced_before: bool = False, cancelled: bool = False
    ) -> tuple[Frame | None, bool, Wake]:
        """A result already read, if any, whether waiting is pointless
        (nothing more will be read), and whom to wake.  With
        ``must_be_pending`` (a wait without a time limit), raise rather than
        return (None, True).

        Raises :class:`ShutDownError` once a forced stop has begun, unless
        it had begun before this call (``forced_before``) and nothing is
        pending any more; :class:`NoPendingResultsError` when
        ``must_be_pending`` and nothing is pending; :class:`BossDiedError`
        when the Boss died with results due."""
        if self.forced and (self.pending > 0 or not forced_before):
            raise ShutDownError(FORCED_STOP_ERROR)
        if self.has_result(cancelled):
            frame, wake = self.take_result(cancelled)
            return frame, True, wake
        if must_be_pending and self.pending == 0:
            raise NoPendingResultsError("no results are pending: get_result() would wait forever")
        if self.ended:
            if self.pending > 0 and (self.boss_died or must_be_pending):
                raise BossDiedError(f"the Boss process has died with {self.pending} result(s) pending")
            return None, True, Wake.NONE
        return None, False, Wake.NONE

    def until_closed_step(self, take: bool = True, cancelled: bool = False) -> tuple[Frame | None, str, Wake]:
        """What ``results(until_closed=True)`` does next: a result to deliver
        (``"frame"``; taken only with ``take``), stop (``"end"``: input
        closed and nothing pending), wait for the socket (``"read"``: results
        are due) or wait for work or close_input() while watching the socket
        (``"input"``).  With ``cancelled`` (outcomes), the marker of a job
        cancel() dropped counts as a result."""
        if self.has_result(cancelled):
            if not take:
                return None, "frame", Wake.NONE
            frame, wake = self.take_result(cancelled)
            return frame, "frame", wake
        if self.pending == 0:
            if self.input_closed:
                return None, "end", Wake.NONE
            if self.ended:
                if self.boss_died or self.phase is Phase.LOST:
                    raise BossDiedError("the Boss process has died: no more work can be added")
                raise ShutDownError("the pool has been shut down: no more work can be added")
            return None, "input", Wake.NONE
        found, final, wake = self.result_or_verdict(must_be_pending=False)
        if found is not None:
            return found, "frame", wake
        return None, "end" if final else "read", wake

    # -- lanes (map) ---------------------------------------------------------------------

    def lane_frame_or_verdict(self, lane: Lane) -> tuple[Frame | None, bool]:
        """The next answer filed in ``lane``, and whether waiting is over:
        True with None when the lane has nothing more to come.  Raises if
        answers are due that can never come: :class:`ShutDownError` after a
        forced stop (as get_result() says), :class:`BossDiedError` if the
        Boss died."""
        if lane.frames:
            return lane.frames.popleft(), True
        if lane.outstanding == 0:
            return None, True
        if self.forced:
            raise ShutDownError(
                f"the pool was stopped with shut_down(force=True) with {lane.outstanding} "
                "result(s) of this map() due"
            )
        if self.ended:
            if self.boss_died:
                raise BossDiedError(
                    f"the Boss process has died with {lane.outstanding} result(s) of this map() due"
                )
            raise ShutDownError(f"the pool was shut down with {lane.outstanding} result(s) of this map() due")
        return None, False

    def abandon_lane(self, lane: Lane) -> tuple[list[Frame], bytes]:
        """Nobody will take ``lane``'s answers: returns the answers it held
        (the driver frees their segments) and the CANCEL frames asking the
        Boss to drop its jobs not yet started; their replies are claimed by
        the lane, so they leave nothing behind."""
        lane.abandoned = True
        held = list(lane.frames)
        lane.frames.clear()
        if lane.outstanding == 0 or not self.sending:
            return held, b""
        waiting = [job_id for job_id, owner in self.routes.items() if owner is lane]
        for job_id in waiting:
            self._cancel_claims.append((job_id, lane, 0))
        return held, b"".join(encode(Kind.CANCEL, job_id) for job_id in waiting)

    # -- forced stop ---------------------------------------------------------------------

    def discard(self) -> None:
        """Forget every result and record (after a forced stop: the Boss is gone)."""
        self.results.clear()
        self.pending = 0
        self.queued.clear()
        self.received.clear()
        self.retried.clear()
        self.cancelled.clear()
        self._cancel_outcomes.clear()

    def held_segments(self) -> frozenset[int]:
        """Ids of the filed results whose payload is in a segment."""
        return frozenset(f.job_id for f in self.results if f.flags & Flag.SEGMENT)

    def claims(self) -> tuple[int, int, int]:
        """Replies awaited (CANCEL, STATS) and jobs with cancels in flight:
        what a leak would grow (for tests)."""
        return len(self._cancel_claims), len(self._stats_claims), len(self._cancelling) + len(self._dropped)

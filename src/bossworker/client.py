"""Main's blocking driver of the main ledger: the calls the facades make.

:class:`Client` is a :class:`~bossworker.connection.Connection` (the socket,
the send queue, the leader/followers reader, the descriptor's lifetime) plus
the calls ``BossWorkerAsync``, the streams and the ``Executor`` make: a
result, a map's next answer, ``close_input``, ``stats``, ``cancel_jobs``, the
stop.  Each is one step of the sans-IO :class:`~bossworker.ledger.MainLedger`
under the connection's lock, then, if the step says so, a wait
(:meth:`~bossworker.connection.Connection.wait_for`); every verdict (what is
pending, whether a wait is over and with which error) is the ledger's.  The
asyncio driver (:mod:`bossworker.aio`) takes the same steps and waits its
own way.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from .connection import Connection, check_owner
from .errors import BossDiedError, ShutDownError
from .ledger import JobRecord, Lane, Phase, Wake
from .protocol import Flag, Frame, Kind

__all__ = ["Client", "JobRecord", "Lane", "check_owner"]


class Client(Connection):
    """The blocking driver: one ledger step per call, then a wait if one is due."""

    # -- state ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs added whose results have not been retrieved."""
        return self.ledger.pending

    @property
    def added(self) -> int:
        """Jobs sent to the Boss so far."""
        return self.ledger.next_id - 1

    @property
    def boss_died(self) -> bool:
        """The socket closed before the Boss said BYE."""
        return self.ledger.boss_died

    @property
    def eof_or_closed(self) -> bool:
        """Nothing more will ever be read."""
        return self.ledger.ended

    @property
    def forced(self) -> bool:
        """``shut_down(force=True)`` has begun."""
        return self.ledger.forced

    @property
    def bye(self) -> bool:
        """The Boss said every answer was sent."""
        return self.ledger.phase is Phase.DONE

    @property
    def input_closed(self) -> bool:
        """No more work will be added: close_input() or a shut-down."""
        return self.ledger.input_closed

    @property
    def cancelled_waiting(self) -> int:
        """Cancelled jobs whose outcome get_outcome has not handed out yet."""
        return len(self.ledger.cancelled)

    # -- results -------------------------------------------------------------

    def next_result(self, blocking: bool, timeout: float | None, cancelled: bool = False) -> Frame | None:
        """The next result frame, oldest first, or None (see get_result).

        With ``cancelled``, a job dropped by ``cancel_jobs(outcomes=True)`` comes
        first, as a frame of kind CANCEL_REPLY (get_outcome; never
        get_result)."""
        self.check_owner()
        ledger = self.ledger
        with self.lock:  # the common case: a result was read already
            if ledger.has_result(cancelled) and not ledger.forced:
                frame, wake = ledger.take_result(cancelled)
                self.wake(wake)
                return frame
        if not blocking:
            self.poll()
            with self.lock:
                if ledger.forced:
                    return None  # discarded, or about to be
                return self.result_or_verdict(must_be_pending=False, cancelled=cancelled)[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        must_be_pending = timeout is None  # else work may still come from another thread
        with self.lock:
            forced_before = ledger.forced
            while True:
                found, final = self.result_or_verdict(must_be_pending, forced_before, cancelled)
                if found is not None or final:
                    return found
                self.wait_for(
                    lambda: (
                        ledger.has_result(cancelled)
                        or (ledger.forced and not forced_before)
                        or (must_be_pending and ledger.pending == 0)
                    ),
                    deadline,
                )
                if deadline is not None and time.monotonic() >= deadline:
                    return self.result_or_verdict(False, forced_before, cancelled)[0]

    def result_or_verdict(
        self, must_be_pending: bool, forced_before: bool = False, cancelled: bool = False
    ) -> tuple[Frame | None, bool]:
        """:meth:`MainLedger.result_or_verdict` under the lock (no I/O)."""
        with self.lock:
            frame, final, wake = self.ledger.result_or_verdict(must_be_pending, forced_before, cancelled)
            self.wake(wake)
            return frame, final

    def take_filed(self) -> list[Frame]:
        """Every result frame read and not taken yet, oldest first (no I/O;
        for a single consumer that takes them in batches: the Executor's
        collector).  Empty after a forced stop began."""
        with self.lock:
            frames, wake = self.ledger.take_all()
            self.wake(wake)
            return frames

    def take_record(self, job_id: int) -> JobRecord:
        """What main knows of taken job ``job_id`` (see :data:`JobRecord`)."""
        with self.lock:
            return self.ledger.take_record(job_id)

    def take_lane_record(self, lane: Lane, job_id: int) -> JobRecord:
        """:meth:`take_record` for a job of a ``Lane(records=True)``."""
        with self.lock:
            return self.ledger.take_lane_record(lane, job_id)

    # -- streams (BossWorkerAsync.map, close_input) ------------------------------

    def lane_frame_or_verdict(self, lane: Lane) -> tuple[Frame | None, bool]:
        """:meth:`MainLedger.lane_frame_or_verdict` under the lock (no I/O)."""
        with self.lock:
            return self.ledger.lane_frame_or_verdict(lane)

    def next_lane_frame(self, lane: Lane) -> Frame | None:
        """Block for the next answer of ``lane``; None if none is due."""
        self.check_owner()
        with self.lock:
            while True:
                frame, final = self.ledger.lane_frame_or_verdict(lane)
                if frame is not None or final:
                    return frame
                self.wait_for(lambda: bool(lane.frames) or lane.outstanding == 0 or self.ledger.forced, None)

    def abandon_lane(self, lane: Lane) -> None:
        """Nobody will take ``lane``'s answers: drop those read and those to
        come, and ask the Boss to drop its jobs that have not started (one
        CANCEL each, sent without waiting for the replies: a job a worker
        has already runs to its end, and its answer is dropped)."""
        if os.getpid() != self.owner_pid:
            return  # a generator closed in a forked child: the lane is the parent's
        with self.lock:
            held, data = self.ledger.abandon_lane(lane)
            for frame in held:
                if frame.flags & Flag.SEGMENT:
                    self.segments.discard(frame.job_id)
            if not data:
                return
            self.queue_bytes(data)
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.poll()  # sent now if the socket takes them, else by the next call that sends

    def close_input(self) -> bool:
        """No more add_work. Returns False if input was already closed."""
        self.check_owner()
        with self.lock:
            changed = self.ledger.close_input()
            self.wake(Wake.INPUT)
            return changed

    def until_closed_step(self, take: bool = True, cancelled: bool = False) -> tuple[Frame | None, str]:
        """:meth:`MainLedger.until_closed_step` under the lock (no I/O)."""
        with self.lock:
            frame, step, wake = self.ledger.until_closed_step(take, cancelled)
            self.wake(wake)
            return frame, step

    def next_result_until_closed(self, cancelled: bool = False) -> Frame | None:
        """The next result frame; None once input is closed and every
        result was taken.  Until then, waits also while nothing is pending
        (for another thread's add_work or close_input), watching the socket
        all the while, so the Boss's death is noticed at once.
        ``cancelled``: as in :meth:`next_result`."""
        self.check_owner()
        ledger = self.ledger
        with self.lock:
            while True:
                frame, step = self.until_closed_step(cancelled=cancelled)
                if step == "frame" or step == "end":
                    return frame
                if step == "input":
                    self.wait_for(self._input_changed(cancelled), None)
                else:
                    self.wait_for(lambda: ledger.has_result(cancelled) or ledger.pending == 0, None)

    def _input_changed(self, cancelled: bool) -> Callable[[], bool]:
        """A ``done()`` for :meth:`wait_for`: work was added, input closed,
        or a result (a cancelled marker) filed since this call."""
        ledger, added = self.ledger, self.ledger.next_id
        return lambda: ledger.next_id != added or ledger.input_closed or ledger.has_result(cancelled)

    # -- start-up, stats, cancel, shut-down ---------------------------------------------

    def wait_started(self) -> tuple[str | None, int] | None:
        """Block until the Boss said READY (None) or INIT_FAILED (its text
        and InitFailure), or its socket ended first ((None, 0))."""
        with self.lock:
            self.wait_for(lambda: self.ledger.started, None)
            return self.ledger.ready_verdict()

    def stats(self) -> dict[str, Any]:
        """Ask the Boss for its counters and wait for the answer."""
        self.check_owner()
        with self.lock:
            ticket = self.ledger.ask_stats()
            target = self.queue_control(Kind.STATS_REQUEST)
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.flush(target)  # if it cannot be sent, stats_result says why
        with self.lock:
            # Raises once no reply can come (stopped, died); the socket
            # ends in either, so the wait always ends with an answer or that.
            self.wait_for(lambda: self.ledger.stats_result(ticket) is not None, None)
            reply = self.ledger.stats_result(ticket)
            assert reply is not None
            return reply

    def cancel_jobs(self, job_ids: Sequence[int], outcomes: bool = False) -> list[bool | None]:
        """Ask the Boss to drop these jobs if they still wait in its queue.

        One round trip for the lot; returns, in order, True for each job
        dropped (it will never be answered and no longer counts as pending;
        exactly one True per job, whatever the threads), False for one the
        Boss did not drop (a worker has it, it is done, a map's, or never
        issued), and None where no answer came because the Boss is gone or
        the pool was closed.  Allowed after :meth:`stop_accepting`:
        cancelling is how a shutdown drops queued work.  With ``outcomes``,
        each dropped job also yields a cancelled marker to
        ``next_result(cancelled=True)``, filed when the reply is read (so no
        waiter can miss it).  An id that is not a job id raises
        :class:`InvalidArgumentError`, and nothing is sent.
        """
        self.check_owner()
        with self.lock:
            ticket, data = self.ledger.ask_cancel(job_ids, outcomes)
            if not data:
                return ticket.result()
            target = self.queue_bytes(data)
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.flush(target)  # if it cannot be sent, no reply comes: None
        with self.lock:
            self.wait_for(lambda: self.ledger.cancel_result(ticket) is not None, None)
            return ticket.result()

    def stop_accepting(self) -> bool:
        """No more add_work. Returns False if it had already stopped."""
        with self.lock:
            changed = self.ledger.stop_accepting()
            self.wake(Wake.INPUT)  # results(until_closed=True) ends with the pool's input
            return changed

    def drain(self) -> None:
        """Ask the Boss to finish, and read every result until its BYE."""
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.send_control(Kind.SHUTDOWN)
        with self.lock:
            self.wait_for(lambda: self.bye, None)

    def discard_results(self) -> None:
        """Forget every result (after a forced stop: the Boss is gone)."""
        with self.lock:
            self.ledger.discard()
        self.segments.discard_all()

    def discard_orphan_segments(self) -> None:
        """After the Boss died: free every segment but those of results held here."""
        with self.lock:
            held = self.ledger.held_segments()
        self.segments.discard_all(keep_results=held)

    def begin_forced_stop(self) -> None:
        """``shut_down(force=True)`` begins: calls waiting for results or
        stats now raise :class:`ShutDownError`, not :class:`BossDiedError`."""
        with self.lock:
            self.wake(self.ledger.begin_forced_stop())

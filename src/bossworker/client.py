"""Main's connection to the Boss: the blocking driver of the main ledger.

Every answer main gives (what pending is, where a frame goes, whether a
wait is over and with which error) comes from the sans-IO
:class:`~bossworker.ledger.MainLedger`; this module only moves bytes and
waits.  It owns no threads: everything happens inside the calls the user
makes.  It is safe to use from several threads at once:

* senders queue whole frames and flush them (see "sending" below); a
  sender never waits for a reader;
* reading follows the *leader/followers* pattern: the first thread that
  needs input becomes the reader, waits on the socket and hands every frame
  it decodes to the ledger; the other threads wait on a condition variable
  and are woken after every read.  So a thread blocked in ``get_result()``
  never hides a ``stats()`` reply from another, and a waiter with a short
  timeout is never stuck behind one with a long one.

Whoever waits for input also pushes out what is queued to send (and watches
the socket for room while output is queued), so frames queued by a sender
that gave up (a cancelled ``aadd_work()``) are never stranded.  A reader
also watches a wake-up pipe, so a change that brings no frame (another
thread's ``close_input()``) ends its wait at once.

Listeners (the asyncio driver, :mod:`bossworker.aio`) are called after every
change a waiter may care about (the ledger's :class:`~bossworker.ledger.Wake`).

The connection belongs to the process that made it: in any other (an
``os.fork()`` child, a worker that inherited it) every call raises
:class:`~bossworker.errors.WrongProcessError` before touching anything.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from . import logfwd
from .backend import BossHandle, forget_main_socket
from .errors import (
    BossDiedError,
    InvalidArgumentError,
    ShutDownError,
    WrongProcessError,
)
from .jobs import job_frames, retried_job_frames
from .ledger import JobRecord, Lane, MainLedger, Phase, Wake
from .payload import Pickled, Segments, chunks_of
from .portable import send_chunks
from .protocol import MAX_PAYLOAD, Decoder, Flag, Frame, Kind, SendQueue, encode, recv_frames

__all__ = ["Client", "JobRecord", "Lane", "check_owner"]

# While blocked on a full socket, look at the Boss process this often.
_LIVENESS_INTERVAL = 0.5


def check_owner(owner_pid: int, what: str = "pool") -> None:
    """Raise :class:`WrongProcessError` unless this is process ``owner_pid``."""
    pid = os.getpid()
    if pid != owner_pid:
        raise WrongProcessError(
            f"this {what} was made in process {owner_pid} and is used in process {pid}: a child made "
            f"by os.fork() (or a worker that inherited the {what}) cannot use its parent's {what}; "
            f"nothing was touched. Make a new {what} in this process"
        )


class Client:
    """A connected main-side endpoint: frames out, frames in; the ledger keeps the books."""

    def __init__(
        self,
        sock: socket.socket,
        handle: BossHandle,
        read_size: int,
        segments: Segments,
        keep_records: bool = True,
    ) -> None:
        sock.setblocking(False)
        self.owner_pid = os.getpid()
        self.segments = segments
        self.handle = handle
        self.ledger = MainLedger(keep_records)
        self._sock = sock
        self._decoder = Decoder(read_size)
        self._cond = threading.Condition()  # guards everything below and the ledger (an RLock)
        self._out = SendQueue()  # frames queued for the Boss
        self._queued_total = 0  # bytes ever queued
        self._sent_total = 0  # bytes ever sent
        # The driver's own I/O state (the ledger's phase says what is known
        # of the Boss): a thread is the reader; the socket was shut down by
        # us; waits hold the descriptor; it is closed.
        self._reading = False
        self._shut = False
        self._fd_holds = 0
        self._fd_closed = False
        self._listeners: list[Callable[[], None]] = []
        # Who waits for work to be added or input to be closed: asyncio
        # tasks through callbacks; the reader through the wake-up pipe.
        self._input_callbacks: list[Callable[[], None]] = []
        # A socket pair, not os.pipe(): Windows' select() takes sockets only.
        self._nudge_r, self._nudge_w = socket.socketpair()
        self._nudge_r.setblocking(False)
        self._nudge_w.setblocking(False)

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

    @property
    def wants_to_send(self) -> bool:
        """Bytes are queued that the socket has not taken yet."""
        return bool(self._out) and not self._shut and self.ledger.sending

    def check_owner(self) -> None:
        """Raise :class:`WrongProcessError` in a process other than the owner's."""
        if os.getpid() != self.owner_pid:
            check_owner(self.owner_pid)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change a waiter may care about.

        It is called from any thread, possibly with this client's lock held:
        it must not block, and must not wait for another thread that may
        need this client.
        """
        with self._cond:
            self._listeners.append(listener)

    def watch_input(self, callback: Callable[[], None], watch: bool = True) -> None:
        """Have ``callback`` called (lock held, so it must only schedule
        work) whenever work is added or input closes; ``watch=False`` stops."""
        with self._cond:
            if watch:
                self._input_callbacks.append(callback)
            else:
                self._input_callbacks.remove(callback)

    def _wake(self, wake: Wake) -> None:
        """Wake whom the ledger named (lock held)."""
        if not wake:
            return
        self._cond.notify_all()
        if wake & Wake.WAITERS:
            for listener in self._listeners:
                listener()
        if wake & Wake.INPUT:
            for callback in self._input_callbacks:
                callback()
            if self._reading:
                with contextlib.suppress(OSError):  # full (a wake-up is pending) or closed
                    self._nudge_w.send(b"!")

    # -- the descriptor's lifetime -------------------------------------------
    #
    # close() may run in one thread while others wait on the socket: a reader
    # in select(), an event loop with a reader registered.  Closing the
    # descriptor under them would free its number for the next file opened:
    # the select() would wait on someone else's file, and an event loop would
    # keep a registration that silently never fires for the next socket to get
    # that number.  So close() shuts the socket down (every wait on it wakes:
    # it reads as end-of-file) and closes the descriptor only once nobody
    # holds it; otherwise the last holder closes it.

    def hold_fd(self) -> int | None:
        """Keep the descriptor (and its number) until :meth:`release_fd`.

        Returns it, or None if the socket is closed (then hold nothing)."""
        with self._cond:
            if self._shut:
                return None
            self._fd_holds += 1
            return self._sock.fileno()

    def release_fd(self) -> None:
        with self._cond:
            self._fd_holds -= 1
            self._close_fd_if_unheld()

    def _close_fd_if_unheld(self) -> None:
        if self._shut and self._fd_holds == 0 and not self._reading and not self._fd_closed:
            self._fd_closed = True
            forget_main_socket(self._sock)
            self._sock.close()
            self._nudge_r.close()
            self._nudge_w.close()

    # -- sending -------------------------------------------------------------
    #
    # Senders append whole frames to one shared queue under the lock, so
    # frames from different threads (or tasks) never interleave; then each
    # sender flushes until the bytes it queued are out.  The lock is only
    # held for non-blocking system calls: waiting for a writable socket
    # happens outside it, in select() for blocking callers and in the event
    # loop for asyncio ones.  Readers push out what is queued too, so bytes
    # whose sender gave up waiting still go out.

    def queue_jobs(
        self,
        pickles: Sequence[Pickled],
        timeout: float,
        retries: int = 0,
        retry_on: int = 0,
        lane: Lane | None = None,
    ) -> tuple[list[int], int]:
        """Queue one JOB frame per pickled job. Returns their ids and the
        send target to pass to :meth:`flush` or :meth:`aflush`.

        ``retries`` and ``retry_on`` (protocol.RetryOn bits) ride in each
        JOB's header; such a job travels inline (not in a segment, which its
        first attempt would consume) unless it is too big for a frame.  With
        a ``lane``, their answers go there and they do not count as pending."""
        self.check_owner()
        with self._cond:
            ledger = self.ledger
            ledger.check_can_add()
            in_segments = self._store_oversized(pickles, ledger.next_id)
            ids = list(ledger.register_jobs(len(pickles), time.time(), timeout, lane))
            if lane is None:
                # Tasks waiting in results(until_closed=True) look again; a
                # thread waiting so is woken by this work's answer.
                for callback in self._input_callbacks:
                    callback()
            if retries:
                frames = retried_job_frames(ids, pickles, timeout, retries, retry_on, in_segments)
            else:
                frames = job_frames(ids, pickles, timeout, self.segments, in_segments)
            for data in frames:
                self._queue_bytes(data)
            return ids, self._queued_total

    def _store_oversized(self, pickles: Sequence[Pickled], first: int) -> set[int]:
        """Put the jobs too big for a frame in segments, before anything is
        queued; if one cannot be, remove those stored and raise (no job of the
        call is queued).  Returns the ids stored."""
        stored: set[int] = set()
        for index, pickled in enumerate(pickles):
            size = chunks_of(pickled)[1]
            if size <= MAX_PAYLOAD:
                continue
            if not self.segments.store(first + index, "j", pickled):
                for job_id in stored:
                    self.segments.discard(job_id)
                raise InvalidArgumentError(
                    f"job #{index} of this add_work() call pickles to {size} bytes: above the "
                    f"{MAX_PAYLOAD}-byte limit of a frame, and there is no room for it in /dev/shm "
                    "(or this backend shares no memory); no job was queued"
                )
            stored.add(first + index)
        return stored

    def forget_jobs(self, ids: Sequence[int]) -> None:
        """Undo the bookkeeping of jobs whose sending failed."""
        with self._cond:
            self.ledger.forget_jobs(ids)

    def queue_control(self, kind: Kind) -> int:
        """Queue a control frame; returns the send target."""
        self.check_owner()
        with self._cond:
            self._queue_bytes(encode(kind))
            return self._queued_total

    def _queue_bytes(self, data: bytes | bytearray | memoryview) -> None:
        self._out.append(data)
        self._queued_total += len(data)

    def _push(self) -> None:
        """Send what the socket takes now (lock held, never blocks)."""
        while self._out and not self._shut and self.ledger.sending:
            try:
                n = send_chunks(self._sock, self._out.chunks())
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # EPIPE, ECONNRESET: the Boss has closed its end
                self._lose_connection()
                return
            self._out.consume(n)
            self._sent_total += n

    def try_send(self, target: int) -> bool:
        """Send what the socket takes now; True once ``target`` bytes are out.

        Raises :class:`BossDiedError` if the Boss is gone, and
        :class:`ShutDownError` if the pool was shut down meanwhile."""
        with self._cond:
            self._push()
            if self._sent_total >= target:
                return True
            if self._shut or self.ledger.phase is Phase.CLOSED:
                raise ShutDownError("the pool was shut down before this work could be sent")
            if not self.ledger.sending:
                raise BossDiedError("the Boss process has died")
            return False

    def flush(self, target: int) -> None:
        """Block until the first ``target`` bytes ever queued have been sent."""
        while not self.try_send(target):
            fd = self.hold_fd()
            if fd is None:
                continue  # closed meanwhile: try_send says how
            try:
                # The Boss reads main's socket eagerly, so this wait is short
                # unless the Boss is gone: look at it now and then, never hang.
                _, writable, _ = select.select([], [fd], [], _LIVENESS_INTERVAL)
            finally:
                self.release_fd()
            if not writable and not self.handle.is_alive():
                self.lose_connection()
                raise BossDiedError("the Boss process has died")

    def add_jobs(
        self, pickles: Sequence[Pickled], timeout: float, retries: int = 0, retry_on: int = 0
    ) -> list[int]:
        """Send one JOB frame per payload; return their ids.

        Either every job is sent or :class:`BossDiedError` (or, if the pool
        is shut down meanwhile, :class:`ShutDownError`) is raised.
        """
        ids, target = self.queue_jobs(pickles, timeout, retries, retry_on)
        try:
            self.flush(target)
        except (BossDiedError, ShutDownError):
            self.forget_jobs(ids)
            raise
        return ids

    def send_control(self, kind: Kind) -> None:
        self.flush(self.queue_control(kind))

    # -- receiving -----------------------------------------------------------

    def lose_connection(self) -> None:
        """The Boss is gone: read what the socket still holds, then mark
        end-of-file."""
        with self._cond:
            self._lose_connection()

    def _lose_connection(self) -> None:
        # Lock held.  Results the Boss sent before it died may still sit in
        # the socket: declaring end-of-file before reading them would lose
        # them.  If another thread is the reader, it reads them (a read that
        # starts once the phase is LOST reads to the end, see _read).
        wake = self.ledger.lost()
        if not wake:
            return
        if not self._reading and not self._shut:
            self._reading = True
            try:
                self._read(0)
            finally:
                self._reading = False
        self._wake(wake)

    def _read(self, wait: float | None) -> None:
        """As the reader (the caller has set ``_reading``, which keeps the
        descriptor open): push out what is queued, wait up to ``wait``
        seconds (None: no limit) for input, then read and hand all that is
        there to the ledger.  The lock is not held, except by callers passing 0."""
        with self._cond:
            if self._shut or self.ledger.ended:
                return
            self._push()
            sending = self.wants_to_send
            waiting = wait != 0 and self.ledger.phase is not Phase.LOST
        if waiting:
            sock_fd = self._sock.fileno()
            nudge_fd = self._nudge_r.fileno()
            readable, writable, _ = select.select(
                [sock_fd, nudge_fd], [sock_fd] if sending else [], [], wait
            )
            if nudge_fd in readable:
                with contextlib.suppress(OSError):
                    self._nudge_r.recv(4096)
                readable.remove(nudge_fd)
            if not readable:
                if writable:
                    with self._cond:
                        self._push()
                return
        while True:
            # A pass that starts once the Boss is known to be gone finds all
            # it ever sent already in the socket: after it, end-of-file.
            final = self.ledger.phase is Phase.LOST
            frames, eof = self._recv_available()
            # The workers' and the Boss's logging records (LOG frames) are
            # not the ledger's: handed to logging below, outside the lock
            # (main's handlers must not run under it).
            logs = [bytes(f.payload) for f in frames if f.kind == Kind.LOG]
            if logs:
                frames = [f for f in frames if f.kind != Kind.LOG]
            with self._cond:
                wake = self.ledger.receive(frames, time.time()) if frames else Wake.NONE
                for job_id in self.ledger.take_orphans():
                    self.segments.discard(job_id)  # an abandoned map's answer: nobody will load it
                if (eof or final) and not self._shut:
                    wake |= self.ledger.end_of_file()
                self._wake(wake)
                leave = eof or final or self.ledger.phase is not Phase.LOST
            for payload in logs:
                logfwd.replay(payload)
            if leave:
                return

    def _recv_available(self) -> tuple[list[Frame], bool]:
        """Read and decode what the socket holds now; True if it said EOF."""
        return recv_frames(self._sock, self._decoder, drain=True)

    def wait_for(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Block until ``done()`` (evaluated with the lock held) is true, the
        deadline passes (False), or nothing more can be read (then ``done()``
        is asked once more).  The socket is read at least once, even if the
        deadline has passed already.  The caller holds the lock."""
        cond = self._cond
        looked = False
        while not done():
            if self.ledger.ended or self._shut:
                return done()
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._reading:
                if wait == 0:
                    return False  # the reader files what is there
                cond.wait(wait)
                continue
            if wait == 0 and looked:
                return False
            looked = True
            self._reading = True
            cond.release()
            try:
                self._read(wait)
            finally:
                cond.acquire()
                self._reading = False
                self._close_fd_if_unheld()
                cond.notify_all()
        return True

    def poll(self) -> None:
        """Send what is queued and read what is there, without waiting,
        unless a reader is already at work (then it will file what comes)."""
        with self._cond:
            self._push()
            if self._reading or self.ledger.ended or self._shut:
                return
            self._reading = True
        try:
            self._read(0)
        finally:
            with self._cond:
                self._reading = False
                self._close_fd_if_unheld()
                self._cond.notify_all()

    # -- results -------------------------------------------------------------

    def next_result(self, blocking: bool, timeout: float | None, cancelled: bool = False) -> Frame | None:
        """The next result frame, oldest first, or None (see get_result).

        With ``cancelled``, a job dropped by ``cancel_jobs(outcomes=True)`` comes
        first, as a frame of kind CANCEL_REPLY (get_outcome; never
        get_result)."""
        self.check_owner()
        ledger = self.ledger
        with self._cond:  # the common case: a result was read already
            if ledger.has_result(cancelled) and not ledger.forced:
                frame, wake = ledger.take_result(cancelled)
                self._wake(wake)
                return frame
        if not blocking:
            self.poll()
            with self._cond:
                if ledger.forced:
                    return None  # discarded, or about to be
                return self.result_or_verdict(must_be_pending=False, cancelled=cancelled)[0]
        deadline = None if timeout is None else time.monotonic() + timeout
        must_be_pending = timeout is None  # else work may still come from another thread
        with self._cond:
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
        with self._cond:
            frame, final, wake = self.ledger.result_or_verdict(must_be_pending, forced_before, cancelled)
            self._wake(wake)
            return frame, final

    def take_filed(self) -> list[Frame]:
        """Every result frame read and not taken yet, oldest first (no I/O;
        for a single consumer that takes them in batches: the Executor's
        collector).  Empty after a forced stop began."""
        with self._cond:
            frames, wake = self.ledger.take_all()
            self._wake(wake)
            return frames

    def take_record(self, job_id: int) -> JobRecord:
        """What main knows of taken job ``job_id`` (see :data:`JobRecord`)."""
        with self._cond:
            return self.ledger.take_record(job_id)

    def take_lane_record(self, lane: Lane, job_id: int) -> JobRecord:
        """:meth:`take_record` for a job of a ``Lane(records=True)``."""
        with self._cond:
            return self.ledger.take_lane_record(lane, job_id)

    # -- streams (BossWorkerAsync.map, close_input) ------------------------------

    def lane_frame_or_verdict(self, lane: Lane) -> tuple[Frame | None, bool]:
        """:meth:`MainLedger.lane_frame_or_verdict` under the lock (no I/O)."""
        with self._cond:
            return self.ledger.lane_frame_or_verdict(lane)

    def next_lane_frame(self, lane: Lane) -> Frame | None:
        """Block for the next answer of ``lane``; None if none is due."""
        self.check_owner()
        with self._cond:
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
        with self._cond:
            held, data = self.ledger.abandon_lane(lane)
            for frame in held:
                if frame.flags & Flag.SEGMENT:
                    self.segments.discard(frame.job_id)
            if not data:
                return
            self._queue_bytes(data)
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.poll()  # sent now if the socket takes them, else by the next call that sends

    def close_input(self) -> bool:
        """No more add_work. Returns False if input was already closed."""
        self.check_owner()
        with self._cond:
            changed = self.ledger.close_input()
            self._wake(Wake.INPUT)
            return changed

    def until_closed_step(self, take: bool = True, cancelled: bool = False) -> tuple[Frame | None, str]:
        """:meth:`MainLedger.until_closed_step` under the lock (no I/O)."""
        with self._cond:
            frame, step, wake = self.ledger.until_closed_step(take, cancelled)
            self._wake(wake)
            return frame, step

    def next_result_until_closed(self, cancelled: bool = False) -> Frame | None:
        """The next result frame; None once input is closed and every
        result was taken.  Until then, waits also while nothing is pending
        (for another thread's add_work or close_input), watching the socket
        all the while, so the Boss's death is noticed at once.
        ``cancelled``: as in :meth:`next_result`."""
        self.check_owner()
        ledger = self.ledger
        with self._cond:
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
        with self._cond:
            self.wait_for(lambda: self.ledger.started, None)
            return self.ledger.ready_verdict()

    def stats(self) -> dict[str, Any]:
        """Ask the Boss for its counters and wait for the answer."""
        self.check_owner()
        with self._cond:
            ticket = self.ledger.ask_stats()
            target = self.queue_control(Kind.STATS_REQUEST)
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.flush(target)  # if it cannot be sent, stats_result says why
        with self._cond:
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
        with self._cond:
            ticket, data = self.ledger.ask_cancel(job_ids, outcomes)
            if not data:
                return ticket.result()
            self._queue_bytes(data)
            target = self._queued_total
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.flush(target)  # if it cannot be sent, no reply comes: None
        with self._cond:
            self.wait_for(lambda: self.ledger.cancel_result(ticket) is not None, None)
            return ticket.result()

    def stop_accepting(self) -> bool:
        """No more add_work. Returns False if it had already stopped."""
        with self._cond:
            changed = self.ledger.stop_accepting()
            self._wake(Wake.INPUT)  # results(until_closed=True) ends with the pool's input
            return changed

    def drain(self) -> None:
        """Ask the Boss to finish, and read every result until its BYE."""
        with contextlib.suppress(BossDiedError, ShutDownError):
            self.send_control(Kind.SHUTDOWN)
        with self._cond:
            self.wait_for(lambda: self.bye, None)

    def discard_results(self) -> None:
        """Forget every result (after a forced stop: the Boss is gone)."""
        with self._cond:
            self.ledger.discard()
        self.segments.discard_all()

    def discard_orphan_segments(self) -> None:
        """After the Boss died: free every segment but those of results held here."""
        with self._cond:
            held = self.ledger.held_segments()
        self.segments.discard_all(keep_results=held)

    def begin_forced_stop(self) -> None:
        """``shut_down(force=True)`` begins: calls waiting for results or
        stats now raise :class:`ShutDownError`, not :class:`BossDiedError`."""
        with self._cond:
            self._wake(self.ledger.begin_forced_stop())

    def close(self) -> None:
        """Shut the socket down: every wait on it wakes up at once (event
        loops drop their registrations), and the descriptor is closed as
        soon as no wait uses it (see :meth:`hold_fd`)."""
        with self._cond:
            if self._shut:
                return
            self._shut = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._wake(self.ledger.closed())
            self._close_fd_if_unheld()

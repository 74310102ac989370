"""Main's side of the conversation with the Boss. It owns no threads.

Everything happens inside the calls the user makes: ``add_work`` writes
frames, ``get_result`` reads them.  The client is safe to use from several
threads at once (one thread adding work while another waits for results is
the common case):

* senders queue whole frames and flush them (see "sending" below); a
  sender never waits for a reader;
* reading follows the *leader/followers* pattern: the first thread that
  needs input becomes the reader, waits on the socket and files every frame
  it decodes (results, stats replies, BYE) where its owner will find it;
  the other threads wait on a condition variable and are woken after every
  read.  So a thread blocked in ``get_result()`` never hides a ``stats()``
  reply from another, and a waiter with a short timeout is never stuck
  behind one with a long one.

Whoever waits for input also pushes out what is queued to send (and watches
the socket for room while output is queued), so frames queued by a sender
that gave up (a cancelled ``aadd_work()``) are never stranded.

A closed socket without a BYE means the Boss died: every call that needs it
raises :class:`~bossworker.errors.BossDiedError` instead of waiting forever.
Before saying so, main reads what the socket still holds: results the Boss
sent before it died stay retrievable.  A forced stop is not a death: calls
waiting when ``shut_down(force=True)`` begins raise
:class:`~bossworker.errors.ShutDownError`.

Listeners (the asyncio front end, see :mod:`bossworker.aio`) are called after
every change a waiter may care about: results or replies filed, end-of-file,
a forced stop, the socket closing, the last pending result taken.
"""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from . import logfwd
from .backend import BossHandle, forget_main_socket
from .errors import (
    INPUT_CLOSED_ERROR,
    NOT_IMPORTABLE_HINT,
    BossDiedError,
    InputClosedError,
    InvalidArgumentError,
    NoPendingResultsError,
    SerializationError,
    ShutDownError,
    WorkerInitError,
)
from .jobs import frame_text, job_frames, retried_job_frames
from .payload import Pickled, Segments, chunks_of
from .portable import send_chunks
from .process import signal_description
from .protocol import (
    MAX_PAYLOAD,
    Decoder,
    Flag,
    Frame,
    InitFailure,
    Kind,
    SendQueue,
    encode,
    recv_frames,
)

__all__ = ["Client", "JobRecord", "Lane"]

#: What main knows of one answered job beyond its answer frame (see
#: :meth:`Client.take_record`): when it was queued (wall clock) and its time
#: limit, when its answer arrived, and the answers of the attempts that failed
#: and were retried (each with its arrival time).
JobRecord = tuple[float, float, float, list[tuple[float, Frame]]]

# While blocked on a full socket, look at the Boss process this often.
_LIVENESS_INTERVAL = 0.5


class Lane:
    """The answers to one stream's jobs (``BossWorkerAsync.map``), filed
    here instead of get_result()'s queue, so a map and get_result() never
    take each other's results.  Its jobs are not counted by ``pending``.
    Guarded by the client's lock."""

    __slots__ = ("abandoned", "frames", "outstanding", "queued", "received", "retried")

    def __init__(self, records: bool = False) -> None:
        self.frames: deque[Frame] = deque()  # answers read, oldest first
        self.outstanding = 0  # jobs sent whose answer has not been read
        self.abandoned = False  # nobody will take the answers: drop them
        # With ``records`` (a map of outcomes), what take_lane_record hands
        # out; kept here, not in the client, so they go with the lane.
        self.queued: dict[int, tuple[float, float]] | None = {} if records else None
        self.received: dict[int, float] = {}
        self.retried: dict[int, list[tuple[float, Frame]]] = {}


class Client:
    """A connected main-side endpoint: frames out, frames in, bookkeeping."""

    def __init__(self, sock: socket.socket, handle: BossHandle, read_size: int, segments: Segments) -> None:
        sock.setblocking(False)
        self.segments = segments
        self._sock = sock
        self.handle = handle
        self._decoder = Decoder(read_size)
        self._cond = threading.Condition()  # guards everything below (an RLock)
        self._out = SendQueue()  # frames queued for the Boss
        self._queued_total = 0  # bytes ever queued
        self._sent_total = 0  # bytes ever sent
        self._results: deque[Frame] = deque()
        self._reading = False  # a thread is the reader (leader)
        self._pending = 0
        self._next_id = 1  # the next job id; also 1 + the number of jobs added
        self._stats_asked = 0
        self._stats_replies: dict[int, dict[str, Any]] = {}
        self._stats_got = 0
        # CANCEL round trips: the Boss answers CANCELs in the order it got
        # them, so the n-th CANCEL_REPLY answers the n-th CANCEL sent.
        self._cancels_sent = 0
        self._cancel_replies: dict[int, bool] = {}  # reply number -> dropped
        self._cancels_got = 0
        # Jobs whose cancel() yields an outcome (get_outcome), once dropped.
        self._cancel_outcomes: set[int] = set()
        self._ready = False
        self._init_error: str | None = None
        self._init_failure = 0  # an InitFailure
        self._bye = False
        self._logs: deque[bytes] = deque()  # LOG payloads not yet handed to logging
        self._eof = False
        self._peer_gone = False  # the Boss is gone: what the socket holds is all that will come
        self._forced = False  # shut_down(force=True) has begun
        self._accepting = True  # add_work allowed
        self._closed = False  # socket shut down by us (the descriptor may live on, see close())
        self._fd_holds = 0  # waits that use the descriptor (see hold_fd)
        self._fd_closed = False
        self._listeners: list[Callable[[], None]] = []
        # Per-job details for outcomes, kept while a job is pending (popped
        # by take_record): (queued_at, time limit), one tuple shared by all
        # the jobs of an add_work call; when the answer arrived; the answers
        # of failed attempts that were retried.
        self._queued: dict[int, tuple[float, float]] = {}
        # False for an owner that never asks take_record (the Executor):
        # then no per-job record is kept at all.
        self.keep_records = True
        self._received: dict[int, float] = {}
        self._retried: dict[int, list[tuple[float, Frame]]] = {}
        # Jobs dropped by BossWorkerAsync.cancel(), for get_outcome()
        # (get_result() never sees them); when, in _received.
        self._cancelled: deque[int] = deque()
        self._routes: dict[int, Lane] = {}  # job id -> the Lane its answer goes to
        self._input_closed = False  # close_input() was called
        # Who waits for work to be added or input to be closed (see
        # next_result_until_closed): threads on the condition, asyncio
        # tasks through callbacks.  Told only when someone waits.
        self._input_waiters = 0
        self._input_callbacks: list[Callable[[], None]] = []

    # -- state ---------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Jobs added whose results have not been retrieved."""
        return self._pending

    @property
    def added(self) -> int:
        """Jobs sent to the Boss so far."""
        return self._next_id - 1

    @property
    def boss_died(self) -> bool:
        """The socket closed before the Boss said BYE."""
        return self._eof and not self._bye

    @property
    def eof_or_closed(self) -> bool:
        """Nothing more will ever be read."""
        return self._eof or self._closed

    @property
    def forced(self) -> bool:
        """``shut_down(force=True)`` has begun."""
        return self._forced

    @property
    def wants_to_send(self) -> bool:
        """Bytes are queued that the socket has not taken yet."""
        return bool(self._out) and not (self._closed or self._peer_gone)

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` after every change a waiter may care about.

        It is called from any thread, possibly with this client's lock held:
        it must not block, and must not wait for another thread that may
        need this client.
        """
        with self._cond:
            self._listeners.append(listener)

    def _wake_all(self) -> None:
        """Wake every waiter, blocking ones and listeners (lock held)."""
        self._cond.notify_all()
        for listener in self._listeners:
            listener()

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
            if self._closed:
                return None
            self._fd_holds += 1
            return self._sock.fileno()

    def release_fd(self) -> None:
        with self._cond:
            self._fd_holds -= 1
            self._close_fd_if_unheld()

    def _close_fd_if_unheld(self) -> None:
        if self._closed and self._fd_holds == 0 and not self._reading and not self._fd_closed:
            self._fd_closed = True
            forget_main_socket(self._sock)
            self._sock.close()

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
        with self._cond:
            if not self._accepting:
                raise ShutDownError("the pool has been shut down; it takes no more work")
            if self._input_closed:
                raise InputClosedError(INPUT_CLOSED_ERROR)
            if self._eof or self._peer_gone:
                raise BossDiedError("the Boss process has died")
            first = self._next_id
            in_segments = self._store_oversized(pickles, first)
            self._next_id += len(pickles)
            ids = list(range(first, first + len(pickles)))
            if lane is None:
                self._pending += len(pickles)
                if self.keep_records:
                    self._queued.update(dict.fromkeys(ids, (time.time(), timeout)))
                if self._input_waiters or self._input_callbacks:
                    self._input_changed()
            else:
                lane.outstanding += len(pickles)
                for job_id in ids:
                    self._routes[job_id] = lane
                if lane.queued is not None:
                    lane.queued.update(dict.fromkeys(ids, (time.time(), timeout)))
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

    def forget_jobs(self, count: int) -> None:
        """Undo the pending count of jobs whose sending failed."""
        with self._cond:
            if not self._forced:  # a forced stop has already set it to 0
                self._pending -= count

    def queue_control(self, kind: Kind) -> int:
        """Queue a control frame; returns the send target."""
        with self._cond:
            self._queue_bytes(encode(kind))
            return self._queued_total

    def _queue_bytes(self, data: bytes | bytearray | memoryview) -> None:
        self._out.append(data)
        self._queued_total += len(data)

    def _push(self) -> None:
        """Send what the socket takes now (lock held, never blocks)."""
        while self._out and not (self._closed or self._peer_gone):
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
            if self._closed:
                raise ShutDownError("the pool was shut down before this work could be sent")
            if self._peer_gone:
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

    def add_jobs(self, pickles: Sequence[Pickled], timeout: float) -> list[int]:
        """Send one JOB frame per payload; return their ids.

        Either every job is sent or :class:`BossDiedError` (or, if the pool
        is shut down meanwhile, :class:`ShutDownError`) is raised.
        """
        ids, target = self.queue_jobs(pickles, timeout)
        try:
            self.flush(target)
        except (BossDiedError, ShutDownError):
            self.forget_jobs(len(ids))
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
        # starts after _peer_gone is set reads to the end, see _read).
        if self._peer_gone:
            return
        self._peer_gone = True
        if not self._reading and not self._closed:
            self._reading = True
            try:
                self._read(0)
            finally:
                self._reading = False
        self._wake_all()

    def _file(self, frames: list[Frame]) -> None:
        """Put decoded frames where their readers look (lock held)."""
        now = time.time()
        for frame in frames:
            kind = frame.kind
            if kind in (Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT):
                lane = self._routes.pop(frame.job_id, None) if self._routes else None
                if lane is None:
                    self._results.append(frame)
                    if self.keep_records:
                        self._received[frame.job_id] = now
                else:
                    if lane.queued is not None and not lane.abandoned:
                        lane.received[frame.job_id] = now
                    self._file_in_lane(lane, frame)
            elif kind == Kind.RETRYING:
                lane = self._routes.get(frame.job_id) if self._routes else None
                if lane is None:
                    retried = self._retried
                elif lane.queued is not None and not lane.abandoned:
                    retried = lane.retried
                else:
                    continue  # nobody will ask for this job's attempts
                retried.setdefault(frame.job_id, []).append((now, Frame.parse(bytes(frame.payload))))
            elif kind == Kind.STATS:
                self._stats_got += 1
                self._stats_replies[self._stats_got] = json.loads(bytes(frame.payload))
            elif kind == Kind.CANCEL_REPLY:
                self._cancels_got += 1
                dropped = bytes(frame.payload) == b"\x01"
                lane = self._routes.get(frame.job_id) if self._routes else None
                if lane is not None:  # an abandoned map's job (cancel_lane): nobody waits for this reply
                    if dropped:
                        del self._routes[frame.job_id]
                        lane.outstanding -= 1  # no answer will come for it
                    continue
                self._cancel_replies[self._cancels_got] = dropped
                told = frame.job_id in self._cancel_outcomes
                if told:
                    self._cancel_outcomes.discard(frame.job_id)
                if dropped:
                    self._pending -= 1  # no result will ever come for it
                    self._retried.pop(frame.job_id, None)
                    if told:
                        # Filed by whoever reads, in the same step as the
                        # pending count, so a reader waiting for outcomes
                        # sees it before it waits again.
                        self._received[frame.job_id] = now
                        self._cancelled.append(frame.job_id)
                        self._input_changed()
                    else:
                        self._queued.pop(frame.job_id, None)
            elif kind == Kind.READY:
                self._ready = True
            elif kind == Kind.INIT_FAILED:
                self._init_error = frame_text(frame)
                self._init_failure = frame.job_id
            elif kind == Kind.BYE:
                self._bye = True
            elif kind == Kind.LOG:
                # Handed to logging by the reader once it lets go of the
                # lock (see _read): main's handlers must not run under it.
                self._logs.append(bytes(frame.payload))

    def _file_in_lane(self, lane: Lane, frame: Frame) -> None:
        lane.outstanding -= 1
        if not lane.abandoned:
            lane.frames.append(frame)
        elif frame.flags & Flag.SEGMENT:
            self.segments.discard(frame.job_id)  # nobody will load it

    def _read(self, wait: float | None) -> None:
        """As the reader (the caller has set ``_reading``, which keeps the
        descriptor open): push out what is queued, wait up to ``wait``
        seconds (None: no limit) for input, then read and file all that is
        there.  The lock is not held, except by callers passing 0."""
        with self._cond:
            if self._closed or self._eof:
                return
            self._push()
            sending = self.wants_to_send
            waiting = wait != 0 and not self._peer_gone
        if waiting:
            readable, writable, _ = select.select([self._sock], [self._sock] if sending else [], [], wait)
            if not readable:
                if writable:
                    with self._cond:
                        self._push()
                return
        while True:
            # A pass that starts once the Boss is known to be gone finds all
            # it ever sent already in the socket: after it, end-of-file.
            final = self._peer_gone
            frames, eof = self._recv_available()
            with self._cond:
                self._file(frames)
                if (eof or final) and not self._closed:
                    self._eof = True
                if frames or self._eof:
                    self._wake_all()
                leave = eof or final or not self._peer_gone
            logs = self._logs
            while logs:  # the workers' and the Boss's logging records
                logfwd.replay(logs.popleft())
            if leave:
                return

    def _recv_available(self) -> tuple[list[Frame], bool]:
        """Read and decode what the socket holds now; True if it said EOF."""
        return recv_frames(self._sock, self._decoder, drain=True)

    def wait_for(self, done: Callable[[], bool], deadline: float | None) -> bool:
        """Block until ``done()`` (evaluated with the lock held) is true, the
        deadline passes (False), or the socket closes (then ``done()`` is
        asked once more).  The socket is read at least once, even if the
        deadline has passed already.  The caller holds the lock."""
        cond = self._cond
        looked = False
        while not done():
            if self._eof or self._closed:
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
            if self._reading or self._eof or self._closed:
                return
            self._reading = True
        try:
            self._read(0)
        finally:
            with self._cond:
                self._reading = False
                self._close_fd_if_unheld()
                self._cond.notify_all()

    def next_result(self, blocking: bool, timeout: float | None, cancelled: bool = False) -> Frame | None:
        """The next result frame, oldest first, or None (see get_result).

        With ``cancelled``, a job dropped by ``cancel_jobs(outcomes=True)`` comes
        first, as a frame of kind CANCEL_REPLY (get_outcome; never
        get_result)."""
        with self._cond:  # the common case: a result was read already
            if (self._results or (cancelled and self._cancelled)) and not self._forced:
                return self._take_result(cancelled)
        if not blocking:
            self.poll()
            with self._cond:
                if self._forced:
                    return None  # discarded, or about to be
                frame, _final = self.result_or_verdict(must_be_pending=False, cancelled=cancelled)
                return frame  # None, or BossDiedError if the Boss died with results due
        deadline = None if timeout is None else time.monotonic() + timeout
        must_be_pending = timeout is None  # else work may still come from another thread
        with self._cond:  # re-entrant: result_or_verdict takes it again
            forced_before = self._forced
            while True:
                frame, final = self.result_or_verdict(must_be_pending, forced_before, cancelled)
                if frame is not None or final:
                    return frame
                self.wait_for(
                    lambda: (
                        bool(self._results)
                        or (cancelled and bool(self._cancelled))
                        or (self._forced and not forced_before)
                        or (must_be_pending and self._pending == 0)
                    ),
                    deadline,
                )
                if deadline is not None and time.monotonic() >= deadline:
                    return self.result_or_verdict(False, forced_before, cancelled)[0]

    def _take_result(self, cancelled: bool = False) -> Frame:
        if cancelled and self._cancelled:
            return Frame(Kind.CANCEL_REPLY, 0, self._cancelled.popleft(), 0.0, b"")
        self._pending -= 1
        if self._pending == 0:
            self._wake_all()  # waiters with nothing left to wait for must say so
        return self._results.popleft()

    @property
    def cancelled_waiting(self) -> int:
        """Cancelled jobs whose outcome get_outcome has not handed out yet."""
        return len(self._cancelled)

    def take_filed(self) -> list[Frame]:
        """Every result frame read and not taken yet, oldest first (no I/O;
        for a single consumer that takes them in batches: the Executor's
        collector).  Empty after a forced stop began."""
        with self._cond:
            if not self._results or self._forced:
                return []
            frames = list(self._results)
            self._results.clear()
            self._pending -= len(frames)
            if self._pending == 0:
                self._wake_all()
            return frames

    def take_record(self, job_id: int) -> JobRecord:
        """What main knows of answered job ``job_id`` (see :data:`JobRecord`),
        forgotten here.  Whoever takes a result frame calls this once."""
        with self._cond:
            queued_at, limit = self._queued.pop(job_id, (0.0, 0.0))
            received = self._received.pop(job_id, 0.0)
            retried = self._retried.pop(job_id, []) if self._retried else []
        return queued_at, limit, received, retried

    def take_lane_record(self, lane: Lane, job_id: int) -> JobRecord:
        """:meth:`take_record` for a job of a ``Lane(records=True)``."""
        with self._cond:
            queued_at, limit = lane.queued.pop(job_id, (0.0, 0.0)) if lane.queued is not None else (0.0, 0.0)
            return queued_at, limit, lane.received.pop(job_id, 0.0), lane.retried.pop(job_id, [])

    def result_or_verdict(
        self, must_be_pending: bool, forced_before: bool = False, cancelled: bool = False
    ) -> tuple[Frame | None, bool]:
        """A result already read, if any (no I/O), and whether waiting is
        pointless (the socket is closed).  With ``must_be_pending`` (a wait
        without a time limit), raise rather than return (None, True).

        Raises :class:`ShutDownError` once a forced stop has begun, unless
        it had begun before this call (``forced_before``) and nothing is
        pending any more; :class:`NoPendingResultsError` when
        ``must_be_pending`` and nothing is pending; :class:`BossDiedError`
        when the Boss died with results due."""
        with self._cond:
            if self._forced and (self._pending > 0 or not forced_before):
                raise ShutDownError(
                    "the pool was stopped with shut_down(force=True); its unretrieved results were discarded"
                )
            if self._results or (cancelled and self._cancelled):
                return self._take_result(cancelled), True
            if must_be_pending and self._pending == 0:
                raise NoPendingResultsError("no results are pending: get_result() would wait forever")
            if self._eof or self._closed:
                if self._pending > 0 and (self.boss_died or must_be_pending):
                    raise BossDiedError(f"the Boss process has died with {self._pending} result(s) pending")
                return None, True
            return None, False

    # -- streams (BossWorkerAsync.map, close_input) ------------------------------

    def lane_frame_or_verdict(self, lane: Lane) -> tuple[Frame | None, bool]:
        """The next answer filed in ``lane`` (no I/O), and whether waiting is
        over: True with None when the lane has nothing more to come.  Raises
        if answers are due that can never come (Boss died, pool closed)."""
        with self._cond:
            if lane.frames:
                return lane.frames.popleft(), True
            if lane.outstanding == 0:
                return None, True
            if self._eof or self._closed:
                if self.boss_died:
                    raise BossDiedError(
                        f"the Boss process has died with {lane.outstanding} result(s) of this map() due"
                    )
                raise ShutDownError(
                    f"the pool was shut down (force=True) with {lane.outstanding} result(s) of this map() due"
                )
            return None, False

    def next_lane_frame(self, lane: Lane) -> Frame | None:
        """Block for the next answer of ``lane``; None if none is due."""
        with self._cond:
            while True:
                frame, final = self.lane_frame_or_verdict(lane)
                if frame is not None or final:
                    return frame
                self.wait_for(lambda: bool(lane.frames) or lane.outstanding == 0, None)

    def abandon_lane(self, lane: Lane) -> None:
        """Nobody will take ``lane``'s answers: drop those read and those to
        come, and ask the Boss to drop its jobs that have not started (one
        CANCEL each, sent without waiting for the replies: a job a worker
        has already runs to its end, and its answer is dropped)."""
        with self._cond:
            lane.abandoned = True
            while lane.frames:
                frame = lane.frames.popleft()
                if frame.flags & Flag.SEGMENT:
                    self.segments.discard(frame.job_id)
            if lane.outstanding == 0 or self._eof or self._closed or self._peer_gone:
                return
            waiting = [job_id for job_id, owner in self._routes.items() if owner is lane]
            # Counted as sent, so the replies to later cancel_jobs() calls
            # keep their numbers; _file drops these replies by their route.
            self._cancels_sent += len(waiting)
            for job_id in waiting:
                self._queue_bytes(encode(Kind.CANCEL, job_id))
        with contextlib.suppress(BossDiedError):
            self.poll()  # sent now if the socket takes them, else by the next call that sends

    @property
    def input_closed(self) -> bool:
        """No more work will be added: close_input() or a shut-down."""
        return self._input_closed or not self._accepting

    def close_input(self) -> bool:
        """No more add_work. Returns False if input was already closed."""
        with self._cond:
            was, self._input_closed = self._input_closed, True
            self._input_changed()
            return not was

    def _input_changed(self) -> None:
        """Wake whoever waits for work or the end of input (lock held)."""
        self._cond.notify_all()
        for callback in self._input_callbacks:
            callback()

    def watch_input(self, callback: Callable[[], None], watch: bool = True) -> None:
        """Have ``callback`` called (lock held, so it must only schedule
        work) whenever work is added or input closes; ``watch=False`` stops."""
        with self._cond:
            if watch:
                self._input_callbacks.append(callback)
            else:
                self._input_callbacks.remove(callback)

    def until_closed_step(self, take: bool = True, cancelled: bool = False) -> tuple[Frame | None, str]:
        """What ``results(until_closed=True)`` does next, with no I/O: a
        result to deliver (``"frame"``; taken only with ``take``), stop
        (``"end"``: input closed and nothing pending), wait for the socket
        (``"read"``: results are due) or wait for work or close_input()
        (``"input"``).  With ``cancelled`` (outcomes), the marker of a job
        cancel() dropped counts as a result."""
        with self._cond:
            if self._results or (cancelled and self._cancelled):
                return (self._take_result(cancelled) if take else None), "frame"
            if self._pending == 0:
                if self.input_closed:
                    return None, "end"
                if self._eof or self._closed:
                    raise BossDiedError("the Boss process has died: no more work can be added")
                return None, "input"
            frame, final = self.result_or_verdict(must_be_pending=False)
            if frame is not None:
                return frame, "frame"
            return None, "end" if final else "read"

    def next_result_until_closed(self, cancelled: bool = False) -> Frame | None:
        """The next result frame; None once input is closed and every
        result was taken.  Until then, waits also while nothing is pending
        (for another thread's add_work or close_input).  ``cancelled``: as
        in :meth:`next_result`."""
        with self._cond:
            while True:
                frame, step = self.until_closed_step(cancelled=cancelled)
                if step == "frame" or step == "end":
                    return frame
                if step == "input":
                    self._input_waiters += 1
                    try:
                        self._cond.wait()
                    finally:
                        self._input_waiters -= 1
                else:
                    self.wait_for(
                        lambda: (
                            bool(self._results) or (cancelled and bool(self._cancelled)) or self._pending == 0
                        ),
                        None,
                    )

    @property
    def bye(self) -> bool:
        """The Boss said every answer was sent."""
        return self._bye

    # -- start-up, stats, shut-down ---------------------------------------------

    def wait_ready(self, start_method: str) -> None:
        """Block until the Boss says a worker is serving; raise with the cause
        the Boss or a worker reported if none can."""
        with self._cond:
            self.wait_for(lambda: self._ready or self._init_error is not None, None)
            text = self._init_error
            if text is None and not self._ready:
                self.handle.join(1.0)  # its socket is closed: it is exiting
                status = signal_description(getattr(self.handle, "exitcode", None))
                raise BossDiedError(f"the Boss process died while starting ({status})")
        if text is None:
            return
        if self._init_failure == InitFailure.NOT_IMPORTABLE:
            head, _, rest = text.partition("\n")
            hint = NOT_IMPORTABLE_HINT.format(method=start_method)
            raise SerializationError(f"a new process could not import the handlers: {head}\n{hint}\n{rest}")
        if self._init_failure == InitFailure.BOSS:
            raise BossDiedError(f"the Boss process failed while starting: {text}")
        raise WorkerInitError(f"no worker could start:\n{text}")

    def stats(self) -> dict[str, Any]:
        """Ask the Boss for its counters and wait for the answer."""
        with self._cond:
            if self._eof or self._peer_gone:
                raise BossDiedError("the Boss process has died")
            if not self._accepting:
                raise ShutDownError("the pool has been shut down")
            self._stats_asked += 1
            mine = self._stats_asked
        self.send_control(Kind.STATS_REQUEST)
        with self._cond:
            self.wait_for(lambda: mine in self._stats_replies or self._forced, None)
            if mine in self._stats_replies:
                return self._stats_replies.pop(mine)
            if self._forced or (self._closed and not self._eof):
                raise ShutDownError("the pool was shut down before the Boss answered")
            raise BossDiedError("the Boss process died before it answered")

    def cancel_jobs(self, job_ids: Sequence[int], outcomes: bool = False) -> list[bool | None]:
        """Ask the Boss to drop these jobs if they still wait in its queue.

        One round trip for the lot; returns, in order, True for each job
        dropped (it will never be answered and no longer counts as pending),
        False for one the Boss did not drop (a worker has it, it is done, or
        the id is unknown), and None where no answer came because the Boss
        is gone or the pool was closed.  Allowed after :meth:`stop_accepting`: cancelling is how a
        shutdown drops queued work.  With ``outcomes``, each dropped job
        also yields a cancelled marker to ``next_result(cancelled=True)``,
        filed when the reply is read (so no waiter can miss it).
        """
        with self._cond:
            # A map's job is the map's own (its lane counts on its answer):
            # never dropped from here.
            in_a_map = [job_id in self._routes for job_id in job_ids]
            asked = [job_id for job_id, mapped in zip(job_ids, in_a_map, strict=True) if not mapped]
            if not asked:
                return [False] * len(job_ids)
            if self._eof or self._closed:
                return [None] * len(job_ids)
            first = self._cancels_sent + 1
            self._cancels_sent += len(asked)
            last = self._cancels_sent
            for job_id in asked:
                self._queue_bytes(encode(Kind.CANCEL, job_id))
            if outcomes:
                self._cancel_outcomes.update(asked)
            target = self._queued_total
        try:
            self.flush(target)
        except BossDiedError:
            return [None] * len(job_ids)
        with self._cond:
            self.wait_for(lambda: self._cancels_got >= last, None)
            replies = iter([self._cancel_replies.pop(n, None) for n in range(first, last + 1)])
            return [False if mapped else next(replies) for mapped in in_a_map]

    def stop_accepting(self) -> bool:
        """No more add_work. Returns False if it had already stopped."""
        with self._cond:
            was, self._accepting = self._accepting, False
            self._input_changed()  # results(until_closed=True) ends with the pool's input
            return was

    def drain(self) -> None:
        """Ask the Boss to finish, and read every result until its BYE."""
        with contextlib.suppress(BossDiedError):
            self.send_control(Kind.SHUTDOWN)
        with self._cond:
            self.wait_for(lambda: self._bye, None)

    def discard_results(self) -> None:
        """Forget every result (after a forced stop: the Boss is gone)."""
        with self._cond:
            self._results.clear()
            self._pending = 0
            self._queued.clear()
            self._received.clear()
            self._retried.clear()
            self._cancelled.clear()
            self._cancel_outcomes.clear()
        self.segments.discard_all()

    def discard_orphan_segments(self) -> None:
        """After the Boss died: free every segment but those of results held here."""
        with self._cond:
            held = frozenset(f.job_id for f in self._results if f.flags & Flag.SEGMENT)
        self.segments.discard_all(keep_results=held)

    def begin_forced_stop(self) -> None:
        """``shut_down(force=True)`` begins: calls waiting for results or
        stats now raise :class:`ShutDownError`, not :class:`BossDiedError`."""
        with self._cond:
            self._forced = True
            self._wake_all()

    def close(self) -> None:
        """Shut the socket down: every wait on it wakes up at once (event
        loops drop their registrations), and the descriptor is closed as
        soon as no wait uses it (see :meth:`hold_fd`)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._wake_all()
            self._close_fd_if_unheld()

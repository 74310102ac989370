"""Main's connection to the Boss: the moving of bytes and the waiting of the
blocking driver of the main ledger.

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

What the facades call (a result, a map's next answer, stats, cancel, the
stop) is :class:`~bossworker.client.Client`, a :class:`Connection` whose
methods are each one ledger step plus a wait done here.

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

from . import logfwd
from .backend import BossHandle, forget_main_socket
from .errors import (
    BossDiedError,
    InvalidArgumentError,
    ShutDownError,
    WrongProcessError,
)
from .jobs import job_frames, retried_job_frames
from .ledger import Lane, MainLedger, Phase, Wake
from .payload import Pickled, Segments, chunks_of
from .portable import send_chunks
from .protocol import MAX_PAYLOAD, Decoder, Frame, Kind, SendQueue, encode, recv_frames

__all__ = ["Connection", "check_owner"]

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


class Connection:
    """A connected main-side endpoint: frames out, frames in; the ledger keeps the books.

    :attr:`lock` guards everything here and the ledger; :meth:`wake` wakes
    whom a ledger step named; :meth:`queue_bytes` queues frames to send."""

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
        self.lock = threading.Condition()  # guards everything below and the ledger (an RLock)
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

    # -- state -------------------------------------------------------------

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
        with self.lock:
            self._listeners.append(listener)

    def watch_input(self, callback: Callable[[], None], watch: bool = True) -> None:
        """Have ``callback`` called (lock held, so it must only schedule
        work) whenever work is added or input closes; ``watch=False`` stops."""
        with self.lock:
            if watch:
                self._input_callbacks.append(callback)
            else:
                self._input_callbacks.remove(callback)

    def wake(self, wake: Wake) -> None:
        """Wake whom the ledger named (lock held)."""
        if not wake:
            return
        self.lock.notify_all()
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
        with self.lock:
            if self._shut:
                return None
            self._fd_holds += 1
            return self._sock.fileno()

    def release_fd(self) -> None:
        with self.lock:
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
        with self.lock:
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
                self.queue_bytes(data)
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
        with self.lock:
            self.ledger.forget_jobs(ids)

    def queue_control(self, kind: Kind) -> int:
        """Queue a control frame; returns the send target."""
        self.check_owner()
        with self.lock:
            self.queue_bytes(encode(kind))
            return self._queued_total

    def queue_bytes(self, data: bytes | bytearray | memoryview) -> int:
        """Queue bytes for the Boss (lock held); returns the send target
        to pass to :meth:`flush`."""
        self._out.append(data)
        self._queued_total += len(data)
        return self._queued_total

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
        with self.lock:
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
        with self.lock:
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
        self.wake(wake)

    def _read(self, wait: float | None) -> None:
        """As the reader (the caller has set ``_reading``, which keeps the
        descriptor open): push out what is queued, wait up to ``wait``
        seconds (None: no limit) for input, then read and hand all that is
        there to the ledger.  The lock is not held, except by callers passing 0."""
        with self.lock:
            if self._shut or self.ledger.ended:
                return
            self._push()
            sending = self.wants_to_send
            waiting = wait != 0 and self.ledger.phase is not Phase.LOST
        if waiting:
            sock_fd = self._sock.fileno()
            nudge_fd = self._nudge_r.fileno()
            readable, writable, _ = select.select([sock_fd, nudge_fd], [sock_fd] if sending else [], [], wait)
            if nudge_fd in readable:
                with contextlib.suppress(OSError):
                    self._nudge_r.recv(4096)
                readable.remove(nudge_fd)
            if not readable:
                if writable:
                    with self.lock:
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
            with self.lock:
                wake = self.ledger.receive(frames, time.time()) if frames else Wake.NONE
                for job_id in self.ledger.take_orphans():
                    self.segments.discard(job_id)  # an abandoned map's answer: nobody will load it
                if (eof or final) and not self._shut:
                    wake |= self.ledger.end_of_file()
                self.wake(wake)
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
        cond = self.lock
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
        with self.lock:
            self._push()
            if self._reading or self.ledger.ended or self._shut:
                return
            self._reading = True
        try:
            self._read(0)
        finally:
            with self.lock:
                self._reading = False
                self._close_fd_if_unheld()
                self.lock.notify_all()

    def close(self) -> None:
        """Shut the socket down: every wait on it wakes up at once (event
        loops drop their registrations), and the descriptor is closed as
        soon as no wait uses it (see :meth:`hold_fd`)."""
        with self.lock:
            if self._shut:
                return
            self._shut = True
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self.wake(self.ledger.closed())
            self._close_fd_if_unheld()

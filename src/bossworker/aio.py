"""The asyncio driver: wait for main's socket in the event loop, not a thread.

The asyncio twins share everything with the blocking API: the same
:class:`~bossworker.client.Client` (socket, send queue, decoder) and the same
:class:`~bossworker.ledger.MainLedger` step decide every answer; this module
only replaces the places where the blocking driver waits in ``select()``.

Who wakes whom::

    event loop A (thread 1)            event loop B (thread 2)
      _LoopWatch: add_reader(fd),        _LoopWatch: add_reader(fd),
      add_writer(fd) while output        ...
      is queued; futures of the
      tasks waiting in this loop
             ^                                  ^
             | directly (same thread)           | call_soon_threadsafe
             +------------ SocketWaiter._on_change <---- Client listener:
                                   results filed, end-of-file, forced stop,
                                   socket closed, last pending result taken

* Each loop that has tasks waiting on a pool gets its own registration
  (:class:`_LoopWatch`), made and removed in that loop's thread, by the
  descriptor number remembered when it was made.  The registration holds
  the descriptor open (:meth:`Client.hold_fd`), so its number cannot be
  reused by the next socket while the loop still watches it.
* Whoever reads frames (a task, a loop callback, a blocking thread) makes
  the client call its listeners, and every waiting task in every loop is
  woken to look again: no task sleeps while its result sits in the queue.
* A task registers its future *before* it looks at the queue, so a wake-up
  that comes between the look and the sleep is never lost.

Cancelling a task that waits changes nothing but the waiter set: results
already read stay queued and ``pending()`` stays exact.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from .client import Client
from .errors import BossDiedError
from .protocol import Frame

__all__ = ["SocketWaiter", "aflush", "anext_result", "await_condition"]

_LIVENESS_INTERVAL = 0.5


class SocketWaiter:
    """Wakes the asyncio tasks that wait on one pool's socket, in any number
    of event loops (one :class:`_LoopWatch` per loop with waiters)."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._lock = threading.Lock()  # guards _watches; never held while calling the client
        self._watches: dict[asyncio.AbstractEventLoop, _LoopWatch] = {}
        client.add_listener(self._on_change)

    def enter(self) -> tuple[_LoopWatch, asyncio.Future[None]]:
        """Register a future that is woken by the next change (call in the
        running loop, then :meth:`_LoopWatch.leave` it in a ``finally``)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            watch = self._watches.get(loop)
            if watch is None:
                watch = self._watches[loop] = _LoopWatch(self, self._client, loop)
        return watch, watch.add_waiter()

    async def wait(self, timeout: float | None) -> None:
        """Return once something changed (frames read, the socket closed,
        output to send, a forced stop), or after ``timeout`` seconds."""
        watch, fut = self.enter()
        try:
            await _sleep_on(fut, timeout)
        finally:
            watch.leave(fut)

    def _forget(self, watch: _LoopWatch) -> None:
        with self._lock:
            if self._watches.get(watch.loop) is watch:
                del self._watches[watch.loop]

    def _on_change(self) -> None:
        # Any thread, perhaps with the client's lock held: wake this
        # thread's own loop now, the others through their call_soon_threadsafe.
        with self._lock:
            watches = list(self._watches.values())
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for watch in watches:
            if watch.loop is running:
                watch.wake()
            else:
                watch.wake_threadsafe()


class _LoopWatch:
    """One event loop's registration on one pool's socket, and the futures
    of the tasks waiting there.  Used only in that loop's thread, except
    :meth:`wake_threadsafe`."""

    def __init__(self, owner: SocketWaiter, client: Client, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._owner = owner
        self._client = client
        self._futures: set[asyncio.Future[None]] = set()
        self._fd: int | None = None  # the descriptor we hold and are registered on
        self._reading = False
        self._writing = False
        self._wake_scheduled = False  # guarded by owner._lock

    def add_waiter(self) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self._futures.add(fut)
        self._update()
        return fut

    def leave(self, fut: asyncio.Future[None]) -> None:
        self._futures.discard(fut)
        self._update()

    def wake(self) -> None:
        """Wake every task waiting in this loop, and watch for what they need now."""
        for fut in self._futures:
            _wake(fut)
        self._update()

    def wake_threadsafe(self) -> None:
        with self._owner._lock:
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._scheduled_wake)
        except RuntimeError:  # the loop is closed, and its selector with it
            self._abandon()

    def _scheduled_wake(self) -> None:
        with self._owner._lock:
            self._wake_scheduled = False
        self.wake()

    def _on_event(self) -> None:
        """The socket is readable, or writable while output is queued."""
        self._client.poll()
        self.wake()

    def _update(self) -> None:
        """Register for what the waiters need, and for nothing else.

        Reading while tasks wait and input may still come (end-of-file stays
        readable: watching it would spin); writing while output is queued.
        """
        client = self._client
        want_read = bool(self._futures) and not client.eof_or_closed
        want_write = want_read and client.wants_to_send
        if (want_read or want_write) and self._fd is None:
            self._fd = client.hold_fd()
            if self._fd is None:  # closed meanwhile
                want_read = want_write = False
        fd = self._fd
        if fd is not None:
            if want_read != self._reading:
                if want_read:
                    self.loop.add_reader(fd, self._on_event)
                else:
                    self.loop.remove_reader(fd)
                self._reading = want_read
            if want_write != self._writing:
                if want_write:
                    self.loop.add_writer(fd, self._on_event)
                else:
                    self.loop.remove_writer(fd)
                self._writing = want_write
            if not (self._reading or self._writing):
                self._fd = None
                client.release_fd()  # after the removal: the number may be reused now
        if not self._futures:
            self._owner._forget(self)

    def _abandon(self) -> None:
        # The loop was closed with tasks still waiting here: nothing will
        # ever run in it again, so give the descriptor back.
        self._owner._forget(self)
        if self._fd is not None:
            self._fd = None
            self._reading = self._writing = False
            self._client.release_fd()


async def _sleep_on(fut: asyncio.Future[None], timeout: float | None) -> bool:
    """Wait for ``fut`` up to ``timeout`` seconds; False if the time ran out."""
    if timeout is None:
        await fut
        return True
    expired = False

    def expire() -> None:
        nonlocal expired
        if not fut.done():
            expired = True
            fut.set_result(None)

    timer = fut.get_loop().call_later(timeout, expire)
    try:
        await fut
    finally:
        timer.cancel()
    return not expired


async def anext_result(
    client: Client, waiter: SocketWaiter, blocking: bool, timeout: float | None, cancelled: bool = False
) -> Frame | None:
    """The asyncio twin of :meth:`Client.next_result`."""
    if not blocking:
        return client.next_result(blocking=False, timeout=None, cancelled=cancelled)
    deadline = None if timeout is None else time.monotonic() + timeout
    must_be_pending = timeout is None
    forced_before = client.forced
    while True:
        client.poll()
        frame, final = client.result_or_verdict(must_be_pending, forced_before, cancelled)
        if frame is not None or final:
            return frame
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        watch, fut = waiter.enter()
        try:
            # Look again now that no wake-up can be missed.
            frame, final = client.result_or_verdict(must_be_pending, forced_before, cancelled)
            if frame is not None or final:
                return frame
            await _sleep_on(fut, remaining)
        finally:
            watch.leave(fut)


async def await_condition(client: Client, waiter: SocketWaiter, done: Callable[[], bool]) -> None:
    """Read input until ``done()`` is true or the socket closes."""
    while True:
        client.poll()
        if done() or client.eof_or_closed:
            return
        watch, fut = waiter.enter()
        try:
            if done() or client.eof_or_closed:
                return
            await fut
        finally:
            watch.leave(fut)


async def aflush(client: Client, waiter: SocketWaiter, target: int) -> None:
    """The asyncio twin of :meth:`Client.flush`: the loop's watch pushes
    queued output out whenever the socket has room."""
    while not client.try_send(target):
        watch, fut = waiter.enter()
        try:
            if client.try_send(target):
                return
            if not await _sleep_on(fut, _LIVENESS_INTERVAL) and not client.handle.is_alive():
                client.lose_connection()
                raise BossDiedError("the Boss process has died")
        finally:
            watch.leave(fut)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

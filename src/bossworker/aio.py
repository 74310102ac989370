"""asyncio support: wait for main's socket in the event loop, not a thread.

The asyncio front end shares everything with the blocking API (the same
:class:`~bossworker.client.Client`, decoder, result queue and counters); it
only replaces the two places where the blocking API waits in ``select()``:

* waiting for input: :class:`SocketWaiter` registers one ``add_reader``
  callback for all the tasks waiting on a pool, reads what is there when it
  fires, and wakes every waiting task to look again;
* waiting for room to send: :func:`aflush` awaits ``add_writer``.

Cancelling a task that waits changes nothing but the waiter set: results
already read stay queued and ``pending()`` stays exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .client import Client
from .errors import BossDiedError
from .protocol import Frame

__all__ = ["SocketWaiter", "aflush", "anext_result", "await_condition"]

_LIVENESS_INTERVAL = 0.5


class SocketWaiter:
    """Wakes the asyncio tasks that wait for input from one pool's Boss."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self, timeout: float | None) -> None:
        """Return when input was read (or the socket closed), or after ``timeout``."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if not self._waiters:
            loop.add_reader(self._client.fileno(), self._on_readable)
            self._loop = loop
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(fut)
            if not self._waiters and self._loop is not None:
                self._loop.remove_reader(self._client.fileno())
                self._loop = None

    def _on_readable(self) -> None:
        self._client.poll()
        for fut in self._waiters:
            _wake(fut)
        if self._client.eof_or_closed and self._loop is not None:
            # End-of-file stays readable: stop listening, or we would spin.
            self._loop.remove_reader(self._client.fileno())
            self._loop = None


async def anext_result(
    client: Client, waiter: SocketWaiter, blocking: bool, timeout: float | None, cancelled: bool = False
) -> Frame | None:
    """The asyncio twin of :meth:`Client.next_result`."""
    if not blocking:
        return client.next_result(blocking=False, timeout=None, cancelled=cancelled)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        client.poll()
        frame, final = client.result_or_verdict(must_be_pending=timeout is None, cancelled=cancelled)
        if frame is not None or final:
            return frame
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return None
        await waiter.wait(remaining)


async def await_condition(client: Client, waiter: SocketWaiter, done: Callable[[], bool]) -> None:
    """Read input until ``done()`` is true or the socket closes."""
    while True:
        client.poll()
        if done() or client.eof_or_closed:
            return
        await waiter.wait(None)


async def aflush(client: Client, target: int) -> None:
    """The asyncio twin of :meth:`Client.flush`."""
    loop = asyncio.get_running_loop()
    fd = client.fileno()
    while not client.try_send(target):
        fut: asyncio.Future[None] = loop.create_future()
        loop.add_writer(fd, _wake, fut)
        try:
            await asyncio.wait_for(fut, _LIVENESS_INTERVAL)
        except TimeoutError:
            if not client.handle.is_alive():
                client.mark_eof()
                raise BossDiedError("the Boss process has died") from None
        finally:
            loop.remove_writer(fd)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

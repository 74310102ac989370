"""What differs between platforms, in one place: the portable engine path.

On Linux (and the other POSIX systems) the engine uses what the platform
offers: ``sendmsg`` for scatter-gather writes, a ``selectors`` loop over
sockets and process sentinels in the Boss, ``SIGALRM`` to interrupt a job
at its deadline, ``os.register_at_fork`` to notice a handler's fork.

Windows has none of these.  The *portable path* does without them:

* writes go out one buffer per ``send`` call (:func:`send_chunks`);
* the Boss waits with :func:`multiprocessing.connection.wait`, which on
  Windows waits on sockets and process handles together
  (:class:`PortableSelector`);
* there is no worker-side alarm: a job past its deadline is stopped by the
  Boss killing its worker (the answer is the same ``timed out`` ERROR);
* there is no fork to watch for.

The portable path is taken on Windows, and anywhere when the environment
variable ``BOSSWORKER_PORTABLE=1`` is set in main before the pool starts
(children inherit it): CI runs the behaviour suite a second time that way
on Linux, so the path cannot rot without a Windows machine.
"""

from __future__ import annotations

import os
import select
import selectors
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from multiprocessing.connection import wait as _mp_wait
from typing import Any

from .protocol import Buffer

__all__ = [
    "HAS_ALARM",
    "PORTABLE",
    "LateSocket",
    "PortableSelector",
    "make_selector",
    "send_chunks",
    "socket_for_child",
    "watch_forks",
]


class LateSocket:
    """A socket handed to a spawned child, opened by the child's own code.

    Under ``spawn`` on Windows a socket travels through multiprocessing's
    resource sharer: the child fetches it from a thread of its parent while
    multiprocessing's bootstrap unpickles the Process arguments, before any
    code of ours runs.  If the parent (the Boss) was stopped meanwhile, as a
    forced stop does to a Boss that is starting a worker, that fetch fails
    and the bootstrap prints a ``FileNotFoundError`` traceback.  So the
    socket is pickled into bytes when the child is started (with the same
    reducers, at the same moment) and unpickled by :meth:`open` in the
    child's own code, which can leave quietly when its parent is gone.
    Under ``fork`` nothing is pickled: :meth:`open` returns the socket as is.
    """

    def __init__(self, sock: socket.socket | None, pickled: bytes | None = None) -> None:
        self._sock = sock
        self._pickled = pickled

    def __reduce__(self) -> tuple[Any, ...]:
        from multiprocessing.reduction import ForkingPickler

        assert self._sock is not None, "a LateSocket is pickled once, by its parent"
        return (LateSocket, (None, bytes(ForkingPickler.dumps(self._sock))))

    def open(self) -> socket.socket | None:
        """The socket; None if it can no longer be fetched (the parent is gone)."""
        if self._sock is None:
            import pickle

            assert self._pickled is not None
            try:
                self._sock = pickle.loads(self._pickled)
            except (OSError, EOFError):
                return None
        return self._sock


def socket_for_child(sock: socket.socket) -> socket.socket | LateSocket:
    """``sock`` as a worker's Process argument: a :class:`LateSocket` on
    Windows, where the child fetches it from its parent; the socket itself
    elsewhere, where ``spawn`` and ``forkserver`` hand the child the
    descriptor as it starts, so there is nothing left to fetch later."""
    return LateSocket(sock) if sys.platform == "win32" else sock


#: The portable path is in use in this process.
PORTABLE: bool = sys.platform == "win32" or os.environ.get("BOSSWORKER_PORTABLE") == "1"

#: Workers interrupt a job at its deadline with SIGALRM (else the Boss kills them).
HAS_ALARM: bool = not PORTABLE and hasattr(signal, "SIGALRM") and hasattr(signal, "setitimer")

# While output waits for room in a socket, the portable selector looks again
# this often: multiprocessing.connection.wait only waits for input.
_WRITE_POLL = 0.005


def _send_first(sock: socket.socket, chunks: Sequence[Buffer]) -> int:
    return sock.send(chunks[0])


#: ``send_chunks(sock, chunks)`` sends what the socket takes of ``chunks`` (a
#: non-empty list of buffers, from :meth:`protocol.SendQueue.chunks`) and
#: returns how many bytes went out.  ``socket.sendmsg`` where it exists.
send_chunks: Callable[[socket.socket, Sequence[Buffer]], int] = (
    _send_first if PORTABLE or not hasattr(socket.socket, "sendmsg") else socket.socket.sendmsg
)


class PortableSelector(selectors.BaseSelector):
    """The subset of a selector the Boss uses, over
    :func:`multiprocessing.connection.wait`: sockets and process sentinels
    (handles on Windows, descriptors elsewhere) wait together for input;
    sockets waiting for room to write are polled."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        if fileobj in self._keys:
            raise KeyError(f"{fileobj!r} is already registered")
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = self._keys[fileobj]._replace(events=events, data=data)
        self._keys[fileobj] = key
        return key

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[fileobj]

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return dict(self._keys)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready: dict[Any, int] = {}
        writers = [k.fileobj for k in self._keys.values() if k.events & selectors.EVENT_WRITE]
        if writers:
            _, writable, _ = select.select([], writers, [], 0)
            for obj in writable:
                ready[obj] = selectors.EVENT_WRITE
            if writable:
                timeout = 0
            elif timeout is None or timeout > _WRITE_POLL:
                timeout = _WRITE_POLL
        readers: list[Any] = [k.fileobj for k in self._keys.values() if k.events & selectors.EVENT_READ]
        for obj in _mp_wait(readers, timeout):
            ready[obj] = ready.get(obj, 0) | selectors.EVENT_READ
        return [(self._keys[obj], mask) for obj, mask in ready.items() if obj in self._keys]

    def close(self) -> None:
        self._keys.clear()


def make_selector() -> selectors.BaseSelector:
    """The Boss's selector: the platform's best, or the portable one."""
    return PortableSelector() if PORTABLE else selectors.DefaultSelector()


class ForkFlag:
    """True in a child that a handler forked (and that returned into our loop)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = False

    def __bool__(self) -> bool:
        return self.value

    def set(self) -> None:
        self.value = True


def watch_forks() -> ForkFlag:
    """A flag that becomes true in a forked child of this process.

    Cheaper than comparing ``os.getpid()`` after every job.  Where there is
    no fork (Windows), it stays false.
    """
    flag = ForkFlag()
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=flag.set)
    return flag

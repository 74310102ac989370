"""portable.LateSocket: a worker's socket, opened by the worker's own code."""

from __future__ import annotations

import multiprocessing
import pickle
import socket

import pytest

from bossworker.portable import LateSocket


class _GoneParent:
    """Unpickles as a resource sharer whose process is gone does (Windows)."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (_raise_not_found, ("[WinError 2] The system cannot find the file specified",))


def _raise_not_found(text: str) -> None:
    raise FileNotFoundError(text)


def test_not_pickled_it_is_the_socket_itself() -> None:
    a, b = socket.socketpair()
    with a, b:
        assert LateSocket(a).open() is a


def test_a_socket_that_cannot_be_fetched_opens_as_none() -> None:
    late = LateSocket(None, pickle.dumps(_GoneParent()))
    assert late.open() is None


def _child(late: LateSocket, answer: bytes) -> None:
    sock = late.open()
    assert sock is not None
    sock.sendall(answer)
    sock.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawned_child_opens_it(method: str) -> None:
    """The socket arrives through pickling, as under spawn on Windows."""
    ctx = multiprocessing.get_context(method)
    mine, theirs = socket.socketpair()
    with mine:
        child = ctx.Process(target=_child, args=(LateSocket(theirs), method.encode()))
        child.start()
        theirs.close()
        mine.settimeout(50)
        got = b""
        while chunk := mine.recv(64):
            got += chunk
        child.join(50)
        assert child.exitcode == 0
        assert got == method.encode()

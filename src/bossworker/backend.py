"""Where the Boss runs: the seam between the public class and the processes.

The public class only ever needs a connected socket that speaks the frame
protocol (see :mod:`bossworker.protocol`) and a handle to stop what is on
the other side.  :class:`LocalBackend` starts a Boss process on this machine;
a distributed backend starts a Boss whose workers live elsewhere, behind the
same socket, without any change to :class:`bossworker.BossWorkerAsync`.
"""

from __future__ import annotations

import multiprocessing
import socket
import sys
import weakref
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from .config import BossConfig, PickledAtSpawn
from .process import Closable, descriptor_identities, preload_parent_death_signal

__all__ = ["Backend", "BossHandle", "LocalBackend", "LocalBossHandle", "default_start_method"]

# The main-side sockets of every live pool in this process.  A Boss forked
# for a new pool closes them, so that it cannot hide an older pool's main
# going away (see process.close_inherited).
_LIVE_MAIN_SOCKETS: weakref.WeakSet[socket.socket] = weakref.WeakSet()


class BossHandle(Protocol):
    """What main may do to the process behind the socket."""

    @property
    def pid(self) -> int | None: ...

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def terminate(self) -> None:
        """Ask for a forced stop: kill every worker, then exit."""

    def kill(self) -> None:
        """Kill the Boss outright."""

    def close(self) -> None:
        """Release what the handle holds (descriptors) once the Boss has
        exited; afterwards :meth:`is_alive` is False and :meth:`join`,
        :meth:`terminate` and :meth:`kill` do nothing.  Does nothing while
        the Boss still runs.  Harmless to call again."""


class Backend(Protocol):
    """Starts a Boss and returns main's end of its socket and a handle.

    A backend may set ``shares_memory = False`` when its workers cannot see
    this machine's ``/dev/shm``: large payloads then travel inside frames.
    """

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]: ...


def default_start_method(platform: str | None = None) -> str:
    """The start method ``start_method=None`` means on ``platform``
    (default: this one, ``sys.platform``).

    ``fork`` on Linux and the other POSIX systems that have it: the Perl
    original's preforking, and the cheapest start.  ``spawn`` on macOS and
    Windows, as CPython chooses there: macOS's system libraries are not safe
    to use in a forked child, and Windows has no ``fork``.
    """
    platform = sys.platform if platform is None else platform
    if platform == "darwin" or platform.startswith(("win32", "cygwin")):
        return "spawn"
    methods = multiprocessing.get_all_start_methods()
    return "fork" if "fork" in methods else methods[0]


class LocalBackend:
    """A Boss process on this machine, started with ``config.start_method``."""

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]:
        # The Boss's code is loaded here, at the first start, not when
        # bossworker is imported: main's own code never needs it (a forked
        # Boss then finds it loaded; a spawned one imports it by name).
        from .boss.main import run_boss

        ctx: Any = multiprocessing.get_context(config.start_method)  # typeshed lacks .Process
        main_end, boss_end = socket.socketpair()
        inherited: list[Closable] = []
        # Under fork: main's descriptors as the Boss is forked, filled in
        # just before (the Boss finds its sentinel pipe by them).
        main_fds: dict[int, tuple[int, int]] = {}
        if config.start_method == "fork":
            inherited = [main_end, *_LIVE_MAIN_SOCKETS]
            # Load it here, once per program, rather than in every new Boss.
            preload_parent_death_signal()
        # A new interpreter gets the config pickled here and unpickles it in
        # run_boss, which can then tell main a handler it cannot import.
        payload: BossConfig | PickledAtSpawn = config
        if config.start_method != "fork":
            payload = PickledAtSpawn(config)
        process = ctx.Process(
            target=run_boss,
            args=(boss_end, payload, inherited, main_fds),
            name="bossworker-boss",
            daemon=False,  # it starts worker processes of its own
        )
        try:
            if config.start_method == "fork":
                main_fds.update(descriptor_identities())
            process.start()
        finally:
            # Main must not keep the Boss's end: the Boss's death has to show
            # as end-of-file on main's end.
            boss_end.close()
        register_main_socket(main_end)
        return main_end, LocalBossHandle(process)


class LocalBossHandle:
    """A :class:`BossHandle` for a Boss started by :mod:`multiprocessing`.

    A ``Process`` keeps two pipe descriptors (its sentinel) until it is
    closed or garbage-collected: a program that keeps many shut-down pools
    would run out of descriptors, so :meth:`close` releases them as soon as
    the Boss has been reaped.
    """

    __slots__ = ("_closed", "_pid", "_process")

    def __init__(self, process: BaseProcess) -> None:
        self._process = process
        self._pid = process.pid
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._pid

    def is_alive(self) -> bool:
        return not self._closed and self._process.is_alive()

    def join(self, timeout: float | None = None) -> None:
        if not self._closed:
            self._process.join(timeout)

    def terminate(self) -> None:
        if not self._closed:
            self._process.terminate()

    def kill(self) -> None:
        if not self._closed:
            self._process.kill()

    def close(self) -> None:
        if self._closed or self._process.is_alive():
            return
        self._process.join(0)  # reaps it: exitcode is known from here on
        self._process.close()
        self._closed = True


def register_main_socket(sock: socket.socket) -> None:
    """Have Bosses forked from now on close ``sock`` (see _LIVE_MAIN_SOCKETS).

    Every backend registers main's end of its socket with this."""
    _LIVE_MAIN_SOCKETS.add(sock)


def forget_main_socket(sock: socket.socket) -> None:
    """Stop closing ``sock`` in future Bosses (it is being closed)."""
    _LIVE_MAIN_SOCKETS.discard(sock)

"""Where the Boss runs: the seam between the public class and the processes.

The public class only ever needs a connected socket that speaks the frame
protocol (see :mod:`bossworker.protocol`) and a handle to stop what is on
the other side.  :class:`LocalBackend` starts a Boss process on this machine;
a distributed backend starts a Boss whose workers live elsewhere, behind the
same socket, without any change to :class:`bossworker.BossWorkerAsync`.
"""

from __future__ import annotations

import multiprocessing
import pickle
import socket
import weakref
from typing import Any, Protocol

from .boss import BossConfig, run_boss
from .process import Closable, preload_parent_death_signal
from .worker import PICKLE_PROTOCOL

__all__ = ["Backend", "BossHandle", "LocalBackend", "default_start_method"]

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


class Backend(Protocol):
    """Starts a Boss and returns main's end of its socket and a handle.

    A backend may set ``shares_memory = False`` when its workers cannot see
    this machine's ``/dev/shm``: large payloads then travel inside frames.
    """

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]: ...


def default_start_method() -> str:
    """``fork`` where the platform has it (the Perl original's preforking),
    else the platform's default."""
    methods = multiprocessing.get_all_start_methods()
    return "fork" if "fork" in methods else methods[0]


class LocalBackend:
    """A Boss process on this machine, started with ``config.start_method``."""

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]:
        ctx: Any = multiprocessing.get_context(config.start_method)  # typeshed lacks .Process
        main_end, boss_end = socket.socketpair()
        inherited: list[Closable] = []
        if config.start_method == "fork":
            inherited = [main_end, *_LIVE_MAIN_SOCKETS]
            # Load it here, once per program, rather than in every new Boss.
            preload_parent_death_signal()
        # A new interpreter gets the config pickled here and unpickles it in
        # run_boss, which can then tell main a handler it cannot import.
        payload: BossConfig | bytes = config
        if config.start_method != "fork":
            payload = pickle.dumps(config, protocol=PICKLE_PROTOCOL)
        process = ctx.Process(
            target=run_boss,
            args=(boss_end, payload, inherited),
            name="bossworker-boss",
            daemon=False,  # it starts worker processes of its own
        )
        try:
            process.start()
        finally:
            # Main must not keep the Boss's end: the Boss's death has to show
            # as end-of-file on main's end.
            boss_end.close()
        register_main_socket(main_end)
        return main_end, process


def register_main_socket(sock: socket.socket) -> None:
    """Have Bosses forked from now on close ``sock`` (see _LIVE_MAIN_SOCKETS).

    Every backend registers main's end of its socket with this."""
    _LIVE_MAIN_SOCKETS.add(sock)


def forget_main_socket(sock: socket.socket) -> None:
    """Stop closing ``sock`` in future Bosses (it is being closed)."""
    _LIVE_MAIN_SOCKETS.discard(sock)

"""Process-level plumbing shared by the Boss and the workers.

Small, Linux-aware helpers that make a child process a good citizen: it
dies with its parent, it ignores the terminal's Ctrl-C (the main program
decides what Ctrl-C means), it drops descriptors it inherited but does not
own, and it leaves through ``os._exit`` so that no stray thread or atexit
hook of the parent's can hold it up.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn, Protocol

__all__ = [
    "Closable",
    "close_inherited",
    "exit_now",
    "ignore_interrupts",
    "pickle_as_if_spawning",
    "pickling_as_if_spawning",
    "preload_parent_death_signal",
    "set_parent_death_signal",
    "signal_description",
]

_PR_SET_PDEATHSIG = 1


class Closable(Protocol):
    def close(self) -> None: ...


@functools.cache
def _prctl() -> Any:
    """libc's prctl, or None. Loaded once: a Boss loads it before it forks
    its workers, so they inherit it instead of importing ctypes each."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def preload_parent_death_signal() -> None:
    """Load what :func:`set_parent_death_signal` needs, ahead of forking."""
    _prctl()


def set_parent_death_signal(expected_parent: int) -> bool:
    """Ask Linux to SIGKILL us when our parent dies; exit if it already has.

    Returns False where the platform has no such request (then the caller
    relies on end-of-file on its socket alone).  The request names the
    parent *thread*, so it is only made by processes whose parent is
    single-threaded (workers under their Boss), never for the Boss itself.
    """
    prctl = _prctl()
    if prctl is None or prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return False
    # The parent may have died before the request was made: then nobody
    # will ever signal us, so leave now.
    if os.getppid() != expected_parent:
        exit_now(0)
    return True


def ignore_interrupts() -> None:
    """Ignore SIGINT: Ctrl-C in a terminal goes to the whole process group,
    and only the main program should react to it (issue: no worker may die
    in the middle of a job because the user pressed Ctrl-C in main)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def close_inherited(objects: Iterable[Closable]) -> None:
    """Close objects a forked child inherited but does not own.

    A child that keeps a copy of a sibling's socket hides that sibling's
    death from the Boss (its end-of-file never comes), so every child drops
    what is not its own as the first thing it does.
    """
    for obj in objects:
        with contextlib.suppress(OSError):
            obj.close()


class _SpawnProbe:
    """Stands in for multiprocessing's spawning ``Popen`` while we only try
    whether something pickles: descriptors are named, not duplicated."""

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> int:
        return fd


def pickle_as_if_spawning(obj: object, protocol: int) -> bytes:
    """``obj`` pickled as multiprocessing pickles a spawned child's arguments
    (see :func:`pickling_as_if_spawning`); raises what that pickling raises."""
    from multiprocessing.reduction import ForkingPickler

    with pickling_as_if_spawning():
        # ForkingPickler: multiprocessing's reducers (connections, shared
        # memory arenas) are registered with it, not with plain pickle.
        return bytes(ForkingPickler.dumps(obj, protocol))


@contextlib.contextmanager
def pickling_as_if_spawning() -> Iterator[None]:
    """Pickle as multiprocessing does while it starts a spawned child.

    multiprocessing's ``Queue``, ``Lock``, ``Event``, ``Value`` ... refuse to
    pickle except while a child is being spawned, when they travel in the
    ``Process`` arguments ("should only be shared between processes through
    inheritance").  A check that the handlers pickle, made ahead of starting
    the Boss, must see them as the spawn will, or it rejects exactly what the
    start itself would accept.  Still refused, as by a real spawn: a lock
    made in a ``fork`` context (multiprocessing's own message says so).
    """
    from multiprocessing import context

    previous = context.get_spawning_popen()
    context.set_spawning_popen(_SpawnProbe())  # type: ignore[arg-type]  # duck-typed
    try:
        yield
    finally:
        context.set_spawning_popen(previous)


def exit_now(code: int) -> NoReturn:
    """Flush the standard streams and leave at once, skipping atexit hooks.

    ``os._exit`` is used on purpose: a non-daemon thread a handler started,
    or an atexit hook inherited from main, must never hold up a child.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def signal_description(exitcode: int | None) -> str:
    """Describe a multiprocessing exit code: ``exit code 3`` or ``SIGKILL``."""
    if exitcode is None:
        return "unknown exit status"
    if exitcode < 0:
        try:
            return signal.Signals(-exitcode).name
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit code {exitcode}"

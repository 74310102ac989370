"""Process-level plumbing shared by the Boss and the workers.

Small, Linux-aware helpers that make a child process a good citizen: it
dies with its parent, it ignores the terminal's Ctrl-C (the main program
decides what Ctrl-C means), it drops descriptors it inherited but does not
own, and it leaves through ``os._exit`` so that no stray thread or atexit
hook of the parent's can hold it up.

Watching processes: a pipe or socket shows a process's death only once
*every* copy of its descriptor is closed, and a handler's helper forked
without exec holds copies of all of them.  So on Linux each watched process
gets a pidfd (:func:`open_pidfd`), readable as soon as that very process
exits, whoever holds what; ``waitpid`` stays the source of exit statuses.

Process groups: each worker leads its own group (:func:`lead_own_group`), so
that what a handler started dies with it (:func:`kill_group`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import select
import signal
import stat
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from typing import Any, NoReturn, Protocol

__all__ = [
    "FLUSH_LIMIT",
    "Closable",
    "ExitFlush",
    "OwnedFd",
    "Watched",
    "close_inherited",
    "descriptor_identities",
    "exit_now",
    "has_exited",
    "ignore_interrupts",
    "kill_group",
    "lead_own_group",
    "open_pidfd",
    "pickle_as_if_spawning",
    "pickling_as_if_spawning",
    "pipe_write_ends_since",
    "preload_parent_death_signal",
    "set_parent_death_signal",
    "signal_description",
]

_PR_SET_PDEATHSIG = 1

# How long a leaving worker may spend flushing what its handlers hold
# (logging handlers, multiprocessing queues' feeder threads) before it
# exits anyway: a flush stuck on a full pipe nobody reads must not hold a
# shutdown.
FLUSH_LIMIT = 5.0


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


class OwnedFd:
    """A descriptor this process opened and closes once (a pidfd).

    Closable, so a forked child can drop its copy through
    :func:`close_inherited`; has ``fileno()``, so a selector can watch it.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def descriptor_identities() -> dict[int, tuple[int, int]]:
    """This process's open descriptors, each with the (device, inode) of
    what it refers to; empty where there is no ``/proc/self/fd`` or
    ``/dev/fd`` to list them."""
    for where in ("/proc/self/fd", "/dev/fd"):
        try:
            listed = [int(name) for name in os.listdir(where)]
        except (OSError, ValueError):
            continue
        found = {}
        for fd in listed:
            # The listing's own descriptor is closed by now (or reused: then
            # it is described as what it is now).
            with contextlib.suppress(OSError):
                st = os.fstat(fd)
                found[fd] = (st.st_dev, st.st_ino)
        return found
    return {}


def pipe_write_ends_since(before: dict[int, tuple[int, int]]) -> list[OwnedFd]:
    """The write ends of pipes this process holds that were not open (as
    the same file) when ``before`` was taken by :func:`descriptor_identities`.

    A Boss forked by multiprocessing holds the write end of its own
    sentinel pipe, made just before the fork: main's ``join`` of the Boss
    waits for every copy of it to close.  Each worker the Boss forks would
    inherit it, and so would a helper a handler forks into its own session,
    making main wait for that helper.  The Boss finds it with this (main
    takes ``before`` just before starting it) and its workers close it.
    The returned objects are for a forked child to close, never this process.
    """
    import fcntl  # POSIX only; only a forked Boss calls this

    if not before:
        return []
    found = []
    for fd, identity in descriptor_identities().items():
        if before.get(fd) == identity:
            continue
        with contextlib.suppress(OSError):
            if (
                stat.S_ISFIFO(os.fstat(fd).st_mode)
                and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_WRONLY
            ):
                found.append(OwnedFd(fd))
    return found


def _start_time(pid: int | str) -> int | None:
    """When ``pid`` started, in clock ticks since boot (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # Field 22; the fields after the command name (which may hold spaces
        # and parentheses) start at field 3.
        return int(stat.rpartition(b")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def open_pidfd(pid: int, *, older_than_me: bool = False) -> OwnedFd | None:
    """A pidfd for ``pid``: readable once that process has exited.

    Returns None where there is none (not Linux, kernel before 5.3, a
    sandbox refusing the call) or the process is already gone; callers then
    fall back to what they watched before (a sentinel pipe, a socket's
    end-of-file, polling ``getppid``).

    With ``older_than_me``, the pid was learnt earlier and its process may
    have died and the number been reused since: the pidfd is kept only if
    its process started no later than this one (main and the Boss always
    did), as ``/proc`` says; without ``/proc`` nothing is watched.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None:
        return None
    try:
        fd = OwnedFd(pidfd_open(pid))
    except OSError:
        return None
    if older_than_me:
        # The pidfd now pins the process: if it is the one we mean, it
        # started before us; a reused number belongs to a younger one.
        theirs, mine = _start_time(pid), _start_time("self")
        if theirs is None or mine is None or theirs > mine:
            fd.close()
            return None
    return fd


def has_exited(pidfd: OwnedFd) -> bool:
    """True if the process behind ``pidfd`` has exited (no waiting)."""
    poller = select.poll()
    poller.register(pidfd.fd, select.POLLIN)
    return bool(poller.poll(0))


# The kernel's flag for a task that has begun to exit (include/linux/sched.h),
# shown in field 9 of /proc/<pid>/stat.
_PF_EXITING = 0x4


class Watched:
    """Another process, not our child: our parent (``pidfd`` None) or one
    watched through its pidfd."""

    __slots__ = ("pid", "pidfd")

    def __init__(self, pid: int, pidfd: OwnedFd | None = None) -> None:
        self.pid = pid
        self.pidfd = pidfd

    def leaving(self) -> bool:
        """True if the process has exited or has begun to exit.

        Its end shows late to a pidfd, and to its children (a new parent,
        the parent-death signal): both come at the very end of an exit,
        after the process's descriptors were closed, so a process killed a
        moment ago may already look dead to others (end-of-file on its
        sockets) and not yet to us.  Its ``PF_EXITING`` flag is set first
        of all, so on Linux it is read too: from ``/proc``, then the pidfd
        or our parent is looked at, so that the flag read was the process's
        own (it cannot have been reaped, and its pid reused, before that)."""
        flags = _task_flags(self.pid)
        if self.pidfd is not None:
            if has_exited(self.pidfd):
                return True
        elif os.getppid() != self.pid:
            return True
        return flags is not None and bool(flags & _PF_EXITING)


def _task_flags(pid: int) -> int | None:
    """The kernel's flags word for ``pid`` (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat_line = f.read()
        # Field 9; the fields after the command name start at field 3.
        return int(stat_line.rpartition(b")")[2].split()[6])
    except (OSError, ValueError, IndexError):
        return None


def lead_own_group() -> None:
    """Make this process the leader of a new process group.

    Whatever it starts (``os.system``, ``subprocess``, a forked helper)
    joins the group, and :func:`kill_group` kills them all together.
    """
    if not hasattr(os, "setpgid"):
        return  # Windows: no process groups (see kill_group)
    with contextlib.suppress(OSError):  # already a group or session leader
        os.setpgid(0, 0)


def kill_group(pid: int) -> None:
    """SIGKILL process ``pid`` and every member of the group it leads.

    Safe for a process that has not made its group yet (the group does not
    exist: only the process is killed) and for one that exited but is not
    yet reaped (its pid, and so its group id, cannot have been reused).
    Members that left the group (``setsid``, ``start_new_session=True``)
    are not reached, on purpose.  (Under forkserver the fork server, not
    the Boss, reaps a worker, possibly before this runs: an empty group's
    id could then in theory have been reused, within milliseconds.)
    """
    if not hasattr(os, "killpg"):
        # Windows: os.kill with any other signal than the console events is
        # TerminateProcess; there are no process groups to reach.
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _live_logging_handlers() -> list[logging.Handler]:
    refs = getattr(logging, "_handlerList", [])  # weak references, oldest first
    return [h for h in (ref() for ref in list(refs)) if h is not None]


class ExitFlush:
    """What a worker flushes before ``os._exit``, bounded by :data:`FLUSH_LIMIT`.

    Made when the worker starts.  At exit, :meth:`run` flushes the logging
    handlers created since (by ``init_handler`` or jobs) and runs the
    process's multiprocessing finalizers, as a normally ending
    multiprocessing child does: they close every ``multiprocessing.Queue``
    the process used and wait for its feeder thread to write what was put.
    Handlers the worker started with are left alone: under fork they are
    main's, and a buffering one holds main's records too, which flushing in
    every worker would repeat.  (Under spawn, that also leaves out handlers
    made while the handlers' modules were imported, before the worker ran.)
    """

    __slots__ = ("inherited",)

    def __init__(self) -> None:
        self.inherited: weakref.WeakSet[logging.Handler] = weakref.WeakSet(_live_logging_handlers())

    def run(self, limit: float = FLUSH_LIMIT) -> None:
        """Flush, in a thread joined for at most ``limit`` seconds."""
        from multiprocessing import util

        handlers = [h for h in _live_logging_handlers() if h not in self.inherited]
        if not handlers and not getattr(util, "_finalizer_registry", None):
            return  # nothing to flush: no thread, the common case
        flusher = threading.Thread(target=_flush, args=(handlers,), name="bossworker-exit-flush", daemon=True)
        flusher.start()
        flusher.join(limit)


def _flush(handlers: list[logging.Handler]) -> None:
    from multiprocessing import util

    for handler in handlers:
        with contextlib.suppress(Exception):
            handler.acquire()
            try:
                handler.flush()
            finally:
                handler.release()
    # What multiprocessing.util._exit_function runs at a child's normal end,
    # less the joining of the child's own children (a handler's
    # never-ending Process must not hold us: its group is killed anyway).
    util._exiting = True  # type: ignore[attr-defined]  # queue feeders: quiet on a closed pipe
    run_finalizers = getattr(util, "_run_finalizers", None)
    if run_finalizers is not None:
        with contextlib.suppress(Exception):
            run_finalizers(0)
        with contextlib.suppress(Exception):
            run_finalizers()

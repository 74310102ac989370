"""Timestamps from every process of a pool, for ``bench/hops.py`` and ``bench/startup.py``.

A pool is three kinds of process (main, the Boss, its workers); a round trip
or a start-up is a chain of events spread over all three.  This module
records when each event happened, in each process, into one anonymous
shared mapping made in main before anything forks, so the Boss and the
workers (forked: the pool's default on Linux) write into the same memory
and main reads it afterwards.  ``time.perf_counter_ns`` is
``CLOCK_MONOTONIC`` on Linux: one clock for every process of the machine.

What is stamped, without a change to the package: :func:`instrument`
wraps, for the bench only, a few functions the package looks up at call
time (the module globals ``send_chunks`` in the Boss, worker and client
modules; ``Decoder.buffer_updated``; the process bodies ``run_boss`` and
``run_worker``; the Boss's worker start and reaping; ``exit_now``).  A tag
says who, which way and what kind of frame: ``"boss<main JOB"`` is the
Boss having decoded a JOB from main, ``"worker>boss RESULT"`` a worker
about to send a RESULT.  Each tag keeps its own list of times, in
order, so with one job in flight the n-th entry of every tag belongs to the
n-th round trip.

The wrappers cost about a microsecond each (a Python call and a store):
the hop tool reports an uninstrumented run beside the split so that cost
shows.
"""

from __future__ import annotations

import functools
import mmap
import time
from collections.abc import Callable
from typing import Any

from bossworker.protocol import Kind

ROLES = (
    "main>boss",
    "main<boss",
    "boss<main",
    "boss>main",
    "boss>worker",
    "boss<worker",
    "worker<boss",
    "worker>boss",
)
KINDS = [k.name for k in Kind]
EXTRA = (
    "t0",  # main: before add_work / the constructor
    "t1",  # main: add_work returned
    "t2",  # main: get_result returned
    "ctor",  # main: the constructor returned
    "job",  # main: the first job's result is back
    "stop",  # main: shut_down() returned
    "backend",  # main: the Boss process was started (LocalBackend.start returned)
    "boss run",  # the Boss: its body began
    "boss fork worker",  # the Boss: a worker process was started
    "worker run",  # a worker: its body began
    "worker exit",  # a worker: os._exit next
    "boss reaped",  # the Boss: a worker was reaped (after its exit was handled)
    "boss exit",  # the Boss: os._exit next
    "call start",  # the handler was entered
    "call end",  # the handler returns
)
TAGS = [f"{role} {kind}" for role in ROLES for kind in KINDS] + list(EXTRA)
INDEX = {tag: i for i, tag in enumerate(TAGS)}


class Stamps:
    """``slots`` times per tag, in a mapping shared with forked children."""

    def __init__(self, slots: int) -> None:
        self.slots = slots
        n = len(TAGS)
        self._mem = mmap.mmap(-1, 8 * (n + n * slots))  # counters, then the times
        self._q = memoryview(self._mem).cast("q")
        self._base = n

    def stamp(self, tag: str) -> None:
        """Record now under ``tag`` (dropped once its slots are full)."""
        q = self._q
        i = INDEX[tag]
        k = q[i]
        if k < self.slots:
            q[self._base + i * self.slots + k] = time.perf_counter_ns()
            q[i] = k + 1

    def reset(self) -> None:
        """Forget every time (call when the pool's processes are idle)."""
        for i in range(len(TAGS)):
            self._q[i] = 0

    def times(self, tag: str) -> list[int]:
        """The times recorded under ``tag``, in ns, oldest first."""
        i = INDEX[tag]
        start = self._base + i * self.slots
        return list(self._q[start : start + self._q[i]])


STAMPS: Stamps | None = None
ROLE = "main"  # set to "boss" / "worker" in the children by the wrapped process bodies
_boss_main_decoder: object = None  # the Boss's decoder for main's frames
_answer_stamped = False  # a worker's answer was stamped before its send


def _kind_name(data: Any) -> str:
    try:
        return Kind(data[0]).name
    except (ValueError, IndexError, TypeError):
        return "JOB"


def instrument(slots: int) -> Stamps:
    """Install the wrappers (once per process, before a pool starts)."""
    global STAMPS
    import bossworker.backend as backend
    import bossworker.boss.local as local
    import bossworker.boss.main as boss_main
    import bossworker.client as client
    import bossworker.worker as worker
    from bossworker.protocol import Decoder

    # Where main's sends and the worker starts live (split out of client.py
    # and boss/local.py; older trees have them in place).
    try:
        import bossworker.connection as connection
    except ImportError:
        connection = client
    try:
        import bossworker.boss.starts as starts
    except ImportError:
        starts = local

    STAMPS = stamps = Stamps(slots)
    # The wrappers stamp through stamp(): nothing while STAMPS is None.

    def sender(module: Any, main_role: str) -> None:
        original = module.send_chunks

        def send_chunks(sock: Any, chunks: Any) -> int:
            global _answer_stamped
            # Stamped before the write: once it is done the reader may run
            # (and stamp) before this process gets the CPU back.
            if _answer_stamped:
                _answer_stamped = False  # stamped by segment_of already (older trees)
            else:
                stamp(f"{main_role} {_kind_name(chunks[0])}")
            n: int = original(sock, chunks)
            return n

        module.send_chunks = send_chunks

    sender(connection, "main>boss")
    sender(boss_main, "boss>main")
    sender(local, "boss>worker")
    sender(worker, "worker>boss")  # READY, and answers of several buffers
    # The usual answer goes out with sock.sendall right after the worker
    # asked result_segment about it: that is its "about to send" moment.
    result_segment = getattr(worker, "result_segment")  # noqa: B009 - imported there, not exported

    def segment_of(answer: Any) -> Any:
        global _answer_stamped
        found = result_segment(answer)
        if len(answer) == 1:
            stamp(f"worker>boss {_kind_name(answer[0])}")
            _answer_stamped = True  # a tree whose worker still sends it with send_chunks
        else:
            _answer_stamped = False  # send_chunks stamps it
        return found

    setattr(worker, "result_segment", segment_of)  # noqa: B010

    buffer_updated = Decoder.buffer_updated

    @functools.wraps(buffer_updated)
    def decoded(self: Decoder, nbytes: int) -> None:
        before = len(self._frames)
        buffer_updated(self, nbytes)
        new = self._frames[before:]
        if not new:
            return
        if ROLE == "main":
            role = "main<boss"
        elif ROLE == "worker":
            role = "worker<boss"
        else:
            role = "boss<main" if self is _boss_main_decoder else "boss<worker"
        for frame in new:
            stamp(f"{role} {Kind(frame.kind).name}")

    Decoder.buffer_updated = decoded  # type: ignore[method-assign]

    boss_init = boss_main.Boss.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        global _boss_main_decoder
        boss_init(self, *args, **kwargs)
        _boss_main_decoder = self.main_in

    boss_main.Boss.__init__ = init  # type: ignore[method-assign]

    def body(module: Any, name: str, role: str, tag: str) -> None:
        original = getattr(module, name)

        def run(*args: Any, **kwargs: Any) -> Any:
            global ROLE
            ROLE = role
            stamp(tag)
            return original(*args, **kwargs)

        setattr(module, name, run)

    body(boss_main, "run_boss", "boss", "boss run")
    body(starts, "run_worker", "worker", "worker run")

    def after(owner: Any, name: str, tag: str) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            result = original(*args, **kwargs)
            stamp(tag)
            return result

        setattr(owner, name, wrapped)

    after(backend.LocalBackend, "start", "backend")
    after(local.LocalFleet, "_start_worker", "boss fork worker")
    after(local.LocalFleet, "_on_exit", "boss reaped")

    def exiting(module: Any, tag: str) -> None:
        original: Callable[[int], Any] = module.exit_now

        def exit_now(code: int) -> Any:
            stamp(tag)
            return original(code)

        module.exit_now = exit_now

    exiting(worker, "worker exit")
    exiting(boss_main, "boss exit")
    return stamps


def stamp(tag: str) -> None:
    """Record now under ``tag`` if instrumented (for handlers and the driver)."""
    if STAMPS is not None:
        STAMPS.stamp(tag)


def traced_multiply(job: dict[str, int]) -> dict[str, int]:
    """``workloads.multiply`` with the handler's entry and exit stamped."""
    stamp("call start")
    out = {"product": job["a"] * job["b"]}
    stamp("call end")
    return out

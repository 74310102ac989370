"""What runs inside every Dask worker while a pool lives: the plugin and its tasks.

::

    Dask worker process                                         our worker processes
   +------------------------------------------------------+    +---------------------+
   | PoolPlugin (set up when the Dask Boss registers it)  |    | python -m            |
   |   _Launcher thread: starts every child               |    |  bossworker.dask.child
   |   _Slot x nthreads -- _Child (socket, pidfd) ------- | -> |  run_worker (ours)   |
   | tasks: run_job (one JOB frame in, answer frame out)  |    +---------------------+
   |        plugin_stats, plugin_kill, lease_task         |
   +------------------------------------------------------+

A task runs in one of Dask's threads: it takes a free slot, makes sure the
slot's child is ready (starting it again, with a back-off, if it died or
left), sends it the JOB frame and waits for its answer, the child's death or
the job's deadline (plus the Boss's grace), whichever comes first.  A
timeout kills only that child, even in C code; Dask's own threads can be
neither timed out nor killed.

The plugin watches the Dask Boss's *lease* task on the scheduler: if it
disappears (the Dask Boss was SIGKILLed), the plugin kills its children and
unregisters itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import select
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any

from distributed import WorkerPlugin, get_worker

from ..boss.core import StartFailures, boss_answer
from ..boss.link import TIMED_OUT, LinkState, OutOfTurn, WorkerLink
from ..errors import (
    POOL_NOT_SET_UP_ERROR,
    POOL_SHUTTING_DOWN_ERROR,
    PROTOCOL_VIOLATION_ERROR,
    could_not_start_worker_error,
    no_worker_could_start_error,
)
from ..jobs import error_answer, frame_text
from ..process import signal_description
from ..protocol import Decoder, Frame, InitFailure, Kind, encode, recv_frames
from ..worker import describe_exception
from .launch import start_module

__all__ = ["PoolPlugin", "lease_task", "plugin_kill", "plugin_stats", "run_job"]

log = logging.getLogger("bossworker")

# How often a plugin checks that its Dask Boss is alive, and after how many
# misses in a row it gives up and cleans up after it.
LEASE_CHECK_INTERVAL = 2.0
LEASE_MISSES = 2
# The module our worker processes run (python -m).
CHILD_MODULE = "bossworker.dask.child"


class _Launcher:
    """One long-lived thread that starts every child of a plugin.

    A child asks Linux to kill it when its parent dies (PR_SET_PDEATHSIG),
    and Linux counts the *thread* that started it as the parent: Dask's task
    threads may come and go, this one lives until every child is gone.
    """

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[tuple[Callable[[], Any], ConcurrentFuture[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._stopped = False
        self._thread = threading.Thread(target=self._serve, name="bossworker-launcher", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            fn, future = call
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:  # noqa: BLE001 - handed to the caller
                    future.set_exception(exc)

    def call(self, fn: Callable[[], Any]) -> ConcurrentFuture[Any]:
        future: ConcurrentFuture[Any] = ConcurrentFuture()
        if self._stopped:
            future.set_exception(RuntimeError("the launcher has stopped"))
        else:
            self._calls.put((fn, future))
        return future

    def stop(self) -> None:
        self._stopped = True
        self._calls.put(None)
        self._thread.join(5)


class _Child(WorkerLink):
    """One child process as its slot sees it: its link (the handshake, the
    head answer, the deadline and its grace, the answer for a death: the
    rules the local Boss's workers follow too) plus the process and our
    end of its socket."""

    __slots__ = ("decoder", "pidfd", "proc", "sock")

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, read_size: int) -> None:
        super().__init__(proc.pid, time.monotonic())
        self.proc = proc
        self.sock = sock
        self.decoder = Decoder(read_size)
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux >= 5.3 only
            self.pidfd = os.pidfd_open(proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_readable(self, deadline: float = math.inf) -> tuple[bool, bool]:
        """Wait until the socket has bytes or the process exited (or the
        deadline passed). Returns (socket readable, process exited)."""
        watch: list[Any] = [self.sock]
        if self.pidfd is not None:
            watch.append(self.pidfd)
        while True:
            wait = 0.1 if self.pidfd is None else None
            if deadline != math.inf:
                left = max(0.0, deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            readable, _, _ = select.select(watch, [], [], wait)
            exited = (self.pidfd in readable) if self.pidfd is not None else not self.alive()
            if readable or exited or time.monotonic() >= deadline:
                return self.sock in readable, exited

    def read(self) -> list[Frame] | None:
        """Read what is there (the socket must be readable). None at EOF."""
        frames, ended = recv_frames(self.sock, self.decoder)
        return None if ended else frames

    def read_rest(self) -> list[Frame]:
        """Everything still in the socket of a child that has exited."""
        frames: list[Frame] = []
        self.sock.setblocking(False)
        try:
            while (got := self.read()) is not None:
                if not got:
                    break
                frames += got
        finally:
            self.sock.setblocking(True)
        return frames

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    def reap(self, patience: float = 1.0) -> str:
        """Wait for the process (killing it after ``patience``); close our
        ends; return its exit status as text."""
        try:
            self.proc.wait(patience)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.close()
        return signal_description(self.proc.returncode)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
        if self.pidfd is not None:
            with contextlib.suppress(OSError):
                os.close(self.pidfd)
            self.pidfd = None


class _Slot:
    """One worker thread's child: started, replaced, and fed one job at a time."""

    def __init__(self, plugin: PoolPlugin) -> None:
        self.plugin = plugin
        self.child: _Child | None = None
        self.starting: ConcurrentFuture[_Child] | None = None
        self.busy = False
        self.last_error = ""  # why the last start failed
        self.last_killed = False  # it failed only by a signal's kill

    # -- children come and go --------------------------------------------------

    def spawn(self) -> None:
        """Have the launcher start a new child (without waiting for it)."""
        launcher = self.plugin.launcher
        if self.starting is None and not self.plugin.closing and launcher is not None:
            self.starting = launcher.call(self.plugin.start_child)

    def handshake(self) -> _Child | None:
        """Wait for the child being started to say READY. The child, or None
        if it failed (then ``last_error`` says why)."""
        if self.child is None:
            if self.starting is None:
                return None
            starting, self.starting = self.starting, None
            try:
                self.child = starting.result()
            except Exception as exc:  # noqa: BLE001 - could not even start it
                self.last_error = could_not_start_worker_error(describe_exception(exc))
                self.last_killed = False
                return None
        child = self.child
        while child.state is LinkState.STARTING:
            readable, exited = child.wait_readable()
            frames = child.read() if readable else []
            if frames is None or (exited and not readable):
                frames = (frames or []) + child.read_rest()
                self._take_handshake(child, frames)
                if child.ever_ready:
                    break
                reason = self.plugin.reap(child)
                self.child = None
                self.last_error, _, self.last_killed = child.start_failure(reason, child.proc.returncode)
                return None
            self._take_handshake(child, frames)
        return child

    @staticmethod
    def _take_handshake(child: _Child, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.kind == Kind.READY:
                child.ready()
            elif frame.kind == Kind.INIT_FAILED:
                child.init_failed(frame_text(frame), frame.job_id)

    def ready_child(self) -> _Child | None:
        """A child ready for a job, started (again) if need be.  Failed
        starts are tried again with the local Boss's back-off until they
        count as persistent by its rule (:class:`StartFailures`, counted
        for this job alone); then None, and ``last_error`` says why."""
        failures = StartFailures(1)
        while True:
            if self.plugin.closing:
                self.last_error = POOL_SHUTTING_DOWN_ERROR
                return None
            if self.child is not None and self.child.state is LinkState.SERVING:
                if self.child.alive():
                    return self.child
                self.retire(kill=False)  # it died while idle
            if self.child is None:
                self.spawn()
            child = self.handshake()
            if child is not None:
                return child
            delay = failures.failed(self.last_error, InitFailure.WORKERS, self.last_killed)
            if failures.persistent():
                return None
            time.sleep(delay)

    def retire(self, kill: bool) -> str:
        """Reap the current child (killing it first if asked) and start a
        replacement in the background. Returns the child's exit status."""
        child, self.child = self.child, None
        reason = "no worker"
        if child is not None:
            if kill:
                child.kill()
            reason = self.plugin.reap(child)
        self.spawn()
        return reason

    def release(self) -> None:
        """The current child leaves by itself (max_jobs): let it run its
        exit handler while a replacement starts."""
        child, self.child = self.child, None
        if child is not None:
            with self.plugin.lock:
                self.plugin.retiring.append(child)
        self.spawn()

    # -- one job ---------------------------------------------------------------

    def run(self, raw: bytes) -> bytes:
        child = self.ready_child()
        if child is None:
            return error_answer(Frame.parse(raw).job_id, no_worker_could_start_error(self.last_error))
        self.busy = True
        try:
            return self._run(child, raw)
        finally:
            self.busy = False

    def _run(self, child: _Child, raw: bytes) -> bytes:
        child.take_jobs(deque([raw]), 1, time.monotonic())  # the child's head from now on
        deadline = child.deadline()
        try:
            # The child is idle and reading: this takes no longer than the copy.
            child.sock.sendall(raw)
        except OSError:
            return self._died(child, [])
        while True:
            readable, exited = child.wait_readable(deadline)
            if readable:
                frames = child.read()
                if frames is None:
                    return self._died(child, [])
                answer = self._answer_in(child, frames)
                if answer is not None:
                    return answer
            elif exited:
                return self._died(child, child.read_rest())
            elif time.monotonic() >= deadline:
                log.warning(
                    "job %d overran its deadline in worker %d; killing it",
                    child.inflight[0].job_id,
                    child.pid,
                )
                child.head_killed(TIMED_OUT)
                return self._gone(child, kill=True)

    def _answer_in(self, child: _Child, frames: list[Frame]) -> bytes | None:
        """The answer to ``child``'s head among ``frames``, if it is there."""
        for frame in frames:
            if frame.kind not in (Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT):
                continue
            try:
                child.answered(frame, time.monotonic())
            except OutOfTurn as exc:
                # As the local Boss does: a child that breaks the protocol is killed.
                log.error("worker %d: %s; killing it", child.pid, exc)
                text = PROTOCOL_VIOLATION_ERROR.format(detail=exc)
                head = child.take_violation(text)
                self.retire(kill=True)
                assert head is not None  # a job runs: the child serves, and nothing killed it yet
                return boss_answer(head.job_id, Kind.ERROR, text, 0, 0, 0.0)
            self.plugin.jobs_done += 1
            max_jobs = self.plugin.max_jobs
            if max_jobs is not None and child.jobs_done >= max_jobs:
                self.release()
            return bytes(frame.raw)
        return None

    def _died(self, child: _Child, last_words: list[Frame]) -> bytes:
        answer = self._answer_in(child, last_words)
        if answer is not None:
            return answer
        return self._gone(child, kill=False)

    def _gone(self, child: _Child, kill: bool) -> bytes:
        """Reap ``child`` (killing it first if asked) and answer its head
        as its link says (TIMED_OUT after a deadline, else "worker died")."""
        reason = self.retire(kill)
        head, fate, _ = child.take_jobs_back(reason, child.proc.returncode)
        assert head is not None and fate is not None  # one job ran, and nothing answered it
        if fate.kind is not Kind.TIMED_OUT:
            log.warning("worker %d died (%s) while running job %d", child.pid, reason, head.job_id)
        return boss_answer(head.job_id, fate.kind, fate.text, fate.flags, 0, 0.0, fate.facts)


class PoolPlugin(WorkerPlugin):
    """Lives on every Dask worker while its pool does."""

    idempotent = False

    # What travels to the Dask workers; the rest is made there.
    _CONFIG = ("name", "spec", "read_size", "max_jobs", "exit_limit", "lease")

    def __init__(
        self, name: str, spec: bytes, read_size: int, max_jobs: int | None, exit_limit: float, lease: str
    ) -> None:
        self.name = name
        self.spec = spec
        self.read_size = read_size
        self.max_jobs = max_jobs
        self.exit_limit = exit_limit  # how long a child may take to run its exit_handler after SHUTDOWN
        self.lease = lease
        self._init_state()

    def _init_state(self) -> None:
        """The plugin's state on a Dask worker, before :meth:`setup` fills it."""
        self.setup_started = False  # tasks find the pool only once setup() began
        self.closing = False
        self.killed = False
        self.set_up = threading.Event()
        self.lock = threading.Lock()
        self.children: set[_Child] = set()  # every child not yet reaped
        self.retiring: list[_Child] = []  # leaving by themselves (max_jobs)
        self.jobs_done = 0
        self.children_started = 0
        self.launcher: _Launcher | None = None  # None until setup() starts it
        self.slots: list[_Slot] = []
        self.free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
        self.init_results: list[str | None] = []
        self.watchdog: asyncio.Task[None] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._CONFIG}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    # -- set up and tear down (on the worker's event loop) ---------------------

    async def setup(self, worker: Any) -> None:
        self._init_state()
        self.setup_started = True
        self.launcher = _Launcher()
        self.slots = [_Slot(self) for _ in range(max(1, int(worker.state.nthreads)))]
        for slot in self.slots:
            slot.spawn()
            self.free.put(slot)
        loop = asyncio.get_running_loop()
        self.init_results = await loop.run_in_executor(None, self._handshake_all)
        self.watchdog = asyncio.create_task(self._watch_lease(worker))
        self.set_up.set()

    def _handshake_all(self) -> list[str | None]:
        """Wait for every first child's READY; None or the error of each."""
        return [None if slot.handshake() is not None else slot.last_error for slot in self.slots]

    async def teardown(self, worker: Any) -> None:
        if self.launcher is None:
            return  # its setup failed before it started anything
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.closing = True
        self.set_up.set()  # tasks waiting for the set-up give up now
        # Gracefully (SHUTDOWN: each child finishes its job, runs its exit
        # handler) unless the Dask Boss is gone: then nobody wants the jobs.
        graceful = not self.killed and await self._lease_held(worker) is not False
        await asyncio.get_running_loop().run_in_executor(None, self.close, graceful)

    async def _lease_held(self, worker: Any) -> bool | None:
        """Is the Dask Boss's lease on the scheduler? None if we cannot tell."""
        try:
            status = await asyncio.wait_for(worker.scheduler.get_task_status(keys=[self.lease]), 5)
        except Exception:  # noqa: BLE001 - scheduler unreachable (the worker may be closing)
            return None
        return status.get(self.lease) is not None

    def close(self, graceful: bool) -> None:
        """Stop every child: SHUTDOWN (they run their exit handler), or kill."""
        self.closing = True
        launcher = self.launcher
        assert launcher is not None, "close() before setup()"
        # Let the launcher finish the starts it was asked for: then every
        # child is in ``children``.
        with contextlib.suppress(Exception):  # already stopped: closed before
            launcher.call(lambda: None).result(timeout=30)
        with self.lock:
            children = list(self.children)
        for child in children:
            if graceful and child.alive():
                with contextlib.suppress(OSError):
                    child.sock.sendall(encode(Kind.SHUTDOWN))
            else:
                child.kill()
        for child in children:
            self.reap(child, self.exit_limit if graceful else 1.0)
        launcher.stop()

    def reap(self, child: _Child, patience: float = 1.0) -> str:
        """Wait for ``child`` to exit (kill it after ``patience``) and forget it."""
        reason = child.reap(patience)
        with self.lock:
            self.children.discard(child)
        self._reap_retired()
        return reason

    def _reap_retired(self) -> None:
        with self.lock:
            gone = [c for c in self.retiring if not c.alive()]
            self.retiring = [c for c in self.retiring if c not in gone]
        for child in gone:
            self.reap(child)

    async def _watch_lease(self, worker: Any) -> None:
        """Clean up after a Dask Boss that died without doing so."""
        misses = 0
        while misses < LEASE_MISSES:
            await asyncio.sleep(LEASE_CHECK_INTERVAL)
            held = await self._lease_held(worker)
            if held is not None:
                misses = 0 if held else misses + 1
        log.warning("bossworker pool %s: its Dask Boss is gone; stopping its workers", self.name)
        await asyncio.get_running_loop().run_in_executor(None, self.close, False)
        with contextlib.suppress(Exception):
            await worker.scheduler.unregister_worker_plugin(name=self.name)

    # -- used by the pool's tasks and the Dask Boss ------------------------------

    def start_child(self) -> _Child:
        """Start one child (in the launcher thread); do not wait for it."""
        if self.closing:
            raise RuntimeError("the pool is shutting down")
        ours, theirs = socket.socketpair()
        try:
            boot = {"spec": self.spec, "parent_pid": os.getpid()}
            proc = start_module(CHILD_MODULE, theirs.fileno(), boot)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        child = _Child(proc, ours, self.read_size)
        with self.lock:
            self.children_started += 1
            self.children.add(child)
        return child

    def run(self, raw: bytes) -> bytes:
        slot = self.free.get()
        try:
            return slot.run(raw)
        finally:
            self.free.put(slot)

    def kill_all(self) -> None:
        """Kill every child now (a forced stop); the teardown reaps them."""
        self.closing = self.killed = True
        with self.lock:
            children = list(self.children)
        for child in children:
            child.kill()

    def stats(self) -> dict[str, Any]:
        alive = [s.child for s in self.slots if s.child is not None and s.child.alive()]
        return {
            "alive": len(alive),
            "started": self.children_started,
            "running": sum(1 for s in self.slots if s.busy),
            "jobs": {str(c.pid): c.jobs_done for c in alive},
            "init": self.init_results,
        }


def _plugin(worker: Any, name: str, wait: bool = False) -> PoolPlugin | None:
    """The pool's plugin on this worker, once set up (waiting for its set-up
    to end if ``wait``), or None."""
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, PoolPlugin) or not plugin.setup_started:
        return None
    if wait:
        plugin.set_up.wait()
    if not plugin.set_up.is_set() or plugin.closing:
        return None
    return plugin


def run_job(raw: bytes, name: str) -> bytes:
    """The Dask task: one JOB frame in, its answer frame out."""
    plugin = _plugin(get_worker(), name, wait=True)
    if plugin is None:
        return error_answer(Frame.parse(raw).job_id, POOL_NOT_SET_UP_ERROR)
    return plugin.run(raw)


def lease_task() -> None:
    """The lease task: its key lives on the scheduler as long as the Dask Boss."""


def plugin_stats(name: str, dask_worker: Any = None) -> dict[str, Any] | None:
    plugin = _plugin(dask_worker, name)
    return None if plugin is None else plugin.stats()


def plugin_kill(name: str, dask_worker: Any = None) -> None:
    plugin = _plugin(dask_worker, name)
    if plugin is not None:
        plugin.kill_all()

"""The Dask Boss and what runs on the Dask workers (see :mod:`bossworker.dask`).

Who talks to whom::

   main process        Dask Boss process                Dask worker process       child
  +-------------+     +--------------------+  Dask    +----------------------+  +------------+
  | client      | <-> | asyncio loop       | <------> | _PoolPlugin          |  | run_worker |
  | (unchanged) |     |  distributed.Client|  tasks   |  slot 1 -- socket -- | -| (ours)     |
  +-------------+     |  one task per JOB  |          |  slot N -- socket -- | -| ...        |
     socketpair       +--------------------+          +----------------------+  +------------+

* Main speaks the frame protocol to the Dask Boss exactly as it does to the
  local Boss (JOB, SHUTDOWN, STATS_REQUEST in; READY / INIT_FAILED, RESULT /
  ERROR / TIMED_OUT, STATS, BYE out).
* The Dask Boss submits every JOB frame's raw bytes as one Dask task
  (:func:`_run_job`, unique key, ``pure=False``) and forwards each answer
  frame to main as soon as its task completes.
* On every Dask worker a :class:`_PoolPlugin` keeps one *child process* per
  worker thread, running our own :func:`~bossworker.worker.run_worker` loop:
  ``init_handler`` and ``exit_handler`` run there once, in a real process,
  and a job that overruns its timeout (even in C code that ignores
  signals) or crashes takes down that child only; the task answers
  TIMED_OUT or ERROR and the child is replaced.  Dask itself runs tasks in
  threads, which can be neither timed out nor killed.
* The Dask Boss never unpickles a job or a result, like the local Boss.

Ending: after SHUTDOWN, the Dask Boss waits for every answer, unregisters the
plugin (its teardown sends SHUTDOWN to each child, which runs the exit
handler), closes what it owns, and says BYE.  After SIGTERM (a forced stop)
or main's death it cancels the tasks, kills the children, unregisters the
plugin and exits within a second.  Should the Dask Boss die without cleaning
up (SIGKILL), each plugin notices that the Dask Boss's *lease* task is gone
from the scheduler, kills its children and unregisters itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from dataclasses import dataclass, field
from typing import Any

from distributed import Client, LocalCluster, WorkerPlugin, get_worker, wait

from .boss.link import TIMEOUT_GRACE
from .dask import CHILD_BOOT, _stdin_from_devnull
from .payload import Segments
from .process import exit_now, ignore_interrupts, signal_description
from .protocol import Decoder, Flag, Frame, Kind, SendQueue, encode
from .worker import describe_exception

__all__ = ["DaskBossOptions", "boss_main", "run_dask_boss"]

log = logging.getLogger("bossworker")

# A JOB frame larger than this is scattered to a worker first instead of
# travelling inside the task graph through the scheduler.
SCATTER_ABOVE = 1024 * 1024
# Finished tasks are released in batches of this many, or after this delay.
RELEASE_BATCH = 256
RELEASE_DELAY = 0.2
# A forced stop must be over before main's patience (1 s) runs out.
FORCED_STOP_BUDGET = 0.7
# How often the Dask Boss checks that main is still its parent.
PARENT_CHECK_INTERVAL = 0.5
# How often a plugin checks that its Dask Boss is alive, and after how many
# misses in a row it gives up and cleans up after it.
LEASE_CHECK_INTERVAL = 2.0
LEASE_MISSES = 2
# A child's start-up that fails (init_handler raised) is tried again this many
# times by the job that needs it, with this back-off, before the job is
# answered with an ERROR.
START_ATTEMPTS = 3
START_BACKOFF = 0.1
# How long a child may take to run its exit_handler after SHUTDOWN.
EXIT_WAIT = 30.0


@dataclass(frozen=True, slots=True)
class DaskBossOptions:
    """What the Dask Boss process needs. Picklable (the spec is bytes)."""

    address: str | None
    security: Any  # distributed.Security | None
    local_cluster_kwargs: dict[str, Any]
    spec: bytes  # the WorkerSpec, cloudpickled in main; never unpickled by the Boss
    segment_prefix: str | None  # where main puts large jobs (Segments): read here
    worker_count: int
    read_size: int
    max_jobs: int | None
    main_pid: int


def job_header(raw: bytes) -> tuple[int, float]:
    """A JOB frame's job id and timeout."""
    frame = Frame.parse(raw)
    return frame.job_id, frame.timeout


# ---------------------------------------------------------------------------
# On the Dask workers: the plugin, its slots and their child processes
# ---------------------------------------------------------------------------


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


class _Child:
    """One child process and our end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket, read_size: int) -> None:
        self.proc = proc
        self.sock = sock
        self.decoder = Decoder(read_size)
        self.pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux >= 5.3 only
            self.pidfd = os.pidfd_open(proc.pid)
        self.ready = False
        self.init_error: str | None = None
        self.jobs_done = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_readable(self, deadline: float | None) -> tuple[bool, bool]:
        """Wait until the socket has bytes or the process exited (or the
        deadline passed). Returns (socket readable, process exited)."""
        watch: list[Any] = [self.sock]
        if self.pidfd is not None:
            watch.append(self.pidfd)
        while True:
            wait = 0.1 if self.pidfd is None else None
            if deadline is not None:
                left = max(0.0, deadline - time.monotonic())
                wait = left if wait is None else min(wait, left)
            readable, _, _ = select.select(watch, [], [], wait)
            exited = (self.pidfd in readable) if self.pidfd is not None else not self.alive()
            if readable or exited or (deadline is not None and time.monotonic() >= deadline):
                return self.sock in readable, exited

    def read(self) -> list[Frame] | None:
        """Read what is there (the socket must be readable). None at EOF."""
        try:
            n = self.sock.recv_into(self.decoder.get_buffer())
        except (BlockingIOError, InterruptedError):
            return []
        except OSError:
            n = 0
        if not n:
            return None
        self.decoder.buffer_updated(n)
        return self.decoder.take()

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

    def __init__(self, plugin: _PoolPlugin) -> None:
        self.plugin = plugin
        self.child: _Child | None = None
        self.starting: ConcurrentFuture[_Child] | None = None
        self.busy = False
        self.last_error = ""

    # -- children come and go --------------------------------------------------

    def spawn(self) -> None:
        """Have the launcher start a new child (without waiting for it)."""
        if self.starting is None and not self.plugin.closing:
            self.starting = self.plugin.launcher.call(self.plugin.start_child)

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
                self.last_error = f"BossWorkerAsync: could not start a worker: {describe_exception(exc)}"
                return None
        child = self.child
        while not child.ready:
            readable, exited = child.wait_readable(None)
            frames = child.read() if readable else []
            if frames is None or (exited and not readable):
                frames = (frames or []) + child.read_rest()
                self._take_handshake(child, frames)
                if child.ready:
                    break
                reason = self.plugin.reap(child)
                self.child = None
                self.last_error = child.init_error or f"worker exited ({reason}) before it was ready"
                return None
            self._take_handshake(child, frames)
        return child

    @staticmethod
    def _take_handshake(child: _Child, frames: list[Frame]) -> None:
        for frame in frames:
            if frame.kind == Kind.READY:
                child.ready = True
            elif frame.kind == Kind.INIT_FAILED:
                child.init_error = bytes(frame.payload).decode("utf-8", "replace")

    def ready_child(self) -> _Child | None:
        """A child ready for a job, started (again) if need be."""
        for attempt in range(START_ATTEMPTS):
            if self.plugin.closing:
                self.last_error = "BossWorkerAsync: the pool is shutting down"
                return None
            if self.child is not None and self.child.ready:
                if self.child.alive():
                    return self.child
                self.retire(kill=False)  # it died while idle
            if self.child is None:
                self.spawn()
            child = self.handshake()
            if child is not None:
                return child
            if attempt + 1 < START_ATTEMPTS:
                time.sleep(START_BACKOFF * 2**attempt)
        return None

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
        job_id, timeout = job_header(raw)
        child = self.ready_child()
        if child is None:
            text = f"BossWorkerAsync: no worker could start: {self.last_error}"
            return encode(Kind.ERROR, job_id, text.encode("utf-8", "replace"))
        self.busy = True
        try:
            return self._run(child, raw, job_id, timeout)
        finally:
            self.busy = False

    def _run(self, child: _Child, raw: bytes, job_id: int, timeout: float) -> bytes:
        deadline = None if timeout <= 0 else time.monotonic() + timeout + TIMEOUT_GRACE
        try:
            # The child is idle and reading: this takes no longer than the copy.
            child.sock.sendall(raw)
        except OSError:
            return self._died(job_id, [])
        while True:
            readable, exited = child.wait_readable(deadline)
            if readable:
                frames = child.read()
                if frames is None:
                    return self._died(job_id, [])
                answer = self._answer_in(child, job_id, frames)
                if answer is not None:
                    return answer
            elif exited:
                return self._died(job_id, child.read_rest())
            elif deadline is not None and time.monotonic() >= deadline:
                log.warning("job %d overran its deadline in worker %d; killing it", job_id, child.pid)
                self.retire(kill=True)
                return encode(Kind.TIMED_OUT, job_id)

    def _answer_in(self, child: _Child, job_id: int, frames: list[Frame]) -> bytes | None:
        for frame in frames:
            if frame.kind in (Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT) and frame.job_id == job_id:
                child.jobs_done += 1
                self.plugin.jobs_done += 1
                max_jobs = self.plugin.max_jobs
                if max_jobs is not None and child.jobs_done >= max_jobs:
                    self.release()
                return bytes(frame.raw)
        return None

    def _died(self, job_id: int, last_words: list[Frame]) -> bytes:
        child = self.child
        assert child is not None
        answer = self._answer_in(child, job_id, last_words)
        if answer is not None:
            return answer
        reason = self.retire(kill=False)
        log.warning("worker %d died (%s) while running job %d", child.pid, reason, job_id)
        text = f"BossWorkerAsync: worker died ({reason}) while running this job"
        return encode(Kind.ERROR, job_id, text.encode("utf-8", "replace"))


class _PoolPlugin(WorkerPlugin):
    """Lives on every Dask worker while its pool does."""

    idempotent = False

    def __init__(self, name: str, spec: bytes, read_size: int, max_jobs: int | None, lease: str) -> None:
        self.name = name
        self.spec = spec
        self.read_size = read_size
        self.max_jobs = max_jobs
        self.lease = lease

    def __getstate__(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("name", "spec", "read_size", "max_jobs", "lease")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    # -- set up and tear down (on the worker's event loop) ---------------------

    async def setup(self, worker: Any) -> None:
        self.closing = False
        self.killed = False
        self.set_up = threading.Event()
        self.lock = threading.Lock()
        self.children: set[_Child] = set()  # every child not yet reaped
        self.retiring: list[_Child] = []  # leaving by themselves (max_jobs)
        self.jobs_done = 0
        self.children_started = 0
        self.launcher = _Launcher()
        self.slots = [_Slot(self) for _ in range(max(1, int(worker.state.nthreads)))]
        self.free: queue.SimpleQueue[_Slot] = queue.SimpleQueue()
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
        if not hasattr(self, "launcher"):
            return  # its setup failed before it started anything
        if hasattr(self, "watchdog"):
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
        # Let the launcher finish the starts it was asked for: then every
        # child is in ``children``.
        with contextlib.suppress(Exception):  # already stopped: closed before
            self.launcher.call(lambda: None).result(timeout=30)
        with self.lock:
            children = list(self.children)
        for child in children:
            if graceful and child.alive():
                with contextlib.suppress(OSError):
                    child.sock.sendall(encode(Kind.SHUTDOWN))
            else:
                child.kill()
        for child in children:
            self.reap(child, EXIT_WAIT if graceful else 1.0)
        self.launcher.stop()

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
            boot = pickle.dumps(
                {"path": list(sys.path), "fd": theirs.fileno(), "spec": self.spec, "parent_pid": os.getpid()},
                protocol=pickle.HIGHEST_PROTOCOL,
            )
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD_BOOT],
                stdin=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
                close_fds=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        child = _Child(proc, ours, self.read_size)
        with self.lock:
            self.children_started += 1
            self.children.add(child)
        assert proc.stdin is not None
        try:
            proc.stdin.write(boot)
            proc.stdin.close()
        except OSError:
            pass  # it died at once; the handshake will say so
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


def _plugin(worker: Any, name: str, wait: bool = False) -> _PoolPlugin | None:
    """The pool's plugin on this worker, once set up (waiting for its set-up
    to end if ``wait``), or None."""
    plugin = worker.plugins.get(name)
    if not isinstance(plugin, _PoolPlugin) or not hasattr(plugin, "set_up"):
        return None
    if wait:
        plugin.set_up.wait()
    if not plugin.set_up.is_set() or plugin.closing:
        return None
    return plugin


def _run_job(raw: bytes, name: str) -> bytes:
    """The Dask task: one JOB frame in, its answer frame out."""
    plugin = _plugin(get_worker(), name, wait=True)
    if plugin is None:
        job_id, _timeout = job_header(raw)
        text = "BossWorkerAsync: the pool is not set up on this Dask worker (is it shutting down?)"
        return encode(Kind.ERROR, job_id, text.encode())
    return plugin.run(raw)


def _lease() -> None:
    """The lease task: its key lives on the scheduler as long as the Dask Boss."""


def _plugin_stats(name: str, dask_worker: Any = None) -> dict[str, Any] | None:
    plugin = _plugin(dask_worker, name)
    return None if plugin is None else plugin.stats()


def _plugin_kill(name: str, dask_worker: Any = None) -> None:
    plugin = _plugin(dask_worker, name)
    if plugin is not None:
        plugin.kill_all()


# ---------------------------------------------------------------------------
# The Dask Boss process
# ---------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Counters:
    added: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0


@dataclass(eq=False)
class DaskBoss:
    """The Dask Boss's event loop (asyncio; Dask's client lives in it too)."""

    main: socket.socket
    options: DaskBossOptions
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def __post_init__(self) -> None:
        self.name = f"bossworker-{self.token}"
        self.main.setblocking(False)
        self.main_in = Decoder(self.options.read_size)
        self.main_out = SendQueue()
        self.writing = False
        self.main_open = True
        self.flushed = asyncio.Event()
        self.flushed.set()
        self.loop = asyncio.get_running_loop()
        self.client: Any = None
        self.cluster: Any = None
        self.plugin_registered = False
        self.lease: Any = None  # a distributed.Future
        self.inflight: dict[str, Any] = {}  # distributed.Futures by key
        self.finished: list[Any] = []  # answered; to be released
        self.batch: list[tuple[bytes, str, int]] = []  # read from main, to submit
        self.release_timer: asyncio.TimerHandle | None = None
        self.stats_lock = asyncio.Lock()
        self.ready = False
        self.draining = False
        self.stopping = False
        self.done = asyncio.Event()  # set when run() should return
        self.counters = _Counters()
        self.background: set[asyncio.Task[Any]] = set()

    # -- the whole life ----------------------------------------------------------

    async def run(self) -> None:
        self.loop.add_reader(self.main.fileno(), self._read_main)
        self.loop.add_signal_handler(signal.SIGTERM, self.force_stop, "SIGTERM")
        self._spawn(self._check_parent())
        starting = self._spawn(self._start())
        await self.done.wait()
        starting.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _start(self) -> None:
        try:
            await self._connect()
            self.lease = self.client.submit(_lease, key=f"{self.name}-lease", pure=False)
            await wait(self.lease)  # type: ignore[no-untyped-call]
            plugin = _PoolPlugin(
                self.name,
                self.options.spec,
                self.options.read_size,
                self.options.max_jobs,
                str(self.lease.key),
            )
            await self.client.register_plugin(plugin, name=self.name)
            self.plugin_registered = True
            init = await self.client.run(_plugin_stats, self.name, on_error="return")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - main is told, then we leave
            log.error("the Dask Boss could not start: %s", exc)
            self._send(encode(Kind.INIT_FAILED, 0, self._start_error(exc).encode("utf-8", "replace")))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flushed.wait(), FORCED_STOP_BUDGET)
            await self._stop(graceful=False)
            return
        errors = []
        for info in init.values():
            if isinstance(info, dict):
                errors += [e for e in info["init"] if e is not None]
                if any(e is None for e in info["init"]):
                    self.ready = True
        if self.ready:
            self._send(encode(Kind.READY))
        else:
            text = errors[0] if errors else "no Dask worker could start a worker"
            self._send(encode(Kind.INIT_FAILED, 0, text.encode("utf-8", "replace")))
            # Main answers INIT_FAILED with a forced stop; wait for it.

    def _start_error(self, exc: BaseException) -> str:
        where = self.options.address or "a new local cluster"
        return f"BossWorkerAsync: could not start on the Dask cluster at {where}: {describe_exception(exc)}"

    async def _connect(self) -> None:
        opts = self.options
        if opts.address is None:
            kwargs: dict[str, Any] = {
                "n_workers": opts.worker_count,
                "threads_per_worker": 1,
                "processes": True,
                "host": "127.0.0.1",
                "dashboard_address": None,
            }
            if opts.security is not None:
                kwargs["security"] = opts.security
            kwargs.update(opts.local_cluster_kwargs)
            self.cluster = await LocalCluster(asynchronous=True, **kwargs)  # type: ignore[no-untyped-call]
            self.client = await Client(self.cluster, asynchronous=True, name=self.name)  # type: ignore[no-untyped-call]
        else:
            self.client = await Client(  # type: ignore[no-untyped-call]
                opts.address, security=opts.security, asynchronous=True, name=self.name
            )
        await self.client.wait_for_workers(1)

    # -- main's side -------------------------------------------------------------

    def _read_main(self) -> None:
        decoder = self.main_in
        while True:
            try:
                n = self.main.recv_into(decoder.get_buffer())
            except (BlockingIOError, InterruptedError):
                self._submit_batch()
                return
            except OSError:
                n = 0
            if not n:
                self.loop.remove_reader(self.main.fileno())
                self.main_open = False
                self.force_stop("main closed its socket")
                return
            decoder.buffer_updated(n)
            for frame in decoder.take():
                self._on_main_frame(frame)

    def _on_main_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Kind.JOB:
            self.counters.added += 1
            self._prepare(frame)
        elif kind == Kind.SHUTDOWN:
            if not self.draining:
                self.draining = True
                self._maybe_finish()
        elif kind == Kind.STATS_REQUEST:
            self._spawn(self._answer_stats())
        elif kind == Kind.CANCEL:
            # Jobs go to the scheduler as soon as they arrive: none waits
            # here to be dropped, so a cancel never succeeds on Dask.
            self._send(encode(Kind.CANCEL_REPLY, frame.job_id, b"\x00"))
        else:
            log.error("unexpected %s frame from main; ignored", Kind(kind).name)

    def _send(self, data: bytes | bytearray) -> None:
        if not self.main_open:
            return
        self.main_out.append(data)
        self._flush_main()

    def _flush_main(self) -> None:
        out = self.main_out
        while out and self.main_open:
            try:
                out.consume(self.main.sendmsg(out.chunks()))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.main_open = False
                out.clear()
                self.force_stop("main's socket broke")
        want = bool(out) and self.main_open
        if want != self.writing:
            if want:
                self.loop.add_writer(self.main.fileno(), self._flush_main)
                self.flushed.clear()
            else:
                self.loop.remove_writer(self.main.fileno())
            self.writing = want
        if not want:
            self.flushed.set()

    # -- jobs ----------------------------------------------------------------------

    def _prepare(self, frame: Frame) -> None:
        """Queue a job for :meth:`_submit_batch` (or scatter it first)."""
        if self.stopping:
            return
        key = f"{self.name}-job-{frame.job_id}"
        if frame.flags & Flag.SEGMENT:
            # Main left the payload in a shared-memory file on this machine;
            # a Dask worker may be on another: the payload goes inline.
            try:
                payload = self._take_segment(frame.job_id)
            except OSError as exc:
                text = f"BossWorkerAsync: the job's payload is lost: {exc}"
                self._answer(encode(Kind.ERROR, frame.job_id, text.encode("utf-8", "replace")))
                return
            raw = encode(Kind.JOB, frame.job_id, payload, frame.timeout)
        else:
            raw = bytes(frame.raw)
        if len(raw) > SCATTER_ABOVE:
            self._spawn(self._submit_large(raw, key, frame.job_id))
            return
        self.batch.append((raw, key, frame.job_id))

    def _submit_batch(self) -> None:
        """Submit the jobs read from main in one go: one graph for them all."""
        batch, self.batch = self.batch, []
        if not batch or self.stopping:
            return
        self._release_done()  # in the same batch of messages as the jobs
        if len(batch) == 1:
            raw, key, job_id = batch[0]
            self._track(self.client.submit(_run_job, raw, self.name, key=key, pure=False), job_id)
            return
        raws, keys, ids = zip(*batch, strict=True)
        futures = self.client.map(_run_job, raws, [self.name] * len(raws), key=list(keys), pure=False)
        for future, job_id in zip(futures, ids, strict=True):
            self._track(future, job_id)

    async def _submit_large(self, raw: bytes, key: str, job_id: int) -> None:
        try:
            data = await self.client.scatter(raw, hash=False)
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            if not self.stopping:
                text = f"BossWorkerAsync: the job could not be sent to a Dask worker: {exc!r}"
                self._answer(encode(Kind.ERROR, job_id, text.encode("utf-8", "replace")))
            return
        if self.stopping:
            return
        future = self.client.submit(_run_job, data, self.name, key=key, pure=False)
        del data
        self._track(future, job_id)

    def _release_later(self, future: Any) -> None:
        """Let Dask forget a finished task, soon.

        Not at once: Dask's client sends at most one batch of messages per
        10 ms, and a release sent alone would hold back the next job by up
        to that much.  Releases go with the next job's submission, or in
        bulk after a short while.
        """
        self.finished.append(future)
        if len(self.finished) >= RELEASE_BATCH:
            self._release_done()
        elif self.release_timer is None:
            self.release_timer = self.loop.call_later(RELEASE_DELAY, self._release_done)

    def _release_done(self) -> None:
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.release_timer = None
        finished, self.finished = self.finished, []
        for future in finished:
            future.release()

    def _take_segment(self, job_id: int) -> bytes:
        assert self.options.segment_prefix is not None
        path = f"{self.options.segment_prefix}{job_id}-j"
        with open(path, "rb") as f:
            os.unlink(path)
            return f.read()

    def _track(self, future: Any, job_id: int) -> None:
        self.inflight[str(future.key)] = future
        self._spawn(self._forward(future, job_id))

    async def _forward(self, future: Any, job_id: int) -> None:
        try:
            answer = await future
        except asyncio.CancelledError:
            if self.stopping:
                return
            answer = encode(Kind.ERROR, job_id, b"BossWorkerAsync: the Dask task was cancelled")
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            answer = encode(Kind.ERROR, job_id, self._task_error(exc).encode("utf-8", "replace"))
        finally:
            self.inflight.pop(str(future.key), None)
            self._release_later(future)
        if not self.stopping:
            self._answer(answer)

    def _answer(self, answer: bytes) -> None:
        """Count an answer frame and send it to main."""
        kind = answer[0]
        counters = self.counters
        counters.completed += 1
        if kind != Kind.RESULT:
            counters.failed += 1
            if kind == Kind.TIMED_OUT:
                counters.timed_out += 1
        self._send(answer)
        self._maybe_finish()

    @staticmethod
    def _task_error(exc: BaseException) -> str:
        if type(exc).__name__ == "KilledWorker":
            return f"BossWorkerAsync: worker died (its Dask worker died: {exc}) while running this job"
        return f"BossWorkerAsync: the Dask task failed: {describe_exception(exc)}"

    async def _answer_stats(self) -> None:
        async with self.stats_lock:
            counters = self.counters
            running = alive = started = 0
            jobs: dict[str, int] = {}
            if self.plugin_registered and not self.stopping:
                try:
                    infos = await self.client.run(_plugin_stats, self.name, on_error="return")
                except Exception:  # noqa: BLE001 - answer with what we know
                    infos = {}
                for info in infos.values():
                    if isinstance(info, dict):
                        running += info["running"]
                        alive += info["alive"]
                        started += info["started"]
                        jobs.update(info["jobs"])
            in_flight = counters.added - counters.completed
            running = min(running, in_flight)
            body = {
                "added": counters.added,
                "completed": counters.completed,
                "failed": counters.failed,
                "timed_out": counters.timed_out,
                "queued": max(0, in_flight - running),
                "running": running,
                "workers_alive": alive,
                "workers_started": started,
                "jobs_per_worker": jobs,
            }
            self._send(encode(Kind.STATS, 0, json.dumps(body).encode()))

    # -- the end ---------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        counters = self.counters
        if self.draining and self.ready and not self.stopping and counters.completed == counters.added:
            self._spawn(self._stop(graceful=True))

    def force_stop(self, why: str) -> None:
        """SIGTERM or main gone: stop everything now, within the budget."""
        if not self.main_open:
            # Nobody will read the jobs still waiting in shared memory.
            Segments(self.options.segment_prefix).discard_all()
        if self.stopping:
            return
        log.debug("forced stop: %s", why)
        self.loop.call_later(FORCED_STOP_BUDGET, self.done.set)
        self._spawn(self._stop(graceful=False))

    async def _stop(self, graceful: bool) -> None:
        if self.stopping:
            return
        self.stopping = True
        client = self.client
        try:
            if client is not None and not graceful:
                futures = list(self.inflight.values())
                self.inflight.clear()
                if futures:
                    await client.cancel(futures, force=True)
                if self.plugin_registered:
                    await client.run(_plugin_kill, self.name, on_error="ignore")
            if client is not None and self.plugin_registered:
                await client.unregister_worker_plugin(self.name)
                self.plugin_registered = False
            if graceful:
                if self.lease is not None:
                    self.lease.release()
                if client is not None:
                    await client.close()
                if self.cluster is not None:
                    await self.cluster.close()
        except Exception:
            log.exception("the Dask Boss could not clean up")
        if graceful:
            self._send(encode(Kind.BYE))
            await self.flushed.wait()
        self.done.set()

    async def _check_parent(self) -> None:
        while True:
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != self.options.main_pid:
                self.main_open = False
                self.force_stop("main process is gone")
                return


def boss_main(boot: dict[str, Any]) -> None:
    """Entry point of the Dask Boss process (see ``DaskBackend.start``)."""
    _stdin_from_devnull()
    main_sock = socket.socket(fileno=boot["fd"])
    options = pickle.loads(boot["options"])
    run_dask_boss(main_sock, options)


def run_dask_boss(main_sock: socket.socket, options: DaskBossOptions) -> None:
    """The body of the Dask Boss process. Never returns: it ends in ``os._exit``."""
    ignore_interrupts()
    code = 0
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def main() -> None:
        await DaskBoss(main_sock, options).run()

    try:
        loop.run_until_complete(main())
    except BaseException:  # noqa: BLE001 - say so, then leave
        traceback.print_exc()
        code = 1
    # No clean-up of the loop, its threads or the cluster's processes: what had
    # to be closed is closed; a cluster we started dies with us.
    exit_now(code)

"""Where the Dask Boss's workers live: a Dask cluster (in the Dask Boss process).

:class:`DaskFleet` is the :class:`~bossworker.boss.core.Fleet` of the Dask
Boss: the shared :class:`~bossworker.boss.core.BossCore` says everything main
hears, and this fleet only runs jobs and reports what happened to the core:

* :meth:`DaskFleet.start` connects (or starts a local cluster), takes the
  *lease*, registers the plugin and reports each worker slot's start-up to
  the core (ready ones first: one ready slot makes the pool serve);
* :meth:`submit` takes raw JOB frames, :meth:`flush` sends what was taken
  since the last flush as one Dask graph (a JOB over :data:`SCATTER_ABOVE`
  is scattered first, alone);
* every answer goes to the core (``deliver``), the fleet's own failures (a
  lost payload, a failed or cancelled task) as the core's ERROR answers;
* :meth:`request_numbers` asks every plugin; :meth:`retire_all` closes the
  fleet gracefully (the plugins' teardown sends SHUTDOWN to each child),
  :meth:`kill_all` by force (tasks cancelled, children killed).

What happens later (an answer, STATS numbers, the end of a close) happens in
a task of the Dask Boss's loop; each then calls ``wake`` so that the driver
moves the core on and sends main what it has.

Each JOB is one Dask task (:func:`~bossworker.dask.plugin.run_job`, unique
key, ``pure=False``); the fleet never unpickles a job or a result.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Coroutine
from typing import Any

from distributed import Client, LocalCluster, wait

from ..boss.core import BossCore, FleetNumbers
from ..errors import (
    DASK_TASK_CANCELLED_ERROR,
    NO_DASK_SLOT_ERROR,
    dask_start_error,
    dask_task_failed_error,
    dask_worker_died_error,
    dask_worker_died_reason,
    job_not_sent_error,
    job_payload_lost_error,
)
from ..jobs import Facts, job_frame
from ..protocol import HEADER_SIZE, Flag, Frame, InitFailure, Kind
from ..worker import describe_exception
from .launch import DaskBossOptions
from .plugin import PoolPlugin, lease_task, plugin_kill, plugin_stats, run_job

__all__ = ["SCATTER_ABOVE", "DaskFleet"]

log = logging.getLogger("bossworker")

# A JOB frame larger than this is scattered to a worker first instead of
# travelling inside the task graph through the scheduler.
SCATTER_ABOVE = 1024 * 1024
# Finished tasks are released in batches of this many, or after this delay.
RELEASE_BATCH = 256
RELEASE_DELAY = 0.2

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class DaskFleet:
    """The pool's workers on a Dask cluster, driven from the Dask Boss's loop.
    See the module docstring."""

    def __init__(
        self, options: DaskBossOptions, name: str, core: BossCore, spawn: Spawn, wake: Callable[[], None]
    ) -> None:
        self.options = options
        self.name = name
        self.core = core
        self._spawn = spawn
        self._wake = wake  # something happened outside the driver's own calls: move the core on
        self._loop = asyncio.get_running_loop()
        self.client: Any = None
        self.cluster: Any = None
        self.plugin_registered = False
        self.lease: Any = None  # a distributed.Future
        # Each job out on the cluster: its Dask future and its JOB header
        # (all the core needs of the job when its answer comes), by key.
        self.inflight: dict[str, tuple[Any, Frame]] = {}
        self.scattering = 0  # large jobs being scattered, not yet in ``inflight``
        self.finished: list[Any] = []  # answered; to be released
        self.batch: list[tuple[bytes, str, Frame]] = []  # taken by submit(), to send at flush()
        self.release_timer: asyncio.TimerHandle | None = None
        self._stats_lock = asyncio.Lock()
        self.closed = False  # a close began: no job goes out, no answer comes back
        self.gone = False  # the close is over: no worker of ours is left

    # -- start --------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, take the lease, register the plugin on every Dask worker,
        and tell the core how each worker slot started (or that the fleet
        could not start at all)."""
        try:
            results = await self._start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - main is told; it stops us
            log.error("the Dask Boss could not start: %s", exc)
            where = self.options.address or "a new local cluster"
            self.core.fleet_failed(dask_start_error(where, describe_exception(exc)))
            return
        if not results:
            self.core.fleet_failed(NO_DASK_SLOT_ERROR)
            return
        self.core.slots_known(len(results))
        # The ready ones first: one ready slot is enough to serve.
        for error in results:
            if error is None:
                self.core.worker_ready()
        for error in results:
            if error is not None:
                self.core.worker_start_failed(error, InitFailure.WORKERS, killed=False)

    async def _start(self) -> list[str | None]:
        """One start-up result per worker slot: None if it is ready, else
        why it failed.  Raises what connecting or registering raised."""
        await self._connect()
        self.lease = self.client.submit(lease_task, key=f"{self.name}-lease", pure=False)
        await wait(self.lease)  # type: ignore[no-untyped-call]
        opts = self.options
        plugin = PoolPlugin(
            self.name, opts.spec, opts.read_size, opts.max_jobs, opts.exit_limit, str(self.lease.key)
        )
        await self.client.register_plugin(plugin, name=self.name)
        self.plugin_registered = True
        init = await self.client.run(plugin_stats, self.name, on_error="return")
        results: list[str | None] = []
        for info in init.values():
            if isinstance(info, dict):
                results += info["init"]
        return results

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

    # -- the Fleet seam (see boss.core.Fleet) -------------------------------------------

    def submit(self, jobs: list[bytes | bytearray]) -> None:
        """Take these JOB frames; they go out at the next :meth:`flush` (or,
        if large, once scattered)."""
        for raw in jobs:
            self._take(Frame.parse(raw))

    def cancel(self, job_ids: set[int]) -> set[int]:
        # Jobs go to the scheduler as soon as a read from main ends: none
        # waits here to be dropped, so a cancel never succeeds on Dask.
        return set()

    def busy(self) -> bool:
        return bool(self.batch or self.scattering or self.inflight)

    def has_workers(self) -> bool:
        return not self.gone

    def can_serve(self) -> bool:
        return self.plugin_registered and not self.closed

    def take_queued(self) -> list[int]:
        # Nothing is queued here (see cancel); a slot whose child cannot
        # start answers its jobs itself (plugin.py).
        return []

    def retire_all(self) -> None:
        self._close(graceful=True)

    def kill_all(self) -> None:
        self._close(graceful=False)

    def request_numbers(self, reply: Callable[[FleetNumbers], None]) -> None:
        self._spawn(self._numbers(reply))

    # -- jobs ------------------------------------------------------------------------

    def _take(self, frame: Frame) -> None:
        if self.closed:
            return
        key = f"{self.name}-job-{frame.job_id}"
        head = Frame.parse(bytes(frame.raw[:HEADER_SIZE]))
        if frame.flags & Flag.SEGMENT:
            # Main left the payload in a shared-memory file on this machine;
            # a Dask worker may be on another: the payload goes inline.
            try:
                payload = self._take_segment(frame.job_id)
            except OSError as exc:
                self.core.answer(frame.job_id, Kind.ERROR, job_payload_lost_error(exc))
                return
            raw = job_frame(frame.job_id, payload, frame.limit)
        else:
            raw = bytes(frame.raw)
        if len(raw) > SCATTER_ABOVE:
            self.scattering += 1
            self._spawn(self._submit_large(raw, key, head))
            return
        self.batch.append((raw, key, head))

    def flush(self) -> None:
        """Submit the jobs taken since the last flush in one go: one graph for them all."""
        batch, self.batch = self.batch, []
        if not batch or self.closed:
            return
        self._release_done()  # in the same batch of messages as the jobs
        if len(batch) == 1:
            raw, key, head = batch[0]
            self._track(self.client.submit(run_job, raw, self.name, key=key, pure=False), head)
            return
        raws, keys, heads = zip(*batch, strict=True)
        futures = self.client.map(run_job, raws, [self.name] * len(raws), key=list(keys), pure=False)
        for future, head in zip(futures, heads, strict=True):
            self._track(future, head)

    async def _submit_large(self, raw: bytes, key: str, head: Frame) -> None:
        try:
            data = await self.client.scatter(raw, hash=False)
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            self.scattering -= 1
            if not self.closed:
                self.core.answer(head.job_id, Kind.ERROR, job_not_sent_error(exc))
                self._wake()
            return
        self.scattering -= 1
        if self.closed:
            return
        future = self.client.submit(run_job, data, self.name, key=key, pure=False)
        del data
        self._track(future, head)

    def _take_segment(self, job_id: int) -> bytes:
        assert self.options.segment_prefix is not None
        path = f"{self.options.segment_prefix}{job_id}-j"
        with open(path, "rb") as f:
            os.unlink(path)
            return f.read()

    def _track(self, future: Any, head: Frame) -> None:
        self.inflight[str(future.key)] = (future, head)
        self._spawn(self._forward(future, head))

    async def _forward(self, future: Any, head: Frame) -> None:
        answer: bytes | None = None
        error, flags, facts = "", 0, None
        try:
            answer = await future
        except asyncio.CancelledError:
            if self.closed:
                return
            error = DASK_TASK_CANCELLED_ERROR
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            error, flags, facts = self._task_error(exc)
        finally:
            self.inflight.pop(str(future.key), None)
            self._release_later(future)
        if self.closed:
            return
        if answer is None:
            self.core.answer(head.job_id, Kind.ERROR, error, flags, facts=facts)
        else:
            # Main lets no job on Dask be retried (Pool refuses retries= for
            # any backend but the local one), so the core never asks for a
            # retry here: the job's bytes are not kept to send it again.
            retry = self.core.deliver(head, Frame.parse(answer))
            assert not retry, "a Dask job was to be retried"
        self._wake()

    @staticmethod
    def _task_error(exc: BaseException) -> tuple[str, int, Facts | None]:
        """The ERROR text, flags and facts of a job whose Dask task raised ``exc``."""
        if type(exc).__name__ == "KilledWorker":  # a death, as our Boss reports one
            return dask_worker_died_error(exc), Flag.DIED, Facts(reason=dask_worker_died_reason(exc))
        return dask_task_failed_error(describe_exception(exc)), 0, None

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
            self.release_timer = self._loop.call_later(RELEASE_DELAY, self._release_done)

    def _release_done(self) -> None:
        if self.release_timer is not None:
            self.release_timer.cancel()
            self.release_timer = None
        finished, self.finished = self.finished, []
        for future in finished:
            future.release()

    # -- stats and the end -------------------------------------------------------------

    async def _numbers(self, reply: Callable[[FleetNumbers], None]) -> None:
        """Ask every plugin for its numbers and ``reply`` with their sum.
        Zeros once closed or before the plugin is registered, and what
        could be had if a worker does not answer.  Replies go in the order
        they were asked for: each waits for the one before it."""
        async with self._stats_lock:
            running = alive = started = 0
            jobs: dict[int, int] = {}
            if self.plugin_registered and not self.closed:
                try:
                    infos = await self.client.run(plugin_stats, self.name, on_error="return")
                except Exception:  # noqa: BLE001 - answer with what we know
                    infos = {}
                for info in infos.values():
                    if isinstance(info, dict):
                        running += info["running"]
                        alive += info["alive"]
                        started += info["started"]
                        jobs.update({int(pid): n for pid, n in info["jobs"].items()})
            # A job whose answer is already here is not running, whatever a
            # plugin asked a moment earlier says.
            running = min(running, len(self.batch) + self.scattering + len(self.inflight))
            reply(FleetNumbers(running, alive, started, jobs))
        self._wake()

    def _close(self, graceful: bool) -> None:
        """Begin to retire every worker (``graceful``: each finishes and runs
        its exit handler; then the lease, the client and a cluster we started
        are closed) or to kill them all and cancel every task.  No job goes
        out and no answer is forwarded from now on; the fleet is gone when
        the close ends.  A close already under way is left to finish (after
        a forced stop, the driver leaves within its budget anyway)."""
        if not self.closed:
            self.closed = True
            self._spawn(self._closing(graceful))

    async def _closing(self, graceful: bool) -> None:
        try:
            await self._shut(graceful)
        except Exception:
            log.exception("the Dask Boss could not clean up")
        finally:
            self.gone = True
            self._wake()

    async def _shut(self, graceful: bool) -> None:
        client = self.client
        if client is not None and not graceful:
            futures = [future for future, _ in self.inflight.values()]
            self.inflight.clear()
            if futures:
                await client.cancel(futures, force=True)
            if self.plugin_registered:
                await client.run(plugin_kill, self.name, on_error="ignore")
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

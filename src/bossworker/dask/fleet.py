"""Where the Dask Boss's workers live: a Dask cluster (in the Dask Boss process).

The Dask Boss (:mod:`bossworker.dask.boss`) says everything main hears; this
fleet only runs jobs.  Its seam, the shape a shared Boss core will drive:

* :meth:`DaskFleet.start` connects (or starts a local cluster), takes the
  *lease* and registers the plugin; it returns each worker slot's start-up
  result (None: ready; else the error text);
* :meth:`submit` takes a raw JOB frame, :meth:`flush` sends what was taken
  since the last flush as one Dask graph (a JOB over
  :data:`SCATTER_ABOVE` is scattered first, alone);
* every answer frame comes back through ``on_answer``, the fleet's own
  failures (a lost payload, a failed or cancelled task) as ERROR answers;
* :meth:`stats` asks every plugin; :meth:`close` retires the workers
  (gracefully: the plugins' teardown sends SHUTDOWN to each child) or kills
  them (a forced stop).

Each JOB is one Dask task (:func:`~bossworker.dask.plugin.run_job`, unique
key, ``pure=False``); the fleet never unpickles a job or a result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any

from distributed import Client, LocalCluster, wait

from ..errors import (
    DASK_TASK_CANCELLED_ERROR,
    dask_task_failed_error,
    dask_worker_died_error,
    job_not_sent_error,
    job_payload_lost_error,
)
from ..jobs import error_answer, job_frame
from ..protocol import Flag, Frame
from ..worker import describe_exception
from .launch import DaskBossOptions
from .plugin import PoolPlugin, lease_task, plugin_kill, plugin_stats, run_job

__all__ = ["SCATTER_ABOVE", "DaskFleet", "FleetStats"]

# A JOB frame larger than this is scattered to a worker first instead of
# travelling inside the task graph through the scheduler.
SCATTER_ABOVE = 1024 * 1024
# Finished tasks are released in batches of this many, or after this delay.
RELEASE_BATCH = 256
RELEASE_DELAY = 0.2

#: What :meth:`DaskFleet.stats` reports: jobs running, workers alive,
#: workers started, and jobs done by each live worker (by pid, as text).
FleetStats = tuple[int, int, int, dict[str, int]]

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class DaskFleet:
    """The pool's workers on a Dask cluster, driven from the Dask Boss's loop."""

    def __init__(
        self, options: DaskBossOptions, name: str, on_answer: Callable[[bytes], None], spawn: Spawn
    ) -> None:
        self.options = options
        self.name = name
        self._on_answer = on_answer
        self._spawn = spawn
        self._loop = asyncio.get_running_loop()
        self.client: Any = None
        self.cluster: Any = None
        self.plugin_registered = False
        self.lease: Any = None  # a distributed.Future
        self.inflight: dict[str, Any] = {}  # distributed.Futures by key
        self.finished: list[Any] = []  # answered; to be released
        self.batch: list[tuple[bytes, str, int]] = []  # taken by submit(), to send at flush()
        self.release_timer: asyncio.TimerHandle | None = None
        self.closed = False  # close() began: no job goes out, no answer comes back

    # -- start --------------------------------------------------------------------

    async def start(self) -> list[str | None]:
        """Connect, take the lease, register the plugin on every Dask worker.
        Returns one start-up result per worker slot: None if it is ready,
        else why it failed.  Raises what connecting or registering raised."""
        await self._connect()
        self.lease = self.client.submit(lease_task, key=f"{self.name}-lease", pure=False)
        await wait(self.lease)  # type: ignore[no-untyped-call]
        opts = self.options
        plugin = PoolPlugin(self.name, opts.spec, opts.read_size, opts.max_jobs, str(self.lease.key))
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

    # -- jobs ------------------------------------------------------------------------

    def submit(self, frame: Frame) -> None:
        """Take a JOB frame; it goes out at the next :meth:`flush` (or, if
        large, once scattered)."""
        if self.closed:
            return
        key = f"{self.name}-job-{frame.job_id}"
        if frame.flags & Flag.SEGMENT:
            # Main left the payload in a shared-memory file on this machine;
            # a Dask worker may be on another: the payload goes inline.
            try:
                payload = self._take_segment(frame.job_id)
            except OSError as exc:
                self._on_answer(error_answer(frame.job_id, job_payload_lost_error(exc)))
                return
            raw = job_frame(frame.job_id, payload, frame.timeout)
        else:
            raw = bytes(frame.raw)
        if len(raw) > SCATTER_ABOVE:
            self._spawn(self._submit_large(raw, key, frame.job_id))
            return
        self.batch.append((raw, key, frame.job_id))

    def flush(self) -> None:
        """Submit the jobs taken since the last flush in one go: one graph for them all."""
        batch, self.batch = self.batch, []
        if not batch or self.closed:
            return
        self._release_done()  # in the same batch of messages as the jobs
        if len(batch) == 1:
            raw, key, job_id = batch[0]
            self._track(self.client.submit(run_job, raw, self.name, key=key, pure=False), job_id)
            return
        raws, keys, ids = zip(*batch, strict=True)
        futures = self.client.map(run_job, raws, [self.name] * len(raws), key=list(keys), pure=False)
        for future, job_id in zip(futures, ids, strict=True):
            self._track(future, job_id)

    async def _submit_large(self, raw: bytes, key: str, job_id: int) -> None:
        try:
            data = await self.client.scatter(raw, hash=False)
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            if not self.closed:
                self._on_answer(error_answer(job_id, job_not_sent_error(exc)))
            return
        if self.closed:
            return
        future = self.client.submit(run_job, data, self.name, key=key, pure=False)
        del data
        self._track(future, job_id)

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
            if self.closed:
                return
            answer = error_answer(job_id, DASK_TASK_CANCELLED_ERROR)
        except Exception as exc:  # noqa: BLE001 - the job's ERROR
            answer = error_answer(job_id, self._task_error(exc))
        finally:
            self.inflight.pop(str(future.key), None)
            self._release_later(future)
        if not self.closed:
            self._on_answer(answer)

    @staticmethod
    def _task_error(exc: BaseException) -> str:
        if type(exc).__name__ == "KilledWorker":
            return dask_worker_died_error(exc)
        return dask_task_failed_error(describe_exception(exc))

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

    async def stats(self) -> FleetStats:
        """Ask every plugin: (jobs running, workers alive, workers started,
        jobs done by each live worker).  Zeros once closed or before the
        plugin is registered, and what could be had if a worker does not answer."""
        running = alive = started = 0
        jobs: dict[str, int] = {}
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
                    jobs.update(info["jobs"])
        return running, alive, started, jobs

    async def close(self, graceful: bool) -> None:
        """Retire every worker (``graceful``: each finishes and runs its exit
        handler; then the lease, the client and a cluster we started are
        closed) or kill them all and cancel every task.  No answer is
        forwarded from the moment this is called."""
        self.closed = True
        client = self.client
        if client is not None and not graceful:
            futures = list(self.inflight.values())
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

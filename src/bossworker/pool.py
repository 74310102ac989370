"""The public class: :class:`BossWorkerAsync`."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import sys
import threading
import time
import warnings
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Self, TypeVar, overload

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only async users pay it
    from . import aio

from . import byvalue, checks, streams
from .backend import Backend, BossHandle, LocalBackend, default_start_method
from .checks import StartMethod
from .client import Client, JobRecord, Lane
from .config import BossConfig, WorkerSpec
from .errors import (
    NOT_IMPORTABLE_HINT,
    BossDiedError,
    InvalidArgumentError,
    SerializationError,
    ShutDownError,
)
from .jobs import result_value
from .outcome import Outcome, cancelled_outcome, error_from_answer, make_outcome, unpickling_error
from .payload import PICKLE_PROTOCOL, Pickled, Segments, dump, new_prefix
from .process import pickle_as_if_spawning
from .protocol import Flag, Frame, Kind
from .stats import Stats

__all__ = ["BossWorkerAsync", "StartMethod"]

log = logging.getLogger("bossworker")

P = ParamSpec("P")
J = TypeVar("J")  # a job: what the work handler takes
R = TypeVar("R")  # a result: what the work handler (or the result_handler) returns

# How long a worker may take to start (its init_handler included) unless
# the constructor's init_timeout= says otherwise.
DEFAULT_INIT_TIMEOUT = 60.0

# How long a graceful stop waits for the Boss to exit after its BYE, and a
# forced stop waits after SIGTERM, before killing it.
_JOIN_TIMEOUT = 5.0
_FORCE_TIMEOUT = 1.0
# Makes a pool's one SocketWaiter (two would register twice on one loop).
_WAITER_LOCK = threading.Lock()


class BossWorkerAsync(Generic[J, R]):
    """A Boss process and ``worker_count`` preforked workers.

    Generic in ``J``, the job type, and ``R``, the result type, both
    inferred from ``work_handler: Callable[[J], R]``: ``add_work`` takes
    ``J``s and ``get_result`` returns ``R | dict[str, str]``, the dict being
    a failed job's ``{"ERROR": ...}`` (or ``{}`` for a ``None`` result).
    With a ``result_handler``, ``R`` covers what either returns (mypy
    joins the two, e.g. ``object`` for ``int`` and ``str``).

    Feed it jobs with :meth:`add_work` and collect results with
    :meth:`get_result` at any time, interleaved, blocking or not.  See the
    README for the full contract; in short:

    * results come back in completion order; ``with_id=True`` pairs each with
      the id :meth:`add_work` returned for its job;
    * an exception in a handler, a timeout or a worker's death is that job's
      result, ``{"ERROR": "..."}``; the pool carries on;
    * every job added gets exactly one result unless you force-stop the pool
      or the Boss itself dies (then :class:`BossDiedError` is raised);
    * :meth:`shut_down` waits for the work in hand; every result stays
      retrievable afterwards.

    The constructor returns once one worker has run its ``init_handler``; if
    every initial worker fails to start (``init_handler`` raised or did not
    return within ``init_timeout`` seconds, default 60, 0 or None for no
    limit; or its process could not be created), it raises
    :class:`WorkerInitError` with the last failure.  A worker that overruns
    ``init_timeout`` is killed, also later, when a replacement starts, and
    counts as an init failure.  Start-up never fails without its cause: a
    handler a new process cannot import raises :class:`SerializationError`
    with that process's error, and a Boss that fails before it serves
    raises :class:`BossDiedError` with its error.

    Parameters (all but ``work_handler`` keyword-only; a bad value raises
    :class:`InvalidArgumentError` naming it, and nothing is started):

    work_handler
        ``job -> result``, called in a worker for each job.  Whatever it
        raises (any ``BaseException``) becomes that job's failure, never the
        pool's.  Under ``spawn``/``forkserver`` it must be importable by name
        (a module-level function) or travel by value (the cloudpickle extra).
    result_handler
        ``result -> result``, called in *this* process inside
        :meth:`get_result` (and its async twin) only; :meth:`get_outcome`
        hands out the work handler's value untouched.  What it raises
        propagates out of ``get_result``.  Default: none.
    init_handler
        Called once in each worker as it starts, before any job (a worker
        is "ready" once it returns).  If it raises, that worker failed to
        start (see above).  Default: none.
    exit_handler
        Called once in each worker that leaves normally (shut down, or
        recycled after ``max_jobs_per_worker``); not after a kill.  What it
        raises is printed, not propagated.  Default: none.
    global_timeout
        Seconds a job may run; ``0`` or ``None`` (default 0): no limit.
        Over it, the job fails with ``TIMED_OUT_ERROR`` (SIGALRM in the
        worker; if that does not stop it, the Boss kills and replaces the
        worker ~0.25 s later).  :meth:`add_work`'s ``timeout=`` overrides it.
    worker_count
        Worker processes kept alive (at least 1; default 3); a worker that
        dies is replaced.
    read_size
        Bytes asked for per socket read (at least 4096; default 1 MiB).
    start_method
        ``"fork"``, ``"spawn"`` or ``"forkserver"`` for the Boss and the
        workers; ``None`` (default): the platform's safe default, as
        CPython picks it.
    max_jobs_per_worker
        Recycle a worker (it runs ``exit_handler`` and a fresh one replaces
        it) after this many jobs; ``None`` (default): never.  For leaky
        handlers.
    backend
        Where the Boss runs: ``None`` (default) for processes on this
        machine; see the README's "Scaling out".
    init_timeout
        Seconds a worker may take from its start to ready (its
        ``init_handler``); ``0`` or ``None``: no limit; default 60.
    retries
        How many more times (0 to 255; default 0: never) a job is run again,
        on another worker, when an attempt fails for one of ``retry_on``.
        Never for an exception the handler raised.  Off by default because a
        job whose worker died may have had side effects.  The job's
        :class:`Outcome` lists every attempt; :meth:`get_result` sees only
        the last.  :meth:`add_work`'s ``retries=`` overrides it.  A job larger
        than a frame (4 GiB pickled) is never retried.  Needs the local
        backend (``backend=None``).
    retry_on
        Which failures are retried: any of ``"died"`` (the worker died:
        a signal, ``os._exit``, a segfault, the OOM killer), ``"timed_out"``
        and ``"memory"`` (the memory cap killed the worker).  Default
        ``("died",)``.  Has no effect while ``retries`` is 0.
    max_worker_memory
        Opt-in cap on each worker's resident memory: bytes as an int, or a
        string such as ``"512MiB"``, ``"1.5GB"``, ``"800M"``; at least 16 MiB
        (RSS of the worker process itself; Linux: it reads ``/proc``, and is
        refused elsewhere).  A worker past the cap while a job runs is killed
        and replaced, and that job fails with
        :data:`~bossworker.errors.MEMORY_LIMIT_ERROR` (``MemoryLimitError`` in
        its outcome; retried if ``retry_on`` has ``"memory"``); a worker found
        past it after a job (a leak) is retired and replaced between jobs.
        Checked every 20 ms while a job runs, after a job, and once when a
        worker is ready (over the cap then: an init failure).  Under ``fork``
        a worker's RSS includes the pages it shares with main: set the cap
        above main's size, or use ``spawn``.  Default ``None``: no cap.
    forward_logs
        ``logging`` records made in the workers (by the handlers) and in the
        Boss (its warnings: a worker died, a job timed out) reach main's
        ``logging``, each handled once, by the logger of the same name, with
        ``worker_pid`` and ``job_id`` (None outside a job) as record
        attributes; at the level main's root logger has when the pool is
        made.  The children's own handlers (under ``fork``, copies of
        main's) are dropped.  Records are handed to logging by whichever
        thread reads the pool's answers.  Default True; False leaves the
        children's logging as it is.  Local backend only.
    """

    def __init__(
        self,
        work_handler: Callable[[J], R],
        *,
        result_handler: Callable[[Any], R] | None = None,
        init_handler: Callable[[], Any] | None = None,
        exit_handler: Callable[[], Any] | None = None,
        global_timeout: float | None = 0,
        worker_count: int = 3,
        read_size: int = 1024 * 1024,
        start_method: StartMethod | None = None,
        max_jobs_per_worker: int | None = None,
        backend: Backend | None = None,
        init_timeout: float | None = DEFAULT_INIT_TIMEOUT,
        retries: int = 0,
        retry_on: Iterable[str] = ("died",),
        max_worker_memory: int | str | None = None,
        forward_logs: bool = True,
    ) -> None:
        checks.callable_arg("work_handler", work_handler, required=True)
        checks.callable_arg("result_handler", result_handler)
        checks.callable_arg("init_handler", init_handler)
        checks.callable_arg("exit_handler", exit_handler)
        self._global_timeout = checks.seconds("global_timeout", global_timeout)
        init_limit = checks.seconds("init_timeout", init_timeout)
        checks.whole_number("worker_count", worker_count, 1)
        checks.whole_number("read_size", read_size, 4096)
        if max_jobs_per_worker is not None:
            checks.whole_number("max_jobs_per_worker", max_jobs_per_worker, 1)
        self._retries = checks.retries(retries)
        self._retry_on = checks.retry_on(retry_on)
        memory_cap = None
        if max_worker_memory is not None:
            memory_cap = checks.memory_size(max_worker_memory)
            checks.memory_supported()
        method = checks.start_method(start_method) or default_start_method()
        backend = LocalBackend() if backend is None else backend
        # Retrying is the local Boss's: another backend would ignore it.
        self._retry_backend = None if isinstance(backend, LocalBackend) else type(backend).__name__
        if self._retries:
            self._check_retry_backend()
        segments = Segments(new_prefix() if getattr(backend, "shares_memory", True) else None)
        if method != "fork":
            # Handlers that a fresh interpreter cannot import by name travel
            # by value (cloudpickle), or are refused here with the remedy.
            work_handler = _travelling("work_handler", work_handler, method)
            init_handler = _travelling("init_handler", init_handler, method)
            exit_handler = _travelling("exit_handler", exit_handler, method)
        # The Boss's and the workers' logging records come to main's logging,
        # at the level main's root logger has now (bossworker.logfwd).
        # (Not yet on other backends: a Dask worker's slot takes no LOG frame.)
        local = isinstance(backend, LocalBackend)
        log_level = logging.getLogger().getEffectiveLevel() if forward_logs and local else None
        spec = WorkerSpec(
            work_handler,
            init_handler,
            exit_handler,
            read_size,
            max_jobs_per_worker,
            segments,
            init_limit,
            log_level,
        )
        if method != "fork":
            _check_importable(method, work_handler, init_handler, exit_handler)
            # A spawned Boss gets its handlers by pickling (by reference):
            # find out now, with a clear message, rather than in the child.
            try:
                # As the spawn will: multiprocessing objects (Queue, Lock, ...)
                # in the handlers' state travel with the Process arguments.
                pickle_as_if_spawning(spec, PICKLE_PROTOCOL)
            except Exception as exc:
                raise SerializationError(
                    f"under start_method={method!r} the handlers and what they hold must pickle "
                    f"(module-level functions of an importable module, or anything with the "
                    f"cloudpickle extra), and multiprocessing objects they hold must come from "
                    f"multiprocessing.get_context({method!r}): {exc}"
                ) from exc
        self._result_handler = result_handler
        self._start_method = method
        config = BossConfig(spec, worker_count, method, os.getpid(), max_worker_memory=memory_cap)
        sock, handle = backend.start(config)
        self._client = Client(sock, handle, read_size, segments)
        self._handle: BossHandle = handle
        self._waiter: aio.SocketWaiter | None = None  # made on first async use
        self._finalizer = weakref.finalize(self, _emergency_stop, self._client, handle)
        try:
            self._client.wait_ready(method)
        except BaseException:
            self.shut_down(force=True)
            raise
        log.info("pool started: Boss %s, %d workers, start method %s", handle.pid, worker_count, method)

    # -- facts ---------------------------------------------------------------

    @property
    def boss_pid(self) -> int:
        """The Boss process's id."""
        return self._handle.pid or 0

    @property
    def start_method(self) -> str:
        """The multiprocessing start method in use."""
        return self._start_method

    def pending(self) -> int:
        """Jobs added whose results have not been retrieved yet.

        Says nothing of readiness: the results may still be in the making.
        Jobs of a :meth:`map` are its own and not counted here.
        """
        return self._client.pending

    def stats(self) -> Stats:
        """A snapshot of the pool's counters (one round trip to the Boss).

        Raises :class:`ShutDownError` after :meth:`shut_down` and
        :class:`BossDiedError` if the Boss is gone.
        """
        return Stats.from_boss(self._client.added, self._client.stats())

    # -- work in -------------------------------------------------------------

    def add_work(self, *jobs: J, timeout: float | None = None, retries: int | None = None) -> list[int]:
        """Queue jobs; return one id per job, in order, unique to this pool.

        **Each argument is one job**: ``add_work([1, 2, 3])`` queues ONE job,
        the list (as in the seed).  Spread a list with ``add_work(*jobs)``;
        for a long or endless iterable, use :meth:`map`, which keeps at most
        ``max_in_flight`` jobs in flight.

        ``timeout`` (seconds) overrides ``global_timeout`` for these jobs;
        0 means no limit.  ``retries`` overrides the constructor's
        ``retries`` for these jobs (``retry_on`` stays the pool's).  Every
        job is pickled before any is sent: if one cannot be,
        :class:`SerializationError` is raised and none is queued.
        Raises :class:`ShutDownError` after :meth:`shut_down`,
        :class:`InputClosedError` (a ShutDownError) after :meth:`close_input`,
        and :class:`BossDiedError` if the Boss is gone.
        """
        payloads, limit = self._pickle_jobs(jobs, timeout)
        count = self._retries if retries is None else checks.retries(retries)
        if count:
            self._check_retry_backend()
            ids, target = self._client.queue_jobs(payloads, limit, count, self._retry_on)
            try:
                self._client.flush(target)
            except BossDiedError:
                self._client.forget_jobs(len(ids))
                raise
            return ids
        return self._client.add_jobs(payloads, limit)

    def close_input(self) -> None:
        """Say that no more work is coming.  Harmless to call again.

        ``add_work``, ``aadd_work`` and ``map`` raise :class:`InputClosedError`
        from then on; the work in hand runs on and its results stay
        retrievable.  ``results(until_closed=True)`` and
        ``aresults(until_closed=True)``, running beside a producer, end once
        input is closed (here or by :meth:`shut_down`) and the last result
        was taken, not before.
        """
        self._client.close_input()

    def map(
        self,
        iterable: Iterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> Iterator[R | dict[str, str]]:
        """Run every item of ``iterable`` as a job; yield the results.

        Each result is what :meth:`get_result` would return for that job
        (``result_handler`` applied, ``{"ERROR": ...}`` for a failure), in
        input order with ``ordered=True`` (the default), else as they come.
        The iterable may be endless: at most ``max_in_flight`` (default
        1024) jobs are *in flight* (sent and not yet yielded, answers held
        for their turn included), so memory stays flat.  It is read in the
        consuming thread, in batches, as room frees up.  ``timeout`` and
        ``retries`` are as in :meth:`add_work`.  ``progress=True`` (or a
        dict of tqdm arguments) shows a bar, with ``len(iterable)`` as its
        total when it has one.  :meth:`map_outcomes` yields outcomes instead.

        Its jobs are its own: they never come out of :meth:`get_result` and
        :meth:`pending` does not count them.  Leaving the loop early (or
        closing the generator) drops the results still to come and cancels
        the jobs not yet started; those a worker has run to their end.  An item
        that cannot be pickled raises :class:`SerializationError` there.
        """
        plan = self._map_plan(iterable, False, ordered, max_in_flight, timeout, retries, progress)
        return streams.map_jobs(self._client, plan, iterable)

    def map_outcomes(
        self,
        iterable: Iterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> Iterator[Outcome[R]]:
        """:meth:`map`, yielding each job's :class:`~bossworker.outcome.Outcome`
        (as :meth:`get_outcome` makes them: the value untouched, the real
        exception, the details) instead of its :meth:`get_result` value."""
        plan = self._map_plan(iterable, True, ordered, max_in_flight, timeout, retries, progress)
        return streams.map_jobs(self._client, plan, iterable)

    def amap(
        self,
        iterable: Iterable[J] | AsyncIterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> AsyncIterator[R | dict[str, str]]:
        """:meth:`map` for ``async for``, over a plain or an async iterable.

        An async iterable's items are sent as they come, while results are
        awaited, so a slow source never holds results back.  A plain
        iterable is read in the event loop: it must not block.
        """
        plan = self._map_plan(iterable, False, ordered, max_in_flight, timeout, retries, progress)
        return streams.amap(self._client, self._socket_waiter(), plan, iterable)

    def amap_outcomes(
        self,
        iterable: Iterable[J] | AsyncIterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> AsyncIterator[Outcome[R]]:
        """:meth:`map_outcomes` for ``async for`` (see :meth:`amap`)."""
        plan = self._map_plan(iterable, True, ordered, max_in_flight, timeout, retries, progress)
        return streams.amap(self._client, self._socket_waiter(), plan, iterable)

    def _map_plan(
        self,
        iterable: object,
        outcomes: bool,
        ordered: bool,
        max_in_flight: int | None,
        timeout: float | None,
        retries: int | None,
        progress: streams.Progress,
    ) -> streams.MapPlan[Any]:
        """The checked options of one map; with ``outcomes``, it yields
        Outcome objects (its lane keeps each job's details), else what
        get_result() would return."""
        limit = self._global_timeout if timeout is None else checks.seconds("timeout", timeout)
        checks.progress(progress)
        count = self._retries if retries is None else checks.retries(retries)
        if count:
            self._check_retry_backend()
        lane = Lane(records=outcomes)
        deliver: Callable[[Frame], Any] = (
            (lambda frame: self._outcome(frame, self._client.take_lane_record(lane, frame.job_id)))
            if outcomes
            else self._frame_result
        )
        return streams.MapPlan(
            deliver,
            lane,
            bool(ordered),
            streams.DEFAULT_MAX_IN_FLIGHT
            if max_in_flight is None
            else checks.whole_number("max_in_flight", max_in_flight),
            limit,
            (count, self._retry_on if count else 0),
            lambda: streams.Bar(progress, streams.known_length(iterable)),
        )

    def _frame_result(self, frame: Frame) -> R | dict[str, str]:
        """What get_result() returns for ``frame`` (without its id)."""
        value: R | dict[str, str] = self._deliver(
            frame.job_id, result_value(frame, self._client.segments), False
        )
        return value

    def _pickle_jobs(self, jobs: tuple[Any, ...], timeout: float | None) -> tuple[list[Pickled], float]:
        if not jobs:
            raise InvalidArgumentError("add_work() needs at least one job")
        limit = self._global_timeout if timeout is None else checks.seconds("timeout", timeout)
        payloads = []
        for index, job in enumerate(jobs):
            try:
                payloads.append(dump(job))
            except Exception as exc:
                raise SerializationError(
                    f"job #{index} of this add_work() call cannot be pickled; no job was queued: {exc}"
                ) from exc
        return payloads, limit

    # -- results out ---------------------------------------------------------

    @overload
    def get_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str]: ...
    @overload
    def get_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]]: ...
    @overload
    def get_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str] | None: ...
    @overload
    def get_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]] | None: ...
    @overload
    def get_result(self, blocking: bool = True, timeout: float | None = None, *, with_id: bool) -> Any: ...
    def get_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool = False
    ) -> Any:
        """The next result, in completion order.

        It is the work handler's return value (``{}`` for ``None``), passed
        through ``result_handler`` in this process if one was given; for a
        failed job, ``{"ERROR": "..."}``.  With ``with_id=True``, a
        ``(job_id, result)`` pair.

        * ``blocking=False``: return None at once if no result is ready.
        * ``timeout=None`` (blocking): wait as long as it takes; raise
          :class:`NoPendingResultsError` at once if nothing is pending.
        * ``timeout=t``: wait up to ``t`` seconds, also for work another
          thread adds meanwhile; None if no result came.

        An exception from ``result_handler`` propagates; that result counts
        as retrieved.
        """
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        frame = self._client.next_result(blocking=bool(blocking), timeout=timeout)
        if frame is None:
            return None
        self._client.take_record(frame.job_id)
        return self._deliver(frame.job_id, result_value(frame, self._client.segments), with_id)

    def get_result_nb(self, *, with_id: bool = False) -> Any:
        """``get_result(blocking=False)``: a result, or None at once."""
        return self.get_result(blocking=False, with_id=with_id)

    @overload
    def results(
        self,
        *,
        with_id: Literal[False] = False,
        until_closed: bool = False,
        progress: streams.Progress = False,
    ) -> Iterator[R | dict[str, str]]: ...
    @overload
    def results(
        self, *, with_id: Literal[True], until_closed: bool = False, progress: streams.Progress = False
    ) -> Iterator[tuple[int, R | dict[str, str]]]: ...
    def results(
        self, *, with_id: bool = False, until_closed: bool = False, progress: streams.Progress = False
    ) -> Iterator[Any]:
        """Yield results (as :meth:`get_result` does) as they come.

        By default until none is pending, even if another thread is about
        to add work.  With ``until_closed=True``, until :meth:`close_input`
        (or :meth:`shut_down`) was called *and* the last result was taken:
        while nothing is pending it waits for work from another thread.
        ``progress=True`` (or a dict of tqdm arguments) shows a bar whose
        total is the results taken plus those pending (it grows as work is
        added); without tqdm, one hint line on stderr, never an error.
        """
        checks.progress(progress)
        return streams.results(
            self._client,
            lambda frame: self._deliver(frame.job_id, result_value(frame, self._client.segments), with_id),
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending),
        )

    def get_outcome(self, blocking: bool = True, timeout: float | None = None) -> Outcome[Any] | None:
        """The next job's :class:`~bossworker.outcome.Outcome`, in completion order.

        The same stream as :meth:`get_result` (each job's answer goes to one
        of them, whichever asks first), with the same ``blocking`` and
        ``timeout`` rules, but typed: ``outcome.ok`` and ``outcome.value``
        (the handler's return value, untouched: ``None`` stays ``None``,
        ``result_handler`` is not applied), or ``outcome.error`` (the
        handler's own exception, with the worker-side traceback as
        ``__cause__``; :class:`TaskTimeoutError`, :class:`WorkerDiedError`,
        ...; see :mod:`bossworker.outcome`), and ``outcome.unwrap()``.
        Details: ``worker_pid``, ``run_time``, ``queued_at``,
        ``started_at``, ``finished_at`` and ``attempts`` (more than one when
        the job was retried).

        A job dropped by :meth:`cancel` yields one outcome here too, with
        ``cancelled=True`` (at once: it waits for nothing), so every job
        added yields exactly one outcome; :meth:`get_result` never returns
        anything for it.
        """
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        frame = self._client.next_result(blocking=bool(blocking), timeout=timeout, cancelled=True)
        return None if frame is None else self._outcome(frame)

    def outcomes(
        self, *, until_closed: bool = False, progress: streams.Progress = False
    ) -> Iterator[Outcome[R]]:
        """Yield :meth:`get_outcome` until no job is pending (cancelled jobs
        included: each yields its ``cancelled`` outcome).  ``until_closed``
        and ``progress`` are as in :meth:`results`."""
        checks.progress(progress)
        return streams.results(
            self._client,
            self._outcome,
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending + self._client.cancelled_waiting),
            cancelled=True,
        )

    def cancel(self, job_id: int) -> bool:
        """Drop job ``job_id`` if it has not started yet; return whether it was.

        A job still waits if it is in main's send queue or the Boss's queue;
        one that a worker has (running, or sent ahead to it), that is done,
        or that this pool never issued is not dropped (False).  A dropped
        job is never run, :meth:`pending` stops counting it at once,
        :meth:`get_result` never returns anything for it, and
        :meth:`get_outcome` / :meth:`outcomes` yield its outcome with
        ``cancelled=True``.  One round trip to the Boss.  Allowed after a
        graceful :meth:`shut_down` began; False once the Boss is gone.
        A cancelled job's outcome waits in main (a few bytes) until
        :meth:`get_outcome` takes it or the pool is force-stopped.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise InvalidArgumentError(f"job_id must be an int from add_work(), not {type(job_id).__name__}")
        return self._client.cancel_jobs([job_id], outcomes=True)[0] is True

    def _check_retry_backend(self) -> None:
        if self._retry_backend is not None:
            raise InvalidArgumentError(
                f"retries= needs the local backend (backend=None); {self._retry_backend} does not retry jobs"
            )

    def _outcome(self, frame: Frame, record: JobRecord | None = None) -> Outcome[R]:
        """Turn an answer frame (or a cancelled job's marker) into its Outcome;
        ``record`` is what main knows of the job (default: the client's)."""
        client = self._client
        queued_at, limit, received, retried = client.take_record(frame.job_id) if record is None else record
        if frame.kind == Kind.CANCEL_REPLY:  # a job cancel() dropped, at ``received``
            return cancelled_outcome(frame.job_id, queued_at, received)
        ok = frame.kind == Kind.RESULT
        value: Any
        if ok:
            try:
                if frame.flags & Flag.SEGMENT:
                    value = client.segments.load(frame.job_id, "r")
                else:
                    value = pickle.loads(frame.payload)
            except BaseException as exc:  # noqa: BLE001 - even SystemExit: this job's failure only
                ok = False
                value = unpickling_error(exc)
        else:
            value = error_from_answer(frame, limit)
        return make_outcome(frame, value, ok, queued_at, limit, received, retried)

    def _deliver(self, job_id: int, value: Any, with_id: bool) -> Any:
        if value is None:
            value = {}
        if self._result_handler is not None:
            value = self._result_handler(value)
            if value is None:
                value = {}
        return (job_id, value) if with_id else value

    # -- shutting down ---------------------------------------------------------

    def shut_down(self, force: bool = False) -> None:
        """Stop the Boss and the workers. Harmless to call again.

        Graceful (default): the jobs in hand are finished first, each
        worker's ``exit_handler`` runs, and every result stays retrievable
        with :meth:`get_result` afterwards.  ``force=True``: kill the Boss and
        every worker at once; unretrieved results are discarded and
        :meth:`pending` becomes 0; calls waiting in other threads or tasks
        (``get_result``, ``aget_result``, ``stats``) raise
        :class:`ShutDownError`.  Either way no process of the pool is left
        when this returns.  Raises :class:`BossDiedError` if the Boss had
        died with results still to come.
        """
        if not self._begin_shut_down(force):
            return
        client, handle = self._client, self._handle
        if not force and not client.boss_died:
            client.drain()
            _join_after_bye(handle, _JOIN_TIMEOUT)
        self._end_shut_down(force)

    def _begin_shut_down(self, force: bool) -> bool:
        """Stop taking work. False if there is nothing (more) to do."""
        if force:
            self._client.begin_forced_stop()  # before the Boss dies: waiters must not blame it
        return self._client.stop_accepting() or force

    def _end_shut_down(self, force: bool) -> None:
        client = self._client
        died = client.boss_died
        _force_stop(client, self._handle)  # a no-op for a Boss that has exited
        if force:
            client.discard_results()
        elif died:
            client.discard_orphan_segments()
        client.close()
        if died and client.pending:
            raise BossDiedError(f"the Boss process died with {client.pending} result(s) pending")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shut_down(force=exc_type is not None)

    # -- asyncio ---------------------------------------------------------------
    #
    # The same pool from async code, never blocking the event loop: these
    # wait on main's socket with loop.add_reader / add_writer (see aio.py).

    async def aadd_work(self, *jobs: J, timeout: float | None = None) -> list[int]:
        """:meth:`add_work` that waits in the event loop when the socket is full.

        Its jobs are queued before the first wait: if the call is cancelled
        (``asyncio.wait_for``, a task cancelled), they may still run, and
        their results come like any other (:meth:`pending` counts them);
        whoever waits next for results sends what is still queued.
        """
        from . import aio

        payloads, limit = self._pickle_jobs(jobs, timeout)
        ids, target = self._client.queue_jobs(payloads, limit)
        try:
            await aio.aflush(self._client, self._socket_waiter(), target)
        except (BossDiedError, ShutDownError):
            self._client.forget_jobs(len(ids))
            raise
        return ids

    @overload
    async def aget_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str]: ...
    @overload
    async def aget_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]]: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str] | None: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]] | None: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool
    ) -> Any: ...
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool = False
    ) -> Any:
        """:meth:`get_result` for async code: same options, same results."""
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        from . import aio

        frame = await aio.anext_result(self._client, self._socket_waiter(), bool(blocking), timeout)
        if frame is None:
            return None
        self._client.take_record(frame.job_id)
        return self._deliver(frame.job_id, result_value(frame, self._client.segments), with_id)

    async def aget_outcome(self, blocking: bool = True, timeout: float | None = None) -> Outcome[Any] | None:
        """:meth:`get_outcome` for async code: same options, same outcomes."""
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        from . import aio

        waiter = self._socket_waiter()
        frame = await aio.anext_result(self._client, waiter, bool(blocking), timeout, cancelled=True)
        return None if frame is None else self._outcome(frame)

    def aoutcomes(
        self, *, until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[Outcome[R]]:
        """``async for`` over outcomes: :meth:`outcomes` for async code, same options."""
        checks.progress(progress)
        return streams.aresults(
            self._client,
            self._socket_waiter(),
            self._outcome,
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending + self._client.cancelled_waiting),
            cancelled=True,
        )

    @overload
    def aresults(
        self,
        *,
        with_id: Literal[False] = False,
        until_closed: bool = False,
        progress: streams.Progress = False,
    ) -> AsyncIterator[R | dict[str, str]]: ...
    @overload
    def aresults(
        self, *, with_id: Literal[True], until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[tuple[int, R | dict[str, str]]]: ...
    def aresults(
        self, *, with_id: bool = False, until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[Any]:
        """``async for`` over results: :meth:`results` for async code, same
        options (``until_closed`` waits for a producer task or thread)."""
        checks.progress(progress)
        return streams.aresults(
            self._client,
            self._socket_waiter(),
            lambda frame: self._deliver(frame.job_id, result_value(frame, self._client.segments), with_id),
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending),
        )

    async def ashut_down(self, force: bool = False) -> None:
        """:meth:`shut_down` that waits in the event loop."""
        import asyncio

        from . import aio

        if not self._begin_shut_down(force):
            return
        client, handle = self._client, self._handle
        if not force and not client.boss_died:
            target = client.queue_control(Kind.SHUTDOWN)
            with contextlib.suppress(BossDiedError):
                await aio.aflush(client, self._socket_waiter(), target)
            await aio.await_condition(client, self._socket_waiter(), lambda: client.bye)
            deadline = time.monotonic() + _JOIN_TIMEOUT
            while handle.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the Boss exits right after its BYE
        elif handle.is_alive():
            handle.terminate()  # the Boss kills its workers and exits at once
            deadline = time.monotonic() + _FORCE_TIMEOUT
            while handle.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        self._end_shut_down(force)

    def _socket_waiter(self) -> aio.SocketWaiter:
        from . import aio

        waiter = self._waiter
        if waiter is None:
            with _WAITER_LOCK:
                if self._waiter is None:
                    self._waiter = aio.SocketWaiter(self._client)
                waiter = self._waiter
        return waiter

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.ashut_down(force=exc_type is not None)

    def __repr__(self) -> str:
        return (
            f"<BossWorkerAsync boss_pid={self.boss_pid} pending={self.pending()} "
            f"start_method={self._start_method!r}>"
        )


def _join_after_bye(handle: BossHandle, timeout: float) -> None:
    """Wait up to ``timeout`` for a Boss that said BYE to exit.  One still
    there is stopped by force right after (``_end_shut_down`` calls
    ``_force_stop``: SIGTERM, then SIGKILL); this says so."""
    handle.join(timeout)
    if handle.is_alive():
        log.error("the Boss did not exit after its BYE; stopping it by force")


def _force_stop(client: Client, handle: BossHandle) -> None:
    """SIGTERM the Boss (it kills its workers), then SIGKILL it if it lingers."""
    if handle.is_alive():
        handle.terminate()
        handle.join(_FORCE_TIMEOUT)
        if handle.is_alive():
            handle.kill()
            handle.join(_FORCE_TIMEOUT)
    else:
        handle.join(0)
    client.close()
    handle.close()  # its descriptors, now that it has been reaped


def _emergency_stop(client: Client, handle: BossHandle) -> None:
    """The pool was dropped, or the interpreter exits: stop whatever still
    runs (nothing, after shut_down()) and free unretrieved results.

    Work still pending in a pool that was never shut down is lost: say so
    (a ResourceWarning, like an unclosed file, and a log WARNING) rather
    than drop it silently."""
    discarded = 0 if client.eof_or_closed else client.pending
    with contextlib.suppress(Exception):  # never raise from a finalizer
        _force_stop(client, handle)
        client.segments.discard_all()
    if discarded:
        message = (
            f"a BossWorkerAsync pool was dropped without shut_down(); {discarded} pending job(s) "
            "were discarded (call shut_down() or use 'with' to finish them)"
        )
        with contextlib.suppress(Exception):
            log.warning("%s", message)
        with contextlib.suppress(Exception):  # an "error" warnings filter must not escape
            warnings.warn(message, ResourceWarning, stacklevel=2)


@overload
def _travelling(name: str, fn: None, method: str) -> None: ...
@overload
def _travelling(name: str, fn: Callable[P, R], method: str) -> Callable[P, R]: ...
def _travelling(name: str, fn: Callable[..., Any] | None, method: str) -> Callable[..., Any] | None:
    """``fn`` ready to be pickled for a ``method`` child: itself, or wrapped
    to travel by value when it cannot be imported there by name."""
    if fn is None:
        return None
    try:
        return byvalue.by_value(fn)
    except ImportError:  # it must travel by value, and cloudpickle is missing
        _check_importable(method, fn)  # the message for a __main__ without a file
    raise SerializationError(
        f"{name} {getattr(fn, '__qualname__', fn)!r} cannot be pickled by name (a lambda or a closure?)\n"
        + NOT_IMPORTABLE_HINT.format(method=method)
        + f"; or {byvalue.INSTALL_HINT}"
    )


def _check_importable(method: str, *handlers: Callable[..., Any] | None) -> None:
    """Refuse at once a handler a new process could never import: one
    defined in ``__main__`` when ``__main__`` has no file or module name to
    import it from again (``python -c``, an interactive session, stdin)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None) or getattr(main, "__file__", None):
        return  # a new process re-imports __main__ (as __mp_main__)
    for handler in handlers:
        if handler is not None and getattr(handler, "__module__", None) == "__main__":
            name = getattr(handler, "__qualname__", repr(handler))
            raise SerializationError(
                f"handler {name!r} is defined in __main__, which a new process cannot import "
                f"(no file: python -c, an interactive session or stdin)\n"
                + NOT_IMPORTABLE_HINT.format(method=method)
                + f"; or {byvalue.INSTALL_HINT}"
            )

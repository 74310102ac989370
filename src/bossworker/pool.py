"""The public class: :class:`BossWorkerAsync`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload

from . import answers, checks, streams
from .backend import Backend, LocalBackend
from .checks import StartMethod
from .errors import InvalidArgumentError, SerializationError
from .ledger import JobRecord
from .outcome import Outcome
from .payload import Pickled, dump
from .pool_async import AsyncFace
from .pool_map import MapFace
from .protocol import Frame
from .session import DEFAULT_INIT_TIMEOUT, DEFAULT_READ_SIZE, Session
from .stats import Stats

__all__ = ["BossWorkerAsync", "StartMethod"]

log = logging.getLogger("bossworker")

J = TypeVar("J")  # a job: what the work handler takes
R = TypeVar("R")  # a result: what the work handler (or the result_handler) returns


class BossWorkerAsync(MapFace[J, R], AsyncFace[J, R]):
    """A Boss process and ``worker_count`` preforked workers.

    Generic in ``J``, the job type, and ``R``, the result type, both
    inferred from ``work_handler: Callable[[J], R]``: ``add_work`` takes
    jobs of type ``J`` and ``get_result`` returns ``R | dict[str, str]``, the dict being
    a failed job's ``{"ERROR": ...}`` (or ``{}`` for a ``None`` result).
    With a ``result_handler``, ``R`` covers what either returns (mypy
    joins the two, e.g. ``object`` for ``int`` and ``str``).

    Feed it jobs with :meth:`add_work` and collect results with
    :meth:`get_result` at any time, interleaved, blocking or not.  See the
    documentation's guide to the pool for the full contract; in short:

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
        machine; a :class:`bossworker.dask.DaskBackend` for a Dask cluster.
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
        read_size: int = DEFAULT_READ_SIZE,
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
        checks.backend(backend)
        # Retrying is the local Boss's: another backend would ignore it.
        self._retry_backend = (
            None if backend is None or isinstance(backend, LocalBackend) else type(backend).__name__
        )
        if self._retries:
            self._check_retry_backend()
        self._result_handler = result_handler
        self._session = Session(
            work_handler,
            init_handler=init_handler,
            exit_handler=exit_handler,
            worker_count=worker_count,
            start_method=start_method,
            max_jobs_per_worker=max_jobs_per_worker,
            backend=backend,
            init_timeout=init_limit,
            max_worker_memory=max_worker_memory,
            read_size=read_size,
            forward_logs=forward_logs,
        )
        self._client = self._session.client

    @classmethod
    def from_session(cls, session: Session, global_timeout: float = 0.0) -> BossWorkerAsync[Any, Any]:
        """A pool facade over a session another facade started and owns
        (``Executor.pool``): for its facts, ``stats()`` and ``pending()``;
        stopping it is the owner's business."""
        pool: BossWorkerAsync[Any, Any] = cls.__new__(cls)
        pool._session = session
        pool._client = session.client
        pool._global_timeout = global_timeout
        pool._retries = pool._retry_on = 0
        pool._retry_backend = None
        pool._result_handler = None
        return pool

    # -- facts ---------------------------------------------------------------

    @property
    def boss_pid(self) -> int:
        """The Boss process's id."""
        return self._session.handle.pid or 0

    @property
    def start_method(self) -> str:
        """The multiprocessing start method in use."""
        return self._session.start_method

    def pending(self) -> int:
        """Jobs added whose results have not been retrieved yet.

        Says nothing of readiness: the results may still be in the making.
        Jobs of a :meth:`map` are its own and not counted here.
        """
        self._client.check_owner()  # a forked child's copy would be a stale number
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
        count, retry_on = self._retry(retries)
        return self._client.add_jobs(payloads, limit, count, retry_on)

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

    def _frame_result(self, frame: Frame) -> R | dict[str, str]:
        """What get_result() returns for ``frame`` (without its id)."""
        value: R | dict[str, str] = self._deliver(
            frame.job_id, answers.value(frame, self._client.segments), False
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
        return self._deliver(frame.job_id, answers.value(frame, self._client.segments), with_id)

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
            lambda frame: self._deliver(frame.job_id, answers.value(frame, self._client.segments), with_id),
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
        return self._client.cancel_jobs([job_id], outcomes=True)[0] is True

    def _retry(self, retries: int | None) -> tuple[int, int]:
        """``(retries, retry_on bits)`` for jobs added with ``retries=``
        (None: the pool's), as every way of adding work sends them."""
        count = self._retries if retries is None else checks.retries(retries)
        if count:
            self._check_retry_backend()
        return count, self._retry_on if count else 0

    def _check_retry_backend(self) -> None:
        if self._retry_backend is not None:
            raise InvalidArgumentError(
                f"retries= needs the local backend (backend=None); {self._retry_backend} does not retry jobs"
            )

    def _outcome(self, frame: Frame, record: JobRecord | None = None) -> Outcome[R]:
        """Turn an answer frame (or a cancelled job's marker) into its Outcome;
        ``record`` is what main knows of the job (default: the ledger's)."""
        if record is None:
            record = self._client.take_record(frame.job_id)
        result: Outcome[R] = answers.outcome(frame, self._client.segments, record)
        return result

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
        self._session.stop(force)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shut_down(force=exc_type is not None)

    def __repr__(self) -> str:
        return (
            f"<BossWorkerAsync boss_pid={self.boss_pid} pending={self.pending()} "
            f"start_method={self._session.start_method!r}>"
        )

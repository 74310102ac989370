"""``bossworker.Executor``: a ``concurrent.futures.Executor`` on the Boss and its workers.

Who does what::

    caller threads                main process                          Boss and workers
    submit(fn, *a, **kw) --> pickle (fn, a, kw); add a job -----------> queue --> worker: call()
    future.cancel()      --> CANCEL round trip ------------------------> dropped if still queued
    future.result()      <-- collector thread: next answer, completes <-- RESULT | ERROR | TIMED_OUT
                             that job's future

The engine underneath is a :class:`~bossworker.session.Session`, as under
:class:`~bossworker.BossWorkerAsync`, whose work handler is
:func:`bossworker.executor_worker.call`: every task is the job ``(fn, args, kwargs)``.
So dead workers, time limits, recycling and shared-memory payloads are the
engine's, unchanged; the Executor only turns jobs into futures and answers
into results or exceptions.

This module is the public front (:class:`Executor`, :class:`ExecutorOptions`):
argument checks, start-up and the ``concurrent.futures`` surface.  The engine
(futures, the *collector* thread that reads answers and completes them, the
interpreter-exit hook) is :mod:`bossworker.executor_core`; ``map`` is
:mod:`bossworker.executor_map`.
"""

from __future__ import annotations

import functools
import os
import weakref
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, ParamSpec, TypeVar

from . import checks
from .backend import Backend, LocalBackend
from .checks import StartMethod
from .errors import InvalidArgumentError
from .executor_core import Core, TaskOptions, live_cores
from .executor_map import run_map
from .executor_worker import call
from .pool import BossWorkerAsync
from .session import DEFAULT_INIT_TIMEOUT, Session
from .streams import Progress

__all__ = ["Executor", "ExecutorOptions"]

T = TypeVar("T")
P = ParamSpec("P")


# -- the public class ------------------------------------------------------------


def _check_retry_backend(backend: Backend | str | None) -> None:
    """``retries=`` is the local Boss's; refuse it for another backend."""
    name = backend if isinstance(backend, str) else "" if backend is None else type(backend).__name__
    if name and name != "LocalBackend":
        raise InvalidArgumentError(
            f"retries= needs the local backend (backend=None); {name} does not retry tasks"
        )


def _default_workers() -> int:
    count = getattr(os, "process_cpu_count", os.cpu_count)()  # 3.13+: the CPUs we may use
    return count or 1


class Executor(futures.Executor):
    """A ``concurrent.futures.Executor`` whose tasks run on bossworker's Boss
    and workers: a drop-in for ``ProcessPoolExecutor`` that does not break.

    ``Executor(max_workers=None, mp_context=None, initializer=None,
    initargs=(), *, max_tasks_per_child=None, start_method=None,
    timeout=None, backend=None, max_worker_memory=None)``:

    * ``max_workers``: worker processes (default: the CPUs this process may
      use).  They start in the constructor, not on the first submit.
    * ``mp_context``: a multiprocessing context; only its start method is
      used.  ``start_method``: the same, by name (fork where it exists).
      Multiprocessing objects passed to the workers (``initargs``) must come
      from that context, as with ``ProcessPoolExecutor``.
    * ``initializer(*initargs)`` runs once in each worker before its first
      task; ``initargs`` may hold multiprocessing ``Queue``, ``Lock``,
      ``Value`` and ``Event`` objects under every start method.  If it
      fails in every initial worker, the constructor raises
      :class:`WorkerInitError` with the worker's traceback (the standard
      library instead breaks the pool at the first submit).  A worker that
      fails it later is retried with back-off; if no worker can start at
      all, the queued tasks fail with :class:`WorkerInitError`.
    * ``max_tasks_per_child``: each worker is replaced after that many
      tasks (works under ``fork`` too).
    * ``timeout``: a time limit in seconds for every task (None or 0: none);
      see :meth:`options` for one call's limit.  A task past it fails with
      :class:`TaskTimeoutError`; its worker is stopped (killed if it is in C
      code) and replaced; the other tasks carry on.
    * ``retries``: run a task again, at most this many more times, when its
      worker died under it (``retry_on=("died",)``, the default; add
      ``"timed_out"`` or ``"memory"`` to cover those), as
      :class:`BossWorkerAsync` does; a task's own exception is never
      retried.  Off by default: a task whose worker crashed may have had
      side effects.  :meth:`options` sets it for some calls.  Local
      backend only.
    * ``forward_logs``: ``logging`` records made in the workers (tasks,
      the initializer) and the Boss reach main's ``logging`` once each,
      with ``worker_pid`` and ``job_id`` attributes (see
      :class:`BossWorkerAsync`); True by default.
    * ``backend``: where the Boss runs (e.g. the Dask backend).
    * ``max_worker_memory``: a cap on each worker's resident memory (bytes,
      or ``"512MiB"``, ``"1.5GB"``, ...; see :class:`BossWorkerAsync`).  A
      task whose worker passes it fails with :class:`MemoryLimitError`; the
      worker is replaced.

    Where it differs from ``ProcessPoolExecutor`` on purpose: a worker that
    dies fails only its own task's future, with :class:`WorkerDiedError` (a
    ``BrokenProcessPool``), and the executor stays usable; tasks can have
    time limits; ``map`` takes ``buffersize`` on every Python version;
    ``shutdown(kill=True)`` stops at once; ``cancel()`` also takes back a task
    the Boss holds.  ``running()`` is True only once a failed ``cancel()``
    learned that a worker has the task: main is not told when a worker
    starts one (that would cost a message per task).  Callbacks run in the
    collector thread, or in the calling thread if the future is already
    done, as with the standard library.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        *,
        max_tasks_per_child: int | None = None,
        start_method: StartMethod | None = None,
        timeout: float | None = None,
        backend: Backend | None = None,
        max_worker_memory: int | str | None = None,
        retries: int = 0,
        retry_on: Iterable[str] = ("died",),
        forward_logs: bool = True,
    ) -> None:
        workers = (
            _default_workers() if max_workers is None else checks.whole_number("max_workers", max_workers)
        )
        if max_tasks_per_child is not None:
            checks.whole_number("max_tasks_per_child", max_tasks_per_child)
        method: str | None = start_method
        if mp_context is not None:
            get = getattr(mp_context, "get_start_method", None)
            if not callable(get):
                raise InvalidArgumentError(
                    f"mp_context must be a multiprocessing context (multiprocessing.get_context(...)), "
                    f"not {type(mp_context).__name__}"
                )
            context_method = get()
            if start_method is not None and start_method != context_method:
                raise InvalidArgumentError(
                    f"start_method={start_method!r} contradicts mp_context, whose start method is "
                    f"{context_method!r}; pass one of them"
                )
            method = context_method
        method = checks.start_method(method)
        checks.callable_arg("initializer", initializer)
        if isinstance(initargs, (str, bytes)) or not isinstance(initargs, Iterable):
            raise InvalidArgumentError(
                f"initargs must be a tuple of arguments for initializer, not {type(initargs).__name__}"
            )
        initargs = tuple(initargs)
        if initargs and initializer is None:
            raise InvalidArgumentError("initargs were given without an initializer to pass them to")
        limit = checks.seconds("timeout", timeout)
        count = checks.retries(retries)
        retry_bits = checks.retry_on(retry_on)
        if count:
            _check_retry_backend(backend)
        init = functools.partial(initializer, *initargs) if initializer is not None else None
        session = Session(
            call,
            init_handler=init,
            worker_count=workers,
            start_method=method,
            max_jobs_per_worker=max_tasks_per_child,
            backend=backend,
            init_timeout=DEFAULT_INIT_TIMEOUT,
            max_worker_memory=max_worker_memory,
            keep_records=False,
            forward_logs=forward_logs,
        )
        self._max_workers = workers
        self._pool: BossWorkerAsync[Any, Any] | None = None
        # Workers elsewhere (Dask) cannot import main's script by name.
        remote = "" if backend is None or isinstance(backend, LocalBackend) else type(backend).__name__
        try:
            self._core = Core(session, TaskOptions(limit, count), retry_bits, workers, remote)
        except BaseException:
            # Its collector thread could not start (a process limit): stop
            # the Boss and workers now, not at some garbage collection.
            session.stop(force=True)
            raise
        live_cores.add(self._core)
        # Dropped without shutdown(): finish the work in the background.
        finalizer = weakref.finalize(self, self._core.shutdown, False, False, False)
        finalizer.atexit = False  # executor_core's exit hook does it, waiting

    # -- facts ---------------------------------------------------------------

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers

    @property
    def start_method(self) -> str:
        """The multiprocessing start method in use."""
        return self._core.session.start_method

    @property
    def pool(self) -> BossWorkerAsync[Any, Any]:
        """A pool view of the engine underneath (for :meth:`BossWorkerAsync.stats`,
        ``pending()``, ``boss_pid``); do not add work to it, and stop the
        Executor, not it."""
        if self._pool is None:
            self._pool = BossWorkerAsync.from_session(self._core.session, self._core.opts.limit)
        return self._pool

    # -- work ----------------------------------------------------------------

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` in a worker; return its Future.

        ``fn`` and the arguments are pickled now; if they cannot be, the
        returned future fails with :class:`PicklingError` (also a
        ``pickle.PicklingError``), never ``submit()`` itself, as with the
        standard library.  Raises :class:`ShutDownError` (a
        ``RuntimeError``) after :meth:`shutdown`.
        """
        return self._core.submit(fn, args, kwargs, self._core.opts)

    def options(self, *, timeout: float | None = None, retries: int | None = None) -> ExecutorOptions:
        """This executor with other options for the tasks submitted through it.

        ``ex.options(timeout=2).submit(fn, x)`` runs ``fn(x)`` with a 2 s
        limit (0: no limit; None: the executor's ``timeout``) without taking
        a ``timeout`` argument away from ``fn``; ``retries=n`` likewise
        overrides the executor's ``retries`` (``retry_on`` stays the
        executor's).  The result is itself an Executor (``submit``, ``map``,
        ``loop.run_in_executor``) sharing this one's workers; its
        ``shutdown()`` does nothing.
        """
        own = self._core.opts
        limit = own.limit if timeout is None else checks.seconds("timeout", timeout)
        count = own.retries if retries is None else checks.retries(retries)
        if count:
            _check_retry_backend(self._core.remote)
        return ExecutorOptions(self, TaskOptions(limit, count))

    def map(  # buffersize: keyword-only, as added in Python 3.14
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]:
        """Like the built-in ``map(fn, *iterables)``, run in the workers.

        Results come in input order; a task's exception is raised when its
        result is reached; ``timeout`` (seconds, from this call) bounds the
        whole iteration with ``TimeoutError``.  ``chunksize=n`` sends ``n``
        calls per task, as ``ProcessPoolExecutor`` does (fewer messages; an
        exception fails its whole chunk; the Boss already pipelines tiny
        tasks, so the gain is smaller here).  ``buffersize=n`` (as in Python
        3.14) keeps at most ``n`` tasks submitted and not yet yielded, reading
        the iterables lazily: an endless generator runs in flat memory.
        Without it, every task is submitted now.  Leaving the loop early
        cancels what has not started.  ``progress=True`` (or a dict of
        ``tqdm`` arguments) shows a bar of the results yielded (the ``cli``
        extra's tqdm; its total is the input's length where it has one).
        """
        return run_map(
            self, self._core, self._core.opts, fn, iterables, timeout, chunksize, buffersize, progress
        )

    # -- shutting down -------------------------------------------------------

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False, kill: bool = False) -> None:
        """Stop taking tasks; free the processes once the work is done.

        As in the standard library: ``wait=True`` returns once every pending
        task is done and every process is gone; ``wait=False`` returns at
        once while the work finishes in the background; ``cancel_futures=True``
        first cancels every task no worker has yet.  Ours: ``kill=True``
        stops the Boss and every worker at once; the futures not yet done fail
        with :class:`ShutDownError`.  Harmless to call again (``kill=True``
        still works after a graceful shutdown began).
        """
        self._core.shutdown(bool(wait), bool(cancel_futures), bool(kill))

    def __exit__(
        self, exc_type: type[BaseException] | None, exc_val: BaseException | None, exc_tb: Any
    ) -> None:
        """Leaving ``with``: :meth:`shutdown` (waiting), as the standard
        library does; but a ``KeyboardInterrupt`` (Ctrl-C) leaving the block
        cancels every task no worker has and kills the running ones at once
        (their futures fail with :class:`ShutDownError`): a person pressing
        Ctrl-C wants it to stop, not to wait for every task."""
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            self._core.shutdown(wait=True, cancel_futures=True, kill=True)
        else:
            self.shutdown(wait=True)

    def __repr__(self) -> str:
        core = self._core
        state = "killed" if core.killed else "shut down" if core.shutting_down else "running"
        return f"<bossworker.Executor {state} max_workers={self._max_workers} pending={len(core.futures)}>"


class ExecutorOptions(futures.Executor):
    """An :class:`Executor` seen with other task options (see :meth:`Executor.options`)."""

    def __init__(self, executor: Executor, opts: TaskOptions) -> None:
        self._executor = executor
        self._opts = opts

    @property
    def timeout(self) -> float:
        """The time limit of tasks submitted through this view (0: none)."""
        return self._opts.limit

    @property
    def retries(self) -> int:
        """How many times a task submitted through this view is run again
        when its worker dies (see ``Executor(retries=...)``)."""
        return self._opts.retries

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> futures.Future[T]:
        """:meth:`Executor.submit` with this view's options."""
        return self._executor._core.submit(fn, args, kwargs, self._opts)

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
        buffersize: int | None = None,
        progress: Progress = False,
    ) -> Iterator[T]:
        """:meth:`Executor.map` with this view's options (the limit is per task)."""
        return run_map(
            self._executor,
            self._executor._core,
            self._opts,
            fn,
            iterables,
            timeout,
            chunksize,
            buffersize,
            progress,
        )

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: the view does not own the workers; shut the Executor down."""

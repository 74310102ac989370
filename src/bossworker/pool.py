"""The public class: :class:`BossWorkerAsync`."""

from __future__ import annotations

import contextlib
import logging
import math
import multiprocessing
import os
import sys
import time
import warnings
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only async users pay it
    from . import aio

from . import byvalue, memory
from .backend import Backend, BossHandle, LocalBackend, default_start_method
from .boss import BossConfig
from .client import Client
from .errors import (
    NOT_IMPORTABLE_HINT,
    BossDiedError,
    InvalidArgumentError,
    SerializationError,
)
from .payload import Pickled, Segments, dump, new_prefix
from .process import pickle_as_if_spawning
from .protocol import Kind
from .stats import Stats
from .worker import PICKLE_PROTOCOL, WorkerSpec

__all__ = ["BossWorkerAsync"]

log = logging.getLogger("bossworker")

P = ParamSpec("P")
R = TypeVar("R")

#: The largest time limit accepted anywhere (seconds, about 31 years): far
#: below what ``select``, ``setitimer`` and ``threading`` can represent.
MAX_TIMEOUT = 1e9

# How long a worker may take to start (its init_handler included) unless
# the constructor's init_timeout= says otherwise.
DEFAULT_INIT_TIMEOUT = 60.0

# How long a graceful stop waits for the Boss to exit after its BYE, and a
# forced stop waits after SIGTERM, before killing it.
_JOIN_TIMEOUT = 5.0
_FORCE_TIMEOUT = 1.0


class BossWorkerAsync:
    """A Boss process and ``worker_count`` preforked workers.

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

    ``max_worker_memory`` (opt-in; bytes as an int, or a string such as
    ``"512MiB"``, ``"1.5GB"``, ``"800M"``; at least 16 MiB) caps each
    worker's resident memory (RSS, the worker process itself; Linux: it
    reads ``/proc``, and is refused elsewhere).  A worker past the cap while
    a job runs is killed and replaced, and that job's result is
    ``{"ERROR": "BossWorkerAsync: worker exceeded its memory limit (...)"}``
    (see :data:`~bossworker.errors.MEMORY_LIMIT_ERROR`); a worker found past
    it after a job (a leak) is retired and replaced between jobs.  Checked
    every 20 ms while a job runs (from 20 ms after it started), after a job
    (at most every 20 ms for sub-millisecond jobs sent ahead), and once when
    a worker is ready (over the cap then: an init failure).  Under ``fork`` a worker's
    RSS includes the pages it shares with main: set the cap above main's
    size, or use ``spawn``.
    """

    def __init__(
        self,
        work_handler: Callable[[Any], Any],
        *,
        result_handler: Callable[[Any], Any] | None = None,
        init_handler: Callable[[], Any] | None = None,
        exit_handler: Callable[[], Any] | None = None,
        global_timeout: float | None = 0,
        worker_count: int = 3,
        read_size: int = 1024 * 1024,
        start_method: str | None = None,
        max_jobs_per_worker: int | None = None,
        backend: Backend | None = None,
        init_timeout: float | None = DEFAULT_INIT_TIMEOUT,
        max_worker_memory: int | str | None = None,
    ) -> None:
        _check_callable("work_handler", work_handler, required=True)
        _check_callable("result_handler", result_handler)
        _check_callable("init_handler", init_handler)
        _check_callable("exit_handler", exit_handler)
        self._global_timeout = _check_timeout("global_timeout", global_timeout)
        init_limit = _check_timeout("init_timeout", init_timeout)
        _check_int("worker_count", worker_count, minimum=1)
        _check_int("read_size", read_size, minimum=4096)
        if max_jobs_per_worker is not None:
            _check_int("max_jobs_per_worker", max_jobs_per_worker, minimum=1)
        memory_cap = None
        if max_worker_memory is not None:
            memory_cap = memory.parse_memory(max_worker_memory)
            memory.check_supported()
        method = default_start_method() if start_method is None else start_method
        if method not in multiprocessing.get_all_start_methods():
            raise InvalidArgumentError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()}, not {start_method!r}"
            )
        backend = LocalBackend() if backend is None else backend
        segments = Segments(new_prefix() if getattr(backend, "shares_memory", True) else None)
        if method != "fork":
            # Handlers that a fresh interpreter cannot import by name travel
            # by value (cloudpickle), or are refused here with the remedy.
            work_handler = _travelling("work_handler", work_handler, method)
            init_handler = _travelling("init_handler", init_handler, method)
            exit_handler = _travelling("exit_handler", exit_handler, method)
        spec = WorkerSpec(
            work_handler, init_handler, exit_handler, read_size, max_jobs_per_worker, segments, init_limit
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
        """
        return self._client.pending

    def stats(self) -> Stats:
        """A snapshot of the pool's counters (one round trip to the Boss).

        Raises :class:`ShutDownError` after :meth:`shut_down` and
        :class:`BossDiedError` if the Boss is gone.
        """
        return Stats.from_boss(self._client.added, self._client.stats())

    # -- work in -------------------------------------------------------------

    def add_work(self, *jobs: Any, timeout: float | None = None) -> list[int]:
        """Queue jobs; return one id per job, in order, unique to this pool.

        ``timeout`` (seconds) overrides ``global_timeout`` for these jobs;
        0 means no limit.  Every job is pickled before any is sent: if one
        cannot be, :class:`SerializationError` is raised and none is queued.
        Raises :class:`ShutDownError` after :meth:`shut_down`, and
        :class:`BossDiedError` if the Boss is gone.
        """
        payloads, limit = self._pickle_jobs(jobs, timeout)
        return self._client.add_jobs(payloads, limit)

    def _pickle_jobs(self, jobs: tuple[Any, ...], timeout: float | None) -> tuple[list[Pickled], float]:
        if not jobs:
            raise InvalidArgumentError("add_work() needs at least one job")
        limit = self._global_timeout if timeout is None else _check_timeout("timeout", timeout)
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
            timeout = _check_timeout("timeout", timeout)
        frame = self._client.next_result(blocking=bool(blocking), timeout=timeout)
        if frame is None:
            return None
        return self._deliver(frame.job_id, self._client.unpickle_result(frame), with_id)

    def get_result_nb(self, *, with_id: bool = False) -> Any:
        """``get_result(blocking=False)``: a result, or None at once."""
        return self.get_result(blocking=False, with_id=with_id)

    def results(self, *, with_id: bool = False) -> Iterator[Any]:
        """Yield results as they come until none is pending."""
        while self._client.pending > 0:
            yield self.get_result(with_id=with_id)

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
        :meth:`pending` becomes 0.  Either way no process of the pool is left
        when this returns.  Raises :class:`BossDiedError` if the Boss had
        died with results still to come.
        """
        if not self._begin_shut_down(force):
            return
        client, handle = self._client, self._handle
        if not force and not client.boss_died:
            client.drain()
            _join_or_kill(handle, _JOIN_TIMEOUT)
        self._end_shut_down(force)

    def _begin_shut_down(self, force: bool) -> bool:
        """Stop taking work. False if there is nothing (more) to do."""
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

    def __enter__(self) -> BossWorkerAsync:
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

    async def aadd_work(self, *jobs: Any, timeout: float | None = None) -> list[int]:
        """:meth:`add_work` that waits in the event loop when the socket is full."""
        from . import aio

        payloads, limit = self._pickle_jobs(jobs, timeout)
        ids, target = self._client.queue_jobs(payloads, limit)
        try:
            await aio.aflush(self._client, target)
        except BossDiedError:
            self._client.forget_jobs(len(ids))
            raise
        return ids

    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool = False
    ) -> Any:
        """:meth:`get_result` for async code: same options, same results."""
        if timeout is not None:
            timeout = _check_timeout("timeout", timeout)
        from . import aio

        frame = await aio.anext_result(self._client, self._socket_waiter(), bool(blocking), timeout)
        if frame is None:
            return None
        return self._deliver(frame.job_id, self._client.unpickle_result(frame), with_id)

    async def aresults(self, *, with_id: bool = False) -> AsyncIterator[Any]:
        """``async for`` over results until none is pending."""
        while self._client.pending > 0:
            yield await self.aget_result(with_id=with_id)

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
                await aio.aflush(client, target)
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

        if self._waiter is None:
            self._waiter = aio.SocketWaiter(self._client)
        return self._waiter

    async def __aenter__(self) -> BossWorkerAsync:
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


def _join_or_kill(handle: BossHandle, timeout: float) -> None:
    handle.join(timeout)
    if handle.is_alive():
        log.error("the Boss did not exit after its BYE; killing it")


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
    if fn is None or not byvalue.needs_by_value(fn):
        return fn
    if byvalue.cloudpickle_available():
        return byvalue.ByValue(fn)
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


def _check_callable(name: str, value: object, required: bool = False) -> None:
    if value is None and not required:
        return
    if not callable(value):
        raise InvalidArgumentError(f"{name} must be callable, not {type(value).__name__}")


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise InvalidArgumentError(f"{name} must be at least {minimum}, not {value}")


def _check_timeout(name: str, value: object) -> float:
    """Seconds as a float; None and 0 mean no limit (0.0).

    Values above :data:`MAX_TIMEOUT` are rejected rather than taken as "no
    limit": a limit the platform cannot represent (``select``, ``setitimer``
    and ``threading`` overflow near 9.2e9 s) is almost always a unit mistake.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentError(f"{name} must be a number of seconds, not {type(value).__name__}")
    seconds = float(value)
    if math.isnan(seconds) or seconds < 0:
        raise InvalidArgumentError(f"{name} must be a number of seconds >= 0, not {value!r}")
    if seconds > MAX_TIMEOUT:
        raise InvalidArgumentError(
            f"{name} must be at most {MAX_TIMEOUT:.0e} seconds (about 31 years), not {value!r}; "
            "use None or 0 for no limit"
        )
    return seconds

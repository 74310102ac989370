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
engine's, unchanged; this module only turns jobs into futures and answers
into results or exceptions.

One background thread, the *collector*, reads answers and completes futures,
so that ``wait()``, ``as_completed()`` and callbacks work while nobody calls
``result()`` (as ``ProcessPoolExecutor``'s manager thread does).  It ends
when the Boss's socket closes: after a shutdown, once every answer is in, or
at once on ``shutdown(kill=True)``; it then fails whatever is still
unanswered with the reason and stops the pool.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, NamedTuple, ParamSpec, TypeVar

from . import answers, byvalue, checks
from .backend import Backend, LocalBackend
from .checks import StartMethod
from .errors import (
    BossDiedError,
    BossWorkerError,
    InvalidArgumentError,
    PicklingError,
    ShutDownError,
    TaskError,
    UnpicklingError,
)
from .executor_worker import Raised, call, run_chunk
from .outcome import rebuild_exception
from .payload import Pickled, dump
from .pool import BossWorkerAsync
from .protocol import Frame, Kind
from .session import DEFAULT_INIT_TIMEOUT, Session
from .streams import Bar, Progress, known_length

__all__ = ["Executor", "ExecutorOptions"]

T = TypeVar("T")
P = ParamSpec("P")

log = logging.getLogger("bossworker")
# The logger concurrent.futures reports a failing done-callback to: ours
# reports there too, with the same words, so whoever watches it for
# ProcessPoolExecutor sees ours.
_callbacks_log = logging.getLogger("concurrent.futures")

# The collector waits this long for an answer before it looks again; any
# answer, or the socket closing, wakes it at once, so this only bounds how
# long an idle collector sleeps.
_IDLE_WAIT = 3600.0
# map() sends the tasks it submits up front this many to a send.
_BATCH = 512


# -- main side: futures ----------------------------------------------------------


class _TaskOptions(NamedTuple):
    """What travels in each task's JOB header: its time limit (seconds, 0:
    none) and how many times it is run again when its worker dies
    (``retries``; which failures count is the executor's ``retry_on``)."""

    limit: float
    retries: int


class _TaskFuture(futures.Future[Any]):
    """A standard Future whose :meth:`cancel` can also take a task back from
    the Boss's queue.

    Why a round trip rather than holding tasks in main until a worker is
    free: every task goes to the Boss at once, so the Boss can pipeline tiny
    tasks to busy workers (our throughput comes from that), and a cancel is
    rare and cheap (one frame each way, well under a millisecond).
    """

    def __init__(self, core: _Core, job_id: int, limit: float) -> None:
        super().__init__()
        self._core = core
        self._job_id = job_id
        self._limit = limit  # for the message of a TaskTimeoutError

    def _invoke_callbacks(self) -> None:
        """Run the done-callbacks; one that raises is logged as the standard
        library logs it, and the next one runs.

        The standard library lets a ``BaseException`` (a callback calling
        ``sys.exit()``) escape, which in the collector thread would end it
        and leave every other future waiting forever; there, it is logged
        like any other.  In a caller's own thread (``cancel()``), it
        propagates, as the standard library's does."""
        in_collector = threading.current_thread() is self._core.thread
        callbacks: list[Callable[[futures.Future[Any]], object]] = self._done_callbacks  # type: ignore[attr-defined]
        for callback in callbacks:
            try:
                callback(self)
            except BaseException as exc:
                if not in_collector and not isinstance(exc, Exception):
                    raise
                _callbacks_log.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        """Cancel the task if no worker has it yet; True if it is cancelled.

        Succeeds while the task waits in main or in the Boss's queue.  Fails
        (False) once the Boss has handed it to a worker (even one that has
        not started it yet), or when it is done; from then on
        :meth:`running` is True until it is done.
        """
        if self.done():
            return self.cancelled()
        if self.running():
            return False
        return self._core.cancel([self])[0]


def _settle_cancel(future: _TaskFuture, dropped: bool | None) -> bool:
    """Apply the Boss's answer to a cancel of ``future``; return cancel()'s value."""
    if dropped:
        # No answer will ever come for it: cancel it, and tell wait() and
        # as_completed() (they only count a cancel once it is "notified").
        # (It may have been failed meanwhile by shutdown(kill=True).)
        if futures.Future.cancel(future):
            future.set_running_or_notify_cancel()
        return future.cancelled()
    if dropped is False:
        # A worker has it: it can no longer be cancelled, so it is running.
        with future._condition:  # re-entrant: the calls below take it again
            if not future.done() and not future.running():
                future.set_running_or_notify_cancel()
    return future.cancelled()


# -- main side: the engine state -----------------------------------------------


class _Core:
    """Everything an Executor runs on; the Executor itself is a thin front.

    Futures and the collector thread hold this, never the Executor, so an
    Executor dropped without ``shutdown()`` can be collected: its finalizer
    then shuts this down without waiting, as ``ProcessPoolExecutor`` does.
    """

    def __init__(
        self, session: Session, opts: _TaskOptions, retry_on: int, workers: int, remote: str = ""
    ) -> None:
        self.session = session
        self.client = session.client  # started with keep_records=False: futures carry no outcome details
        self.opts = opts  # the executor's own task options (ExecutorOptions has others)
        self.remote = remote  # the backend's name if its workers are elsewhere (Dask), else ""
        self.retry_on = retry_on  # the failures a retried task is run again for (RetryOn bits)
        self.pid = os.getpid()
        # Guards the fields below.  Re-entrant: the finalizer of a dropped
        # Executor calls shutdown() from whatever thread the garbage collector
        # runs in, possibly one that holds this lock already.
        self.lock = threading.RLock()
        self.futures: dict[int, _TaskFuture] = {}  # job id -> its future, until answered
        # Sending tasks in batches (see _send): tasks queued in main and not
        # sent yet (an upper bound), and how many tasks sent and unanswered
        # keep every worker busy.
        self.deferred = 0
        self.defer_at = max(32, 8 * workers)
        self.shutting_down = False
        self.killed = False
        # Functions of a __main__ the workers cannot import (python -c, a
        # notebook) travel by value; so do those pickle refuses (lambdas,
        # closures), found when pickling fails.  One wrapper per function,
        # so its code is pickled once however many tasks use it.
        # (Non-empty: who cannot import it, for the message without cloudpickle.)
        self.main_by_value = (
            f"the {remote} workers"
            if remote
            else ""
            if byvalue.main_is_importable()
            else "a worker (python -c, a notebook: it has no file)"
        )
        self.by_value: weakref.WeakKeyDictionary[Any, byvalue.TaskByValue] = weakref.WeakKeyDictionary()
        self.broken: BaseException | None = None  # set when the Boss died
        # One cancel round trip at a time.  Re-entrant: an abandoned map()
        # cancels its leftovers when collected, possibly inside a cancel.
        self.cancel_lock = threading.RLock()
        # Taken around every pool.shut_down(): the collector's graceful one
        # and a kill from another thread must not reap the Boss together.
        self.stop_lock = threading.Lock()
        self.thread = threading.Thread(
            target=self._collect, name="bossworker-executor-collector", daemon=True
        )
        self.thread.start()

    # -- submitting ----------------------------------------------------------

    def submit(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: _TaskOptions
    ) -> _TaskFuture:
        self.client.check_owner()  # before any lock: a forked child's copy may be held
        checks.callable_arg("fn", fn, required=True)
        if self.main_by_value and getattr(fn, "__module__", None) == "__main__":
            return self.submit_many([(fn, args, kwargs)], opts)[0]  # by value, or why not
        try:
            pickled = dump((fn, args, kwargs))
        except Exception:  # noqa: BLE001 - submit_many makes the failed future
            return self.submit_many([(fn, args, kwargs)], opts)[0]
        with self.lock:  # submit_many for one call, without its lists (the hot path)
            if self.broken is not None or self.shutting_down:
                return self.submit_many([(fn, args, kwargs)], opts)[0]  # raises
            [job_id] = self._send([pickled], opts)
            future = _TaskFuture(self, job_id, opts.limit)
            self.futures[job_id] = future
            return future

    def submit_many(
        self,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        opts: _TaskOptions,
    ) -> list[_TaskFuture]:
        """Submit several calls with one send (``map`` sends its first batch
        so: one system call and one Boss wake-up instead of one per task)."""
        self.client.check_owner()
        pickled: list[Any] = []
        for fn, args, kwargs in calls:
            checks.callable_arg("fn", fn, required=True)
            if self.main_by_value and getattr(fn, "__module__", None) == "__main__":
                if not byvalue.cloudpickle_available():
                    error = PicklingError(
                        f"the task {getattr(fn, '__qualname__', fn)!r} is defined in __main__, which "
                        f"{self.main_by_value} cannot import; {byvalue.INSTALL_HINT}, or define it "
                        "in a module of its own"
                    )
                    pickled.append(error)
                    continue
                fn = self.travelling(fn)
            try:
                pickled.append(dump((fn, args, kwargs)))
                continue
            except Exception as exc:  # noqa: BLE001 - stdlib: the future carries it
                first: Exception = exc
            hint = ""
            if not isinstance(fn, byvalue.ByValue) and byvalue.needs_by_value(fn):
                # A lambda, a closure, a function of a __main__ the workers
                # cannot import: by value, with cloudpickle, if it is there.
                if byvalue.cloudpickle_available():
                    try:
                        pickled.append(dump((self.travelling(fn), args, kwargs)))
                        continue
                    except Exception as exc:  # noqa: BLE001 - reported as the first failure
                        first = exc
                else:
                    hint = f"; {byvalue.INSTALL_HINT}"
            error = PicklingError(
                f"the task ({getattr(fn, '__qualname__', fn)!r} and its arguments) "
                f"cannot be pickled: {first}{hint}"
            )
            error.__cause__ = first
            pickled.append(error)
        with self.lock:
            if self.broken is not None:
                raise BossDiedError(f"the executor is broken: {self.broken}; create a new one")
            if self.shutting_down:
                raise ShutDownError("cannot schedule new futures after shutdown")
            # Registered under the lock that the collector takes to find a
            # future, so an answer cannot arrive before its future exists.
            sendable = [p for p in pickled if not isinstance(p, PicklingError)]
            ids = iter(self._send(sendable, opts) if sendable else [])
            result = []
            for p in pickled:
                if isinstance(p, PicklingError):
                    future = _TaskFuture(self, 0, opts.limit)
                    future.set_exception(p)
                else:
                    job_id = next(ids)
                    future = _TaskFuture(self, job_id, opts.limit)
                    self.futures[job_id] = future
                result.append(future)
            return result

    def travelling(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` as it is sent: wrapped to travel by value (cloudpickle)
        when it must and can; else itself (pickling then says why not)."""
        if isinstance(fn, byvalue.ByValue) or not byvalue.cloudpickle_available():
            return fn
        try:
            wrapped = self.by_value.get(fn)
        except TypeError:  # not weakly referenceable (a partial of a builtin, ...)
            return byvalue.TaskByValue(fn)
        if wrapped is None:
            wrapped = byvalue.TaskByValue(fn)
            with contextlib.suppress(TypeError):
                self.by_value[fn] = wrapped
        return wrapped

    def _send(self, pickled: list[Pickled], opts: _TaskOptions) -> list[int]:
        """Queue these tasks and send them now, unless the Boss already
        holds enough tasks to keep every worker busy (lock held).

        Why: a send per ``submit`` costs a system call and a Boss wake-up
        per task, which on tiny tasks takes CPU from the workers.  When at
        least ``defer_at`` tasks already sent await their answers, those
        answers will come, and the collector sends every queued task (in
        one write) before it waits again; so a deferred task waits in main
        no longer than the Boss's own queue would have kept it.  Below that
        (a lone task, a trickle), each submit sends at once: no latency
        added."""
        client = self.client
        if not client.wants_to_send:
            self.deferred = 0  # whatever was deferred has gone out since
        defer = len(self.futures) - self.deferred >= self.defer_at
        ids, target = client.queue_jobs(
            pickled, opts.limit, opts.retries, self.retry_on if opts.retries else 0
        )
        if defer:
            self.deferred += len(ids)
            return ids
        try:
            client.flush(target)
        except (BossDiedError, ShutDownError):
            client.forget_jobs(ids)
            raise
        self.deferred = 0
        return ids

    # -- cancelling ----------------------------------------------------------

    def cancel(self, fs: Iterable[_TaskFuture]) -> list[bool]:
        """Cancel these futures where the Boss still holds their tasks; one
        round trip for all.  Returns each future's ``cancel()`` value."""
        self.client.check_owner()  # before any lock: a forked child's copy may be held
        fs = list(fs)
        with self.cancel_lock:  # two cancels of one future must not both ask
            asked = [f for f in fs if not f.done() and not f.running()]
            answers = self.client.cancel_jobs([f._job_id for f in asked]) if asked else []
            dropped = dict(zip(map(id, asked), answers, strict=True))
            with self.lock:
                for f, answer in zip(asked, answers, strict=True):
                    if answer:
                        self.futures.pop(f._job_id, None)
            return [_settle_cancel(f, dropped.get(id(f))) if id(f) in dropped else f.cancelled() for f in fs]

    # -- shutting down -------------------------------------------------------

    def shutdown(self, wait: bool, cancel_futures: bool, kill: bool) -> None:
        if os.getpid() != self.pid:
            return  # a forked copy of main: the pool is not ours to stop
        with self.lock:
            first = not self.shutting_down
            self.shutting_down = True
            kill = kill and not self.killed
            self.killed = self.killed or kill
            pending = list(self.futures.values())
        if cancel_futures and pending:
            self.cancel(pending)
        if kill:
            # Closes the socket: the collector wakes and fails what is left.
            with self.stop_lock, contextlib.suppress(BossWorkerError):
                self.session.stop(force=True)
        elif first:
            # The Boss finishes the queue, says BYE and leaves; the collector
            # sees the socket close once every answer is in.
            with contextlib.suppress(BossWorkerError):
                self.client.send_control(Kind.SHUTDOWN)
        if wait and threading.current_thread() is not self.thread:
            self.thread.join()

    # -- the collector -------------------------------------------------------

    def _collect(self) -> None:
        """Complete futures as answers come, until the socket closes.

        Nothing a task's data or a user's callback does may end this thread
        (every other future would wait forever): a failure while completing
        one future fails that future (see :meth:`_complete`).  If the thread
        must end all the same (our own bug), every future it owns fails at
        once with the reason, and the pool is stopped."""
        client = self.client
        error: BaseException | None = None
        crashed = False
        try:
            while True:
                try:
                    frame = client.next_result(blocking=True, timeout=_IDLE_WAIT)
                except BossWorkerError as exc:  # the Boss died (or a forced stop said so)
                    error = exc
                    break
                if frame is not None:
                    # Those read with it too, in one batch: one lock for all.
                    self._complete([frame, *client.take_filed()])
                elif client.eof_or_closed:
                    break
        except BaseException as exc:  # see the docstring: fail all, never hang
            log.exception("bossworker: the Executor's collector thread failed; every unfinished task fails")
            error = BossWorkerError(
                f"the executor's collector thread failed ({exc!r}), so no answer can be read any more; "
                "create a new executor"
            )
            error.__cause__ = exc
            crashed = True
        self._finish(error, crashed)

    def _complete(self, frames: list[Frame]) -> None:
        """Complete the futures of these answers.  A failure while completing
        one (its result's unpickling raising anything, ``SystemExit``
        included; a bug of ours in decoding) fails that future with the
        error attached and is logged once; the others go on."""
        with self.lock:
            pop = self.futures.pop
            owners = [pop(frame.job_id, None) for frame in frames]
        for frame, future in zip(frames, owners, strict=True):
            if future is None:
                continue  # cannot happen: every job has a future until answered
            try:
                ok, value = self._outcome(frame, future._limit)
            except BaseException as exc:  # this task's failure only
                log.exception("bossworker: the answer to task %d could not be decoded", frame.job_id)
                ok, value = False, TaskError(f"the task's answer could not be decoded in main: {exc!r}")
                value.__cause__ = exc
            _settle(future, ok, value)

    def _outcome(self, frame: Frame, limit: float) -> tuple[bool, Any]:
        """An answer frame as (True, value) or (False, exception)."""
        ok, value = answers.decode(frame, self.client.segments, limit, "task")
        if not ok and isinstance(value, UnpicklingError) and not isinstance(value.__cause__, Exception):
            # A SystemExit or KeyboardInterrupt caught here: rarer, and not
            # what main expects; say it once (the future carries it).
            log.warning(
                "bossworker: unpickling the result of task %d raised %r; that task's future fails with it",
                frame.job_id,
                value.__cause__,
            )
        if ok and type(value) is Raised:
            return False, rebuild_exception(value.exc_pickle, value.text, value.type_name, value.tb)
        return ok, value

    def _finish(self, error: BaseException | None, crashed: bool = False) -> None:
        """The socket is closed (or the collector failed): fail what is
        unanswered, stop the pool."""
        with self.lock:
            left = list(self.futures.values())
            self.futures.clear()
            killed = self.killed
            if crashed or (not killed and not self.shutting_down):
                self.broken = error or BossDiedError("the Boss process died")
            self.shutting_down = True
        for future in left:
            reason: BaseException
            if crashed:
                assert error is not None
                reason = error
            elif killed:
                reason = ShutDownError(
                    "the executor was stopped with shutdown(kill=True) before this task finished"
                )
            else:
                reason = BossDiedError(f"the Boss process died before this task finished ({error})")
            _settle(future, False, reason)
        with self.stop_lock:
            if not self.killed:  # else the killing thread stops the pool
                with contextlib.suppress(BossWorkerError):
                    # After a failed collector nobody reads answers: a
                    # graceful stop would wait for them.
                    self.session.stop(force=crashed)


def _settle(future: _TaskFuture, ok: bool, value: Any) -> None:
    """Set a future's result or exception; never raises (a future cancelled
    or failed meanwhile keeps its state; callbacks are guarded by
    :meth:`_TaskFuture._invoke_callbacks`)."""
    try:
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)
    except futures.InvalidStateError:
        pass
    except BaseException:  # nothing may end the collector
        log.exception("bossworker: completing the future of task %d failed", future._job_id)


# -- interpreter exit ------------------------------------------------------------

_live_cores: weakref.WeakSet[_Core] = weakref.WeakSet()


def _at_exit() -> None:
    """At interpreter exit, finish the work of every Executor still open (as
    ``ProcessPoolExecutor`` does): submitted tasks complete, nothing is left.

    But when the program ends on a ``KeyboardInterrupt`` (Ctrl-C while it
    waited on a future or a ``map`` outside a ``with`` block), what no
    worker has is cancelled and the running tasks are killed, as when Ctrl-C
    leaves a ``with Executor(...)`` block.  (The interpreter has reported the
    exception, as ``sys.last_value``, before it runs this hook.)"""
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for core in list(_live_cores):
        with contextlib.suppress(Exception):
            core.shutdown(wait=True, cancel_futures=interrupted, kill=interrupted)


# Run before the interpreter joins its threads and before atexit callbacks
# (where the pools' own finalizers would force-stop them), like
# concurrent.futures' own hook.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_at_exit)
else:  # pragma: no cover - every CPython since 3.9 has it
    import atexit

    atexit.register(_at_exit)


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
            self._core = _Core(session, _TaskOptions(limit, count), retry_bits, workers, remote)
        except BaseException:
            # Its collector thread could not start (a process limit): stop
            # the Boss and workers now, not at some garbage collection.
            session.stop(force=True)
            raise
        _live_cores.add(self._core)
        # Dropped without shutdown(): finish the work in the background.
        finalizer = weakref.finalize(self, self._core.shutdown, False, False, False)
        finalizer.atexit = False  # _at_exit does it, waiting

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
        return ExecutorOptions(self, _TaskOptions(limit, count))

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
        return _map(self, self._core.opts, fn, iterables, timeout, chunksize, buffersize, progress)

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

    def __init__(self, executor: Executor, opts: _TaskOptions) -> None:
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
        return _map(self._executor, self._opts, fn, iterables, timeout, chunksize, buffersize, progress)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Does nothing: the view does not own the workers; shut the Executor down."""


def _map(
    executor: Executor,
    opts: _TaskOptions,
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    progress: Progress = False,
) -> Iterator[T]:
    checks.callable_arg("fn", fn, required=True)
    checks.progress(progress)
    lengths = [known_length(iterable) for iterable in iterables]
    total = min(n for n in lengths if n is not None) if any(n is not None for n in lengths) else None
    checks.whole_number("chunksize", chunksize)
    if buffersize is not None:
        checks.whole_number("buffersize", buffersize)
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))):
        raise InvalidArgumentError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if timeout is not None and not timeout <= checks.MAX_TIMEOUT:  # inf, 1e10, nan: as every other limit
        checks.seconds("timeout", timeout)
    end_time = None if timeout is None else time.monotonic() + timeout
    core = executor._core
    if byvalue.needs_by_value(fn) or (core.main_by_value and getattr(fn, "__module__", None) == "__main__"):
        fn = core.travelling(fn)  # once for the whole map (a chunk carries fn too)
    calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
    tasks: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]
    if chunksize > 1:
        tasks = ((run_chunk, (fn, chunk)) for chunk in _batched(calls, chunksize))
    else:
        tasks = ((fn, args) for args in calls)

    def submit_next() -> _TaskFuture | None:
        task = next(tasks, None)
        return None if task is None else core.submit(task[0], task[1], {}, opts)

    # Submitted now, as the standard library does (errors show at the call),
    # in batches: one send each.
    fs: deque[_TaskFuture] = deque()
    first = tasks if buffersize is None else itertools.islice(tasks, buffersize)
    while True:
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
        batch = [(task_fn, args, {}) for task_fn, args in itertools.islice(first, _BATCH)]
        if not batch:
            break
        fs.extend(core.submit_many(batch, opts))

    def results() -> Iterator[T]:
        # Holds the executor: one dropped while its map is still being read
        # must not shut down under it.
        owner = executor  # noqa: F841
        refill = False
        bar = Bar(progress, total)
        try:
            while True:
                if refill and buffersize is not None:
                    future = submit_next()
                    if future is not None:
                        fs.append(future)
                    del future  # it may be the head below: hold its result once only
                refill = True
                if not fs:
                    return
                head = fs.popleft()
                wait = None if end_time is None else end_time - time.monotonic()
                try:
                    values = [head.result(wait)]
                except futures.TimeoutError:
                    if head.done():
                        raise  # the task's own TimeoutError (or ours: TaskTimeoutError)
                    head.cancel()
                    raise
                del head  # keep no reference to a big result or an exception
                # Each result is popped as it is yielded: while this
                # generator waits at a yield, it holds no result already
                # handed out (a local would keep it alive until the next one).
                if chunksize > 1:
                    values = values.pop()
                    values.reverse()
                while values:
                    yield values.pop()
                    bar.step()
        finally:
            bar.close()
            if fs:
                _cancel_leftovers(core, fs)

    return results()


def _cancel_leftovers(core: _Core, fs: Iterable[_TaskFuture]) -> None:
    """Cancel what an abandoned ``map`` still has queued.

    The cancel is a round trip whose reply the collector thread reads.  An
    abandoned map is finalized in whatever thread drops it; the cyclic
    garbage collector may do that in the collector thread itself, in the
    middle of its reading, where waiting for the reply would wait for
    itself forever.  There, the cancel is handed to a short-lived thread."""
    if threading.current_thread() is not core.thread:
        core.cancel(fs)
        return
    fs = list(fs)
    with contextlib.suppress(RuntimeError):  # at interpreter exit no thread starts: then they run
        threading.Thread(
            target=core.cancel, args=(fs,), name="bossworker-executor-cancel", daemon=True
        ).start()


def _batched(iterable: Iterator[T], n: int) -> Iterator[tuple[T, ...]]:
    """``itertools.batched`` (3.12+)."""
    while chunk := tuple(itertools.islice(iterable, n)):
        yield chunk

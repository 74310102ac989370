"""The engine under ``bossworker.Executor``: futures, the collector thread, exit.

Holds :class:`Core` (everything an Executor runs on: its
:class:`~bossworker.session.Session`, the futures of unanswered tasks, the
*collector* thread), :class:`TaskFuture` (a standard Future whose ``cancel()``
can take a task back from the Boss's queue), :class:`TaskOptions` (what travels
in each task's JOB header) and the interpreter-exit hook that finishes the work
of every Executor still open (:data:`live_cores`).

The collector reads answers and completes futures, so that ``wait()``,
``as_completed()`` and callbacks work while nobody calls ``result()`` (as
``ProcessPoolExecutor``'s manager thread does).  It ends when the Boss's socket
closes: after a shutdown, once every answer is in, or at once on
``shutdown(kill=True)``; it then fails whatever is still unanswered with the
reason and stops the pool.

The rule it keeps: no thread we own dies of user data.  Nothing a task's
result or a user's done-callback does (unpickling that raises anything,
``SystemExit`` included; a callback calling ``sys.exit()``) may end the
collector, since every other future would then wait forever: such a failure
fails that one future and is logged once.  If the collector must end all the
same (our own bug), every future it owns fails at once with the reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent import futures
from typing import Any, NamedTuple

from . import answers, byvalue, checks
from .errors import (
    BossDiedError,
    BossWorkerError,
    PicklingError,
    ShutDownError,
    TaskError,
    UnpicklingError,
)
from .executor_worker import Raised
from .outcome import rebuild_exception
from .payload import Pickled, dump
from .protocol import Frame, Kind
from .session import Session

__all__ = ["Core", "TaskFuture", "TaskOptions", "live_cores"]

log = logging.getLogger("bossworker")
# The logger concurrent.futures reports a failing done-callback to: ours
# reports there too, with the same words, so whoever watches it for
# ProcessPoolExecutor sees ours.
_callbacks_log = logging.getLogger("concurrent.futures")

# The collector waits this long for an answer before it looks again; any
# answer, or the socket closing, wakes it at once, so this only bounds how
# long an idle collector sleeps.
_IDLE_WAIT = 3600.0


# -- main side: futures ----------------------------------------------------------


class TaskOptions(NamedTuple):
    """What travels in each task's JOB header: its time limit (seconds, 0:
    none) and how many times it is run again when its worker dies
    (``retries``; which failures count is the executor's ``retry_on``)."""

    limit: float
    retries: int


class TaskFuture(futures.Future[Any]):
    """A standard Future whose :meth:`cancel` can also take a task back from
    the Boss's queue.

    Why a round trip rather than holding tasks in main until a worker is
    free: every task goes to the Boss at once, so the Boss can pipeline tiny
    tasks to busy workers (our throughput comes from that), and a cancel is
    rare and cheap (one frame each way, well under a millisecond).
    """

    def __init__(self, core: Core, job_id: int, limit: float) -> None:
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


def _settle_cancel(future: TaskFuture, dropped: bool | None) -> bool:
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


class Core:
    """Everything an Executor runs on; the Executor itself is a thin front.

    Futures and the collector thread hold this, never the Executor, so an
    Executor dropped without ``shutdown()`` can be collected: its finalizer
    then shuts this down without waiting, as ``ProcessPoolExecutor`` does.
    """

    def __init__(
        self, session: Session, opts: TaskOptions, retry_on: int, workers: int, remote: str = ""
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
        self.futures: dict[int, TaskFuture] = {}  # job id -> its future, until answered
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
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: TaskOptions
    ) -> TaskFuture:
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
            future = TaskFuture(self, job_id, opts.limit)
            self.futures[job_id] = future
            return future

    def submit_many(
        self,
        calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]],
        opts: TaskOptions,
    ) -> list[TaskFuture]:
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
                    future = TaskFuture(self, 0, opts.limit)
                    future.set_exception(p)
                else:
                    job_id = next(ids)
                    future = TaskFuture(self, job_id, opts.limit)
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

    def _send(self, pickled: list[Pickled], opts: TaskOptions) -> list[int]:
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

    def cancel(self, fs: Iterable[TaskFuture]) -> list[bool]:
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


def _settle(future: TaskFuture, ok: bool, value: Any) -> None:
    """Set a future's result or exception; never raises (a future cancelled
    or failed meanwhile keeps its state; callbacks are guarded by
    :meth:`TaskFuture._invoke_callbacks`)."""
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

live_cores: weakref.WeakSet[Core] = weakref.WeakSet()


def _at_exit() -> None:
    """At interpreter exit, finish the work of every Executor still open (as
    ``ProcessPoolExecutor`` does): submitted tasks complete, nothing is left.

    But when the program ends on a ``KeyboardInterrupt`` (Ctrl-C while it
    waited on a future or a ``map`` outside a ``with`` block), what no
    worker has is cancelled and the running tasks are killed, as when Ctrl-C
    leaves a ``with Executor(...)`` block.  (The interpreter has reported the
    exception, as ``sys.last_value``, before it runs this hook.)"""
    interrupted = isinstance(getattr(sys, "last_value", None), KeyboardInterrupt)
    for core in list(live_cores):
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

"""``Executor.map`` (and ``ExecutorOptions.map``): tasks from iterables, results in order.

Submits the tasks up front in batches (one send each) or, with
``buffersize``, at most that many ahead of the reader; chunks calls for
``chunksize``; bounds the whole iteration by ``timeout``; and cancels what is
still queued when the caller leaves the loop early, without ever making the
collector thread wait for its own reply (see :func:`cancel_leftovers`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from typing import Any, TypeVar

from . import byvalue, checks
from .errors import InvalidArgumentError
from .executor_core import Core, TaskFuture, TaskOptions
from .executor_worker import run_chunk
from .streams import Bar, Progress, known_length

__all__ = ["run_map"]

T = TypeVar("T")

# map() sends the tasks it submits up front this many to a send.
_BATCH = 512


def run_map(
    owner: object,
    core: Core,
    opts: TaskOptions,
    fn: Callable[..., T],
    iterables: tuple[Iterable[Any], ...],
    timeout: float | None,
    chunksize: int,
    buffersize: int | None,
    progress: Progress = False,
) -> Iterator[T]:
    """:meth:`bossworker.Executor.map` on ``core`` with task options ``opts``.

    Checks the arguments and submits the first tasks now (errors show at the
    call); the returned iterator yields results in input order and, when it
    is left or dropped early, cancels what is still queued.  ``owner`` (the
    Executor) is held while the iterator lives, so that an Executor dropped
    while its map is read does not shut down under it."""
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
    if byvalue.needs_by_value(fn) or (core.main_by_value and getattr(fn, "__module__", None) == "__main__"):
        fn = core.travelling(fn)  # once for the whole map (a chunk carries fn too)
    calls: Iterator[tuple[Any, ...]] = zip(*iterables, strict=False)
    tasks: Iterator[tuple[Callable[..., Any], tuple[Any, ...]]]
    if chunksize > 1:
        tasks = ((run_chunk, (fn, chunk)) for chunk in _batched(calls, chunksize))
    else:
        tasks = ((fn, args) for args in calls)

    def submit_next() -> TaskFuture | None:
        task = next(tasks, None)
        return None if task is None else core.submit(task[0], task[1], {}, opts)

    # Submitted now, as the standard library does (errors show at the call),
    # in batches: one send each.
    fs: deque[TaskFuture] = deque()
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
        held = owner  # noqa: F841
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


def _cancel_leftovers(core: Core, fs: Iterable[TaskFuture]) -> None:
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

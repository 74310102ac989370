"""One running Boss and main's connection to it, from start to stop: the
engine under both facades.

::

    BossWorkerAsync (pool.py) --+                     +--> Backend.start(config) --> Boss process
                                +--> Session ---------+--> Client (client.py on connection.py: blocking)
    Executor (executor.py) -----+    prepare handlers  |      MainLedger (ledger.py: the books)
                                     wait READY        +--> SocketWaiter (aio.py: the asyncio driver)
                                     stop: graceful, forced, by finalizer

A :class:`Session` prepares the handlers for the start method (by value
where they cannot travel by name; refused with the remedy where they cannot
travel at all), starts the Boss through a backend, waits for READY and turns
INIT_FAILED into the right exception, and stops the Boss: gracefully (every
answer read, BYE, the Boss reaped), by force (SIGTERM, then SIGKILL), or by
its finalizer when the facade that holds it is dropped.  Both facades hold
one as peers; neither reaches into the other.

A session belongs to the process that made it: used in another (an
``os.fork()`` child, a worker that inherited it) it raises
:class:`~bossworker.errors.WrongProcessError`; stopping it there does
nothing (a ``with`` block left in a child never stops the parent's pool).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, overload

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only async users pay it
    from . import aio

from . import byvalue, checks
from .backend import Backend, BossHandle, LocalBackend, default_start_method
from .client import Client
from .config import BossConfig, WorkerSpec
from .errors import NOT_IMPORTABLE_HINT, BossDiedError, SerializationError, WorkerInitError
from .payload import PICKLE_PROTOCOL, Segments, new_prefix
from .process import pickle_as_if_spawning, signal_description
from .protocol import InitFailure, Kind

__all__ = ["DEFAULT_INIT_TIMEOUT", "DEFAULT_READ_SIZE", "Session", "prepare_handlers"]

log = logging.getLogger("bossworker")

# How long a graceful stop waits for the Boss to exit after its BYE, and a
# forced stop waits after SIGTERM, before killing it.
_JOIN_TIMEOUT = 5.0
_FORCE_TIMEOUT = 1.0
# Makes a session's one SocketWaiter (two would register twice on one loop).
_WAITER_LOCK = threading.Lock()

Handler = Callable[..., Any] | None

#: Bytes asked for per socket read unless the pool's read_size= says otherwise.
DEFAULT_READ_SIZE = 1024 * 1024

#: How long a worker may take to start (its init_handler included) unless
#: the pool's init_timeout= says otherwise.
DEFAULT_INIT_TIMEOUT = 60.0


def prepare_handlers(
    method: str, work: Handler, init: Handler, exit: Handler
) -> tuple[Handler, Handler, Handler]:
    """The handlers ready to travel to a ``method`` child: themselves, or
    wrapped to travel by value where a new process cannot import them by
    name; refused with the remedy where they cannot travel at all."""
    if method == "fork":
        return work, init, exit
    work = _travelling("work_handler", work, method)
    init = _travelling("init_handler", init, method)
    exit = _travelling("exit_handler", exit, method)
    _check_importable(method, work, init, exit)
    return work, init, exit


class Session:
    """A started Boss and the connection to it. See the module docstring."""

    def __init__(
        self,
        work_handler: Callable[[Any], Any],
        *,
        init_handler: Handler = None,
        exit_handler: Handler = None,
        worker_count: int,
        start_method: str | None,
        max_jobs_per_worker: int | None,
        backend: Backend | None,
        init_timeout: float,
        max_worker_memory: int | str | None,
        read_size: int = DEFAULT_READ_SIZE,
        keep_records: bool = True,
        forward_logs: bool = True,
    ) -> None:
        """Start a Boss with ``worker_count`` workers through ``backend``
        (None: local processes) and return once a worker serves; raise with
        the cause if none can (nothing is left running then).  The caller
        has checked the counts and limits; the rest is checked here."""
        checks.backend(backend)
        memory_cap = None
        if max_worker_memory is not None:
            memory_cap = checks.memory_size(max_worker_memory)
            checks.memory_supported()
        method = checks.start_method(start_method) or default_start_method()
        work, init, exit_ = prepare_handlers(method, work_handler, init_handler, exit_handler)
        assert work is not None
        segments = Segments(new_prefix() if getattr(backend, "shares_memory", True) else None)
        # The Boss's and the workers' logging records come to main's logging,
        # at the level main's root logger has now (bossworker.logfwd).  (Not
        # yet on other backends: a Dask worker's slot takes no LOG frame.)
        local = backend is None or isinstance(backend, LocalBackend)
        log_level = logging.getLogger().getEffectiveLevel() if forward_logs and local else None
        spec = WorkerSpec(
            work, init, exit_, read_size, max_jobs_per_worker, segments, init_timeout, log_level
        )
        config = BossConfig(spec, worker_count, method, os.getpid(), max_worker_memory=memory_cap)
        backend = LocalBackend() if backend is None else backend
        if method != "fork":
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
        self.start_method = method
        sock, handle = backend.start(config)
        self.client = Client(sock, handle, spec.read_size, spec.segments, keep_records)
        self.handle: BossHandle = handle
        self._waiter: aio.SocketWaiter | None = None  # made on first async use
        self._finalizer = weakref.finalize(self, _emergency_stop, self.client, handle)
        try:
            self._wait_ready()
        except BaseException:
            self.stop(force=True)
            raise
        log.info(
            "pool started: Boss %s, %d workers, start method %s", handle.pid, config.worker_count, method
        )

    def _wait_ready(self) -> None:
        """Return once the Boss says a worker serves; raise with the cause
        the Boss or a worker reported if none can."""
        verdict = self.client.wait_started()
        if verdict is None:
            return
        text, failure = verdict
        if text is None:
            self.handle.join(1.0)  # its socket is closed: it is exiting
            status = signal_description(getattr(self.handle, "exitcode", None))
            raise BossDiedError(f"the Boss process died while starting ({status})")
        if failure == InitFailure.NOT_IMPORTABLE:
            head, _, rest = text.partition("\n")
            hint = NOT_IMPORTABLE_HINT.format(method=self.start_method)
            raise SerializationError(f"a new process could not import the handlers: {head}\n{hint}\n{rest}")
        if failure == InitFailure.BOSS:
            raise BossDiedError(f"the Boss process failed while starting: {text}")
        raise WorkerInitError(f"no worker could start:\n{text}")

    @property
    def owned(self) -> bool:
        """Whether this is the process that made the session."""
        return os.getpid() == self.client.owner_pid

    def socket_waiter(self) -> aio.SocketWaiter:
        """The asyncio driver of this session's connection (made on first use)."""
        from . import aio

        waiter = self._waiter
        if waiter is None:
            with _WAITER_LOCK:
                if self._waiter is None:
                    self._waiter = aio.SocketWaiter(self.client)
                waiter = self._waiter
        return waiter

    # -- stopping ----------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        """Stop the Boss and its workers; harmless to call again; does
        nothing in a process other than the owner.  Graceful: read every
        answer until BYE; ``force``: discard what is unretrieved, and
        waiters raise :class:`ShutDownError`.  Raises
        :class:`BossDiedError` if the Boss had died with results due."""
        if not self.begin_stop(force):
            return
        client = self.client
        if not force and not client.boss_died:
            client.drain()
            _join_after_bye(self.handle, _JOIN_TIMEOUT)
        self.end_stop(force)

    async def astop(self, force: bool = False) -> None:
        """:meth:`stop` that waits in the event loop."""
        import asyncio

        from . import aio

        if not self.begin_stop(force):
            return
        client, handle = self.client, self.handle
        if not force and not client.boss_died:
            target = client.queue_control(Kind.SHUTDOWN)
            with contextlib.suppress(BossDiedError):
                await aio.aflush(client, self.socket_waiter(), target)
            await aio.await_condition(client, self.socket_waiter(), lambda: client.bye)
            deadline = time.monotonic() + _JOIN_TIMEOUT
            while handle.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the Boss exits right after its BYE
        elif handle.is_alive():
            handle.terminate()  # the Boss kills its workers and exits at once
            deadline = time.monotonic() + _FORCE_TIMEOUT
            while handle.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
        self.end_stop(force)

    def begin_stop(self, force: bool) -> bool:
        """Stop taking work. False if there is nothing (more) to do, or this
        is not the owner's process."""
        if not self.owned:
            return False
        if force:
            self.client.begin_forced_stop()  # before the Boss dies: waiters must not blame it
        return self.client.stop_accepting() or force

    def end_stop(self, force: bool) -> None:
        """The Boss said BYE, died, or is to be killed: reap it, close the socket."""
        client = self.client
        died = client.boss_died
        _force_stop(client, self.handle)  # a no-op for a Boss that has exited
        if force:
            client.discard_results()
        elif died:
            client.discard_orphan_segments()
        client.close()
        if died and client.pending:
            raise BossDiedError(f"the Boss process died with {client.pending} result(s) pending")


def _join_after_bye(handle: BossHandle, timeout: float) -> None:
    """Wait up to ``timeout`` for a Boss that said BYE to exit.  One still
    there is stopped by force right after (``end_stop`` calls
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
    """The facade was dropped, or the interpreter exits: stop whatever still
    runs (nothing, after a stop) and free unretrieved results.  In a process
    other than the owner (a forked child exiting) it does nothing: the Boss
    and the socket are the parent's.

    Work still pending in a pool that was never shut down is lost: say so
    (a ResourceWarning, like an unclosed file, and a log WARNING) rather
    than drop it silently."""
    if os.getpid() != client.owner_pid:
        return
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
def _travelling(name: str, fn: Callable[..., Any], method: str) -> Callable[..., Any]: ...
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

"""Worker log forwarding: ``logging`` records made in the Boss and the
workers reach main's ``logging``.

Who does what::

    worker: logger.info(...) -> ForwardHandler -> LOG frame (job id in the
            header, the record as JSON) on the worker's socket, sent at once
    Boss:   forwards a worker's LOG frame to main by its header, unread; its
            own records (``"worker 123 died"``) go the same way
    main:   the reader of the socket (a ``get_result`` caller, the
            Executor's collector) turns each LOG frame back into a record
            and hands it to the logger of the same name (:func:`replay`)

Why frames on the sockets we have, not a queue of their own: a record then
travels in order with the answers (a job's log lines arrive before its
result), and one sent just before a worker is killed or recycled is already
in its socket, which the Boss reads to the end.

Exactly once: a child process (the Boss, a worker) drops every handler it
inherited (under ``fork``, main's own: a record would otherwise be handled
in the child *and* again in main) and keeps only the forwarding one, at the
level main's root logger had when the pool was made.  The payload is JSON of
plain values, so main never unpickles anything it did not ask for.

Every process imports this module; it uses the standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ForwardHandler", "install", "record_payload", "replay"]

# What a LogRecord holds that main rebuilds itself or that cannot travel.
_DROPPED = ("args", "exc_info", "message", "msg")
_PLAIN = (str, int, float, bool, type(None))


def record_payload(record: logging.LogRecord, job_id: int) -> bytes:
    """The record as JSON: its message formatted here (the arguments may not
    travel), its traceback as text, every extra attribute that is a plain
    value (others as their ``repr``), plus ``worker_pid`` and ``job_id``
    (None outside a job)."""
    data: dict[str, Any] = {}
    for key, value in record.__dict__.items():
        if key in _DROPPED:
            continue
        data[key] = value if isinstance(value, _PLAIN) else repr(value)
    data["msg"] = record.getMessage()
    if record.exc_info and not record.exc_text:
        data["exc_text"] = logging.Formatter().formatException(record.exc_info)
    data["worker_pid"] = os.getpid()
    data["job_id"] = job_id or None
    return json.dumps(data).encode("utf-8", "replace")


def replay(payload: bytes | memoryview) -> None:
    """In main: hand a forwarded record to the logger of its name, if that
    logger takes its level (filters and handlers are main's own).  Never
    raises: a bad record or a failing filter is reported by ``logging``."""
    try:
        data = json.loads(bytes(payload))
        record = logging.makeLogRecord(data)
    except ValueError:
        return  # not ours to crash on: a torn or foreign payload
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        try:
            logger.handle(record)
        except BaseException as exc:
            # A user's filter or handler raised (even sys.exit()): in a
            # thread we own (the Executor's collector) that must not end
            # it; in the main thread, a KeyboardInterrupt is the user's.
            if threading.current_thread() is threading.main_thread() and not isinstance(exc, Exception):
                raise
            logging.getLogger("bossworker").exception("a forwarded log record could not be handled")


class ForwardHandler(logging.Handler):
    """Sends each record to ``send(job_id, payload)`` at once, under a lock
    the process's other writers of that socket share, with ``SIGALRM``
    blocked (a job's time limit must not tear a frame in half)."""

    def __init__(
        self, send: Callable[[int, bytes], None], job_id: Callable[[], int], lock: threading.RLock
    ) -> None:
        super().__init__()
        self._send = send
        self._job_id = job_id
        self.lock_for_socket = lock

    def emit(self, record: logging.LogRecord) -> None:
        try:
            job = self._job_id()
            payload = record_payload(record, job)
            with self.lock_for_socket:
                mask = _block_alarm()
                try:
                    self._send(job, payload)
                finally:
                    if mask is not None:
                        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        except OSError:
            pass  # the Boss is gone: the worker's loop sees it and leaves; nothing to say
        except Exception:  # noqa: BLE001 - logging's rule: report, never raise
            self.handleError(record)


def _block_alarm() -> set[int | signal.Signals] | None:
    """Block SIGALRM; return the mask to restore (None: nothing to do)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        return None  # Python runs signal handlers in the main thread only
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})


def install(handler: logging.Handler, level: int) -> None:
    """Make ``handler`` this process's only log handler, at ``level`` on the
    root logger: every handler inherited from the parent (main's, under
    ``fork``) is dropped, so each record is handled once, in main."""
    manager = logging.Logger.manager
    for logger in list(manager.loggerDict.values()):
        if isinstance(logger, logging.Logger):
            for old in list(logger.handlers):
                logger.removeHandler(old)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)

"""What an :class:`~bossworker.Executor`'s workers run: :func:`call`, the
one work handler of every Executor, and :func:`run_chunk` for
``map(chunksize=n)``.

This module runs in the worker process (one file, one process): it imports
nothing of main's side, so that a spawned worker unpickling ``call`` loads
none of the Executor, the pool or the client (``tests/test_import_graph.py``).
Main reads a :class:`Raised` back in ``bossworker.executor``.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import JobAlarm
from .payload import dump_exception

__all__ = ["Raised", "call", "run_chunk"]

T = TypeVar("T")


class Raised:
    """What :func:`call` returns instead of a value when the task raised.

    The exception travels pickled (inside the answer's pickle), so that one
    that pickles but cannot be unpickled in main still arrives as text
    (main rebuilds it with ``outcome.rebuild_exception``).
    """

    __slots__ = ("exc_pickle", "tb", "text", "type_name")

    def __init__(self, exc_pickle: bytes | None, type_name: str, text: str, tb: str) -> None:
        self.exc_pickle = exc_pickle
        self.type_name = type_name
        self.text = text
        self.tb = tb

    def __reduce__(self) -> tuple[Any, ...]:
        return (Raised, (self.exc_pickle, self.type_name, self.text, self.tb))

    @classmethod
    def from_exception(cls, exc: BaseException) -> Raised:
        tb = "".join(traceback.format_exception(exc))
        text = "".join(traceback.format_exception_only(exc)).strip()
        kind = type(exc)
        type_name = f"{kind.__module__}.{kind.__qualname__}"
        exc_pickle: bytes | None
        try:
            exc_pickle = dump_exception(exc)
            pickle.loads(exc_pickle)  # some exceptions pickle but cannot be rebuilt
        except Exception:  # noqa: BLE001 - any failure means: send the text instead
            exc_pickle = None
        return cls(exc_pickle, type_name, text, tb)


def call(job: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]) -> Any:
    """The one work handler of every Executor: run ``fn(*args, **kwargs)``.

    An exception (any ``BaseException``, as ``ProcessPoolExecutor`` does) is
    caught here and returned as a :class:`Raised`, so it reaches main as an
    object, not as the engine's ERROR text.  The engine's own time-limit
    signal is let through: the engine answers that job TIMED_OUT.
    """
    fn, args, kwargs = job
    try:
        return fn(*args, **kwargs)
    except JobAlarm:
        raise
    except BaseException as exc:  # noqa: BLE001 - the task's failure is its result
        return Raised.from_exception(exc)


def run_chunk(fn: Callable[..., T], chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
    """``map(..., chunksize=n)``: one task runs ``n`` calls, in order."""
    return [fn(*args) for args in chunk]

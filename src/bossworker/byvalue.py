"""Handlers that travel by value: the optional ``cloudpickle`` path.

Under ``spawn`` and ``forkserver`` the Boss and every worker are fresh
interpreters that get their handlers by pickling, and plain ``pickle``
sends a function *by reference* (its module and name).  That fails for
lambdas and closures (they have no importable name), and for functions
defined in ``__main__`` when main has no file a child can import: a
``python -c`` script, the interactive prompt, a notebook.  ``cloudpickle``
(the ``cloudpickle`` extra: ``pip install 'bossworker[cloudpickle]'``) sends
such functions *by value*, code and all, as loky does.

:func:`by_value` wraps a handler in :class:`ByValue`, which pickles itself
with ``cloudpickle`` each time it travels (main -> Boss -> worker) and calls
the handler it holds.  ``cloudpickle`` is imported only when a handler needs
it, never by ``import bossworker``.
"""

from __future__ import annotations

import collections
import io
import pickle
import sys
from collections.abc import Callable
from typing import Any, ClassVar

__all__ = [
    "INSTALL_HINT",
    "ByValue",
    "TaskByValue",
    "by_value",
    "cloudpickle_available",
    "main_is_importable",
    "needs_by_value",
]

#: The hint every "cannot be pickled" message ends with when cloudpickle is missing.
INSTALL_HINT = "install the 'cloudpickle' extra (pip install 'bossworker[cloudpickle]') to send them by value"


class ByValue:
    """A callable that pickles the callable it holds with ``cloudpickle``.

    Calling it calls the wrapped callable with the same arguments.
    """

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __reduce__(self) -> tuple[Callable[[bytes], ByValue], tuple[bytes]]:
        # Pickled afresh for every child, never cached: what it holds may be
        # multiprocessing objects whose descriptors are passed to one child.
        return _load, (_cloudpickle(self.fn),)

    def __repr__(self) -> str:
        return f"ByValue({self.fn!r})"


class TaskByValue(ByValue):
    """A :class:`ByValue` for an Executor's task function: pickled with
    ``cloudpickle`` once, the bytes kept for every later task (a ``map``
    over a lambda pickles its code once, not once per item).  Unlike a
    handler's, a task function is not passed to a child being started, so
    multiprocessing objects it closes over are not expected to travel."""

    __slots__ = ("blob",)

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__(fn)
        self.blob: bytes | None = None

    def __reduce__(self) -> tuple[Callable[[bytes], ByValue], tuple[bytes]]:
        if self.blob is None:
            self.blob = _cloudpickle(self.fn)
        return _load, (self.blob,)


def _cloudpickle(obj: object) -> bytes:
    """``obj`` by cloudpickle, with multiprocessing's reducers (connections,
    queues' pipes, shared-memory arenas) in force as in a spawn's own
    pickling: a closure over a ``Queue`` then travels as the ``Queue``
    would in a ``Process``'s arguments (this runs inside ``Process.start``)."""
    from multiprocessing.reduction import ForkingPickler

    import cloudpickle

    class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc]  # untyped base
        # A class attribute: the C pickler reads dispatch_table when it is
        # made.  ForkingPickler keeps its reducers (the documented registry
        # multiprocessing.reduction.register) under a private name.
        dispatch_table: ClassVar[collections.ChainMap[Any, Any]] = collections.ChainMap(
            getattr(ForkingPickler, "_extra_reducers", {}), cloudpickle.CloudPickler.dispatch_table
        )

    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
    return buffer.getvalue()


def _load(blob: bytes) -> ByValue:
    # cloudpickle's output is plain pickle data: the standard loader reads it
    # (cloudpickle must be importable here only if the data refers to it).
    return ByValue(pickle.loads(blob))


def main_is_importable() -> bool:
    """Whether a spawned child can import main's functions by name: only when
    main was started from a file (``python script.py``, ``python -m pkg``)."""
    main = sys.modules.get("__main__")
    if getattr(getattr(main, "__spec__", None), "name", None):
        return True  # python -m: re-imported by its module name
    path = getattr(main, "__file__", None)
    return isinstance(path, str) and not path.startswith("<")


def needs_by_value(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` cannot travel to a spawned child by reference: it is
    defined in a ``__main__`` that the child cannot import, or plain pickle
    refuses it (a lambda, a closure, a bound method of an unpicklable object).
    """
    if isinstance(fn, ByValue):
        return False
    if getattr(fn, "__module__", None) == "__main__" and not main_is_importable():
        return True
    from .process import pickle_as_if_spawning

    try:
        # As a spawn pickles: a partial over a multiprocessing Queue travels
        # by reference, with the Queue's own reducer.
        pickle_as_if_spawning(fn, pickle.HIGHEST_PROTOCOL)
    except Exception:  # noqa: BLE001 - any failure means "not by reference"
        return True
    return False


def cloudpickle_available() -> bool:
    """Whether the ``cloudpickle`` extra is installed."""
    try:
        import cloudpickle  # noqa: F401
    except ImportError:
        return False
    return True


def by_value(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself when it can travel by reference, else ``ByValue(fn)``
    when ``cloudpickle`` is installed.  Raises ``ImportError`` naming the
    extra when ``fn`` needs it and it is missing."""
    if not needs_by_value(fn):
        return fn
    if not cloudpickle_available():
        raise ImportError(f"{fn!r} cannot be sent to a spawned process by reference; {INSTALL_HINT}")
    return ByValue(fn)

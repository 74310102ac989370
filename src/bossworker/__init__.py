"""bossworker: a Boss process and preforked workers you can feed jobs and
drain results from at any time, interleaved, blocking or not.

A Python take on Perl's Parallel::Fork::BossWorkerAsync::

    from bossworker import BossWorkerAsync

    def work(job):
        return {"product": job["a"] * job["b"]}

    with BossWorkerAsync(work, worker_count=2) as bw:
        bw.add_work({"a": 3, "b": 4})
        while bw.pending():
            print(bw.get_result()["product"])

The public names are those in ``__all__``.  Only the exceptions (and
logging's silence) are loaded with the package: the facades load on first
use (``__getattr__``, as ``concurrent.futures`` does), so a Boss or worker
process, which imports this package to reach its own modules, loads none of
main's code (the pool, its client, the streams, asyncio, the Executor).
"""

import logging
from typing import TYPE_CHECKING, Any

from .errors import (
    TIMED_OUT_ERROR,
    BossDiedError,
    BossWorkerError,
    InputClosedError,
    InvalidArgumentError,
    JobCancelledError,
    MemoryLimitError,
    NoPendingResultsError,
    PicklingError,
    RemoteTraceback,
    SerializationError,
    ShutDownError,
    TaskError,
    TaskTimeoutError,
    UnpicklingError,
    WorkerDiedError,
    WorkerInitError,
    WrongProcessError,
)

if TYPE_CHECKING:
    from .checks import StartMethod
    from .executor import Executor, ExecutorOptions
    from .outcome import Attempt, Outcome
    from .pool import BossWorkerAsync
    from .stats import Stats

__all__ = [
    "TIMED_OUT_ERROR",
    "Attempt",
    "BossDiedError",
    "BossWorkerAsync",
    "BossWorkerError",
    "Executor",
    "ExecutorOptions",
    "InputClosedError",
    "InvalidArgumentError",
    "JobCancelledError",
    "MemoryLimitError",
    "NoPendingResultsError",
    "Outcome",
    "PicklingError",
    "RemoteTraceback",
    "SerializationError",
    "ShutDownError",
    "StartMethod",
    "Stats",
    "TaskError",
    "TaskTimeoutError",
    "UnpicklingError",
    "WorkerDiedError",
    "WorkerInitError",
    "WrongProcessError",
]

__version__ = "0.2.0"

# A library's logger stays silent unless the program configures logging.
logging.getLogger("bossworker").addHandler(logging.NullHandler())

# Each public name loaded on first use -> the module that defines it.
_LAZY = {
    "Attempt": "outcome",
    "BossWorkerAsync": "pool",
    "Executor": "executor",
    "ExecutorOptions": "executor",
    "Outcome": "outcome",
    "StartMethod": "checks",
    "Stats": "stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

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
"""

import logging

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
)
from .executor import Executor, ExecutorOptions
from .outcome import Attempt, Outcome
from .pool import BossWorkerAsync, StartMethod
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
]

__version__ = "0.1.0"

# A library's logger stays silent unless the program configures logging.
logging.getLogger("bossworker").addHandler(logging.NullHandler())

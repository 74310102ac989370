"""What a Boss and its workers are told when they start: :class:`BossConfig`
and :class:`WorkerSpec`.

Every process imports this module (main builds the config, a Boss reads it,
a worker reads its spec), so it holds data only and imports the standard
library only: main's code must not load the Boss's or the worker's modules
to describe them (see ``tests/test_import_graph.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .payload import Segments

__all__ = ["HANDLER_EXIT_LIMIT", "BossConfig", "PickledAtSpawn", "WorkerSpec"]

#: How long a worker told to leave (shutdown, recycling) may take to finish
#: its init_handler and exit_handler before the Boss kills it, in seconds: a
#: handler that never returns must not hold a graceful shutdown forever.
HANDLER_EXIT_LIMIT = 30.0


def _no_segments() -> Segments:
    # Imported here, not at the top: this module stays standard-library only.
    from .payload import Segments

    return Segments(None)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker needs to know. Picklable when its handlers are."""

    work_handler: Callable[[Any], Any]
    init_handler: Callable[[], Any] | None
    exit_handler: Callable[[], Any] | None
    read_size: int
    max_jobs: int | None
    segments: Segments = field(default_factory=_no_segments)
    # Seconds a worker may take from its start to READY (init_handler
    # included) before the Boss kills it as an init failure; 0 = no limit.
    init_timeout: float = 0.0
    # Forward logging records to main (bossworker.logfwd) at this level on
    # the child's root logger; None: leave the child's logging alone.
    log_level: int | None = None


@dataclass(frozen=True, slots=True)
class BossConfig:
    """Everything the Boss needs. Picklable when the worker spec is."""

    worker: WorkerSpec
    worker_count: int
    start_method: str
    main_pid: int
    # The memory cap in bytes (max_worker_memory=), or None: no watching at
    # all.  A worker whose resident size passes it mid-job is killed and
    # its job answered with MEMORY_LIMIT_ERROR; one past it after an answer
    # is retired (see LocalFleet._check_memory, LocalFleet._recycle_if_over_memory).
    max_worker_memory: int | None = None
    # Seconds a worker told to leave gets before it is killed.  Not a
    # constructor argument of the public class: 30 s is the documented
    # promise; a backend (a test's, say) may pass a config with another.
    exit_limit: float = HANDLER_EXIT_LIMIT


class PickledAtSpawn:
    """``obj``, pickled only while a new process is being started, and
    received there as plain bytes (which ``worker.unpickle_spec`` opens).

    Pickling inside ``Process.start`` (multiprocessing's spawning context)
    lets multiprocessing objects in the handlers' state (a ``Queue``, a
    ``Lock``, a ``Value``) travel as they do in a ``Process``'s own
    arguments; and unpickling in our own code, not multiprocessing's, lets
    the child report a handler it cannot import instead of dying mute.
    """

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __reduce__(self) -> tuple[type[bytes], tuple[bytes]]:
        from multiprocessing.reduction import ForkingPickler  # see _no_segments

        from .payload import PICKLE_PROTOCOL

        return bytes, (bytes(ForkingPickler.dumps(self.obj, PICKLE_PROTOCOL)),)

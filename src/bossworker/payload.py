"""How a job or a result travels: pickled, inline or in shared memory.

**Pickling.**  Small objects go through ``pickle.dumps``, the fastest path
for them.  An object that looks big (a large ``bytes``/``str``/buffer, or a
container holding one at its top level) is pickled through a ``Pickler``
writing to a list of chunks instead: the C pickler hands a large ``bytes``
object to ``write()`` as it is, so the megabytes are never copied into a
growing pickle buffer (which costs several copies: 8 ms instead of 0 for
16 MiB here).

**Segments.**  A job or result whose pickle is at least :data:`THRESHOLD` bytes does not
travel inside its frame.  Its writer puts the pickle in a file under
``/dev/shm`` (memory, not disk) named for the pool, the job and the
direction, and sends the frame with :attr:`~bossworker.protocol.Flag.SEGMENT`
and no payload; the reader maps the file, unlinks it at once and unpickles
straight from the mapping.  So the megabytes are copied into memory once and
out once, instead of crossing two sockets through the Boss in 200 KiB
slices.

Who removes a segment (nothing may leak, whatever dies):

=====================  =================================  ======================================
segment                normally                           otherwise
=====================  =================================  ======================================
job    (``-j``)        the worker, as it starts the job   the Boss, when it answers the job
                                                          itself (timeout, worker death, no
                                                          worker) or leaves because main died;
                                                          main, after a forced stop
result (``-r``)        main, in ``get_result()``          the Boss, when the worker died before
                                                          answering; main, after a forced stop,
                                                          after the Boss died (but for results
                                                          it holds) or when the pool is
                                                          garbage-collected
=====================  =================================  ======================================

Where there is no writable ``/dev/shm`` (or it is full), and on the portable
path (what Windows runs, see ``portable.py``), payloads simply travel inside
their frames.
"""

from __future__ import annotations

import contextlib
import copyreg
import glob
import io
import mmap
import os
import pickle
import secrets
import sys
from typing import Any, Literal

__all__ = ["THRESHOLD", "Chunked", "Pickled", "Segments", "chunks_of", "dump", "dump_exception", "new_prefix"]

PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


def dump_exception(exc: BaseException) -> bytes:
    """``exc`` pickled by its own ``__reduce__``, whatever ``copyreg``
    reducers this process has for exception classes.

    Why: importing ``distributed`` installs tblib's reducers for every
    exception class, and a forked worker inherits them; they rebuild an
    exception without its ``__init__`` (a ``SystemExit`` loses its
    ``code``) and by setting attributes (a frozen-dataclass exception
    cannot be rebuilt at all).  Reducers for other types (the exception's
    arguments) are kept.  Raises what pickling raises."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, PICKLE_PROTOCOL)
    pickler.dispatch_table = {
        kind: reducer
        for kind, reducer in copyreg.dispatch_table.items()
        if not (isinstance(kind, type) and issubclass(kind, BaseException))
    }
    pickler.dump(exc)
    return buffer.getvalue()

# Below this a pickle goes inside its frame: a segment costs a few system
# calls and page faults, which only pay off for large payloads.
THRESHOLD = 256 * 1024

_SHM_DIR = "/dev/shm"

Direction = Literal["j", "r"]

Chunk = bytes | bytearray | memoryview


class Chunked:
    """A pickle kept as the chunks the pickler wrote (big buffers uncopied)."""

    __slots__ = ("chunks", "size")

    def __init__(self, chunks: list[Chunk], size: int) -> None:
        self.chunks = chunks
        self.size = size


# What dump() returns: plain bytes for the usual small object (no wrapper to
# allocate, per job), or Chunked for one that looked big.
Pickled = bytes | Chunked


def chunks_of(pickled: Pickled) -> tuple[list[Chunk], int]:
    """A pickle's chunks and total size, whichever form it has."""
    if isinstance(pickled, Chunked):
        return pickled.chunks, pickled.size
    return [pickled], len(pickled)


_BIG = THRESHOLD // 2
_BUFFER_TYPES = frozenset({bytes, bytearray, str, memoryview})


def _looks_big(obj: object) -> bool:
    """A cheap, shallow guess: is this object's pickle likely to be large?

    It runs for every job and result, so it looks at exact types only and
    one level down; a big pickle it misses still goes to a segment, with
    one more copy.
    """
    kind = type(obj)
    if kind in _BUFFER_TYPES:
        return len(obj) >= _BIG  # type: ignore[arg-type]
    if kind is dict:
        values: Any = obj.values()  # type: ignore[attr-defined]
    elif kind is list or kind is tuple:
        values = obj
    else:
        nbytes = getattr(obj, "nbytes", None)  # numpy arrays and the like
        return isinstance(nbytes, int) and nbytes >= _BIG
    if len(values) > 32:
        return False
    for value in values:  # noqa: SIM110 - a plain loop is faster than any(genexpr) here
        if type(value) in _BUFFER_TYPES and len(value) >= _BIG:
            return True
    return False


class _ChunkWriter(Chunked):
    """The file a Pickler writes to: it keeps each chunk as it is given."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__([], 0)

    def write(self, data: Chunk) -> int:
        self.chunks.append(data)
        n = len(data)
        self.size += n
        return n


def dump(obj: object) -> Pickled:
    """Pickle ``obj`` (highest protocol) without copying large buffers."""
    if _looks_big(obj):
        writer = _ChunkWriter()
        pickle.Pickler(writer, protocol=PICKLE_PROTOCOL).dump(obj)
        return writer
    return pickle.dumps(obj, protocol=PICKLE_PROTOCOL)


def new_prefix() -> str | None:
    """A fresh path prefix for one pool's segments, or None if unavailable.

    Unavailable on Windows (no ``/dev/shm``; under Wine the path would reach
    the host's), and so on the portable path anywhere: it is what Windows
    runs, and a portable run on Linux must carry large payloads as Windows
    does, inside frames, or that path goes untested."""
    # Imported here, not at the top: portable.py brings sockets and
    # selectors, and the codec modules that import this one (jobs,
    # boss.core) stay free of I/O imports (tests/test_import_graph.py).
    from .portable import PORTABLE

    if PORTABLE or sys.platform == "win32" or not (os.path.isdir(_SHM_DIR) and os.access(_SHM_DIR, os.W_OK)):
        return None
    return os.path.join(_SHM_DIR, f"bossworker-{os.getpid()}-{secrets.token_hex(6)}-")


class Segments:
    """One pool's segments. Picklable (it is only a path prefix)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str | None) -> None:
        self.prefix = prefix

    def path(self, job_id: int, direction: Direction) -> str:
        assert self.prefix is not None
        return f"{self.prefix}{job_id}-{direction}"

    def store(self, job_id: int, direction: Direction, pickled: Pickled) -> bool:
        """Write a pickle as a segment if it is big enough and there is room.

        Returns False when the caller should send it inline instead.
        """
        chunks, size = chunks_of(pickled)
        if self.prefix is None or size < THRESHOLD:
            return False
        path = self.path(job_id, direction)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return False
        try:
            _write_all(fd, chunks)
        except OSError:  # ENOSPC: /dev/shm is full
            with contextlib.suppress(OSError):
                os.unlink(path)
            return False
        finally:
            os.close(fd)
        return True

    def load(self, job_id: int, direction: Direction) -> Any:
        """Unpickle a segment and remove it. Raises if it is missing or bad."""
        path = self.path(job_id, direction)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.unlink(path)
            size = os.fstat(fd).st_size
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            with mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ) as mapping:
                return pickle.loads(mapping)
        finally:
            os.close(fd)

    def discard(self, job_id: int) -> None:
        """Remove both segments of a job, if they exist."""
        if self.prefix is None:
            return
        for direction in ("j", "r"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.prefix}{job_id}-{direction}")

    def discard_all(self, keep_results: frozenset[int] = frozenset()) -> None:
        """Remove every segment of this pool but the results of ``keep_results``."""
        if self.prefix is None:
            return
        keep = {self.path(job_id, "r") for job_id in keep_results}
        for path in glob.glob(glob.escape(self.prefix) + "*"):
            if path not in keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)


def _write_all(fd: int, chunks: list[Chunk]) -> None:
    pending = [memoryview(c).cast("B") for c in chunks]
    while pending:
        n = os.writev(fd, pending[:512])
        while n:
            if n >= len(pending[0]):
                n -= len(pending.pop(0))
            else:
                pending[0] = pending[0][n:]
                n = 0

"""The run's byte streams: taking over standard input and output, writing
records whole, reading input lines as they arrive, and counting a file's
lines."""

from __future__ import annotations

import contextlib
import os
import select
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

from .errors import UsageError

__all__ = [
    "LineSink",
    "claim_stdout",
    "count_lines",
    "open_input",
    "open_output",
    "read_line_batches",
    "regular_file_fd",
]

#: Input is read in chunks of this size (one chunk's lines make one batch).
READ_SIZE = 64 * 1024
#: Lines are counted in chunks of this size.
_COUNT_SIZE = 1024 * 1024
#: Records are written once this many bytes of them are waiting (and
#: whenever the runner is about to wait).
WRITE_SIZE = 64 * 1024


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[IO[bytes]]:
    """The input as unbuffered bytes: ``path``, or standard input for None.

    Standard input is taken over (see :func:`_take_over`): the pool's
    processes get ``/dev/null`` instead, so no handler can eat input lines.
    """
    if path is not None:
        try:
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        with source:
            yield source
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        with _take_over(sys.stdin, devnull) as fd, open(fd, "rb", buffering=0) as source:
            yield source
    finally:
        os.close(devnull)


@contextlib.contextmanager
def claim_stdout(wanted: bool) -> Iterator[int | None]:
    """With ``wanted``, take standard output over (see :func:`_take_over`)
    and yield a private descriptor for the records; else yield None.

    From then on the descriptor 1 that child processes inherit, and any
    ``print()`` in this one, write to standard error: a handler's print(),
    or a TARGET module printing as it is imported (which is why this comes
    before the import), cannot corrupt the JSON Lines.
    """
    if not wanted:
        yield None
        return
    sys.stdout.flush()
    with _take_over(sys.stdout, sys.stderr.fileno()) as fd:
        try:
            yield fd
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)


@contextlib.contextmanager
def open_output(path: str | None, stdout_fd: int | None, append: bool = False) -> Iterator[LineSink]:
    """Where the records go: ``path`` (created, or truncated unless
    ``append``), or ``stdout_fd`` from :func:`claim_stdout` for None.
    The sink is flushed on the way out (a closed pipe is ignored then:
    it was already reported)."""
    if path is None:
        assert stdout_fd is not None
        sink = LineSink(stdout_fd)
        try:
            yield sink
        finally:
            with contextlib.suppress(OSError):
                sink.flush()
        return
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    sink = LineSink(fd)
    try:
        yield sink
    finally:
        try:
            with contextlib.suppress(OSError):
                sink.flush()
        finally:
            os.close(fd)


class LineSink:
    """Writes whole lines to a descriptor: lines are gathered and written
    with one ``write`` of complete lines (looping only on a short write),
    never split at a buffer's edge, so a process killed between two writes
    leaves no partial line; only a kill *inside* a write can (see
    :mod:`.resume`, which repairs it).  Not thread-safe: the writer's lock
    guards it."""

    def __init__(self, fd: int, limit: int | None = WRITE_SIZE) -> None:
        self._fd = fd
        self._limit = limit
        self._pending: list[bytes] = []
        self._size = 0
        #: Flushed right after this sink, never before: the job log follows
        #: the output, so that it names no record the output lacks.
        self.follower: LineSink | None = None

    def pending_bytes(self) -> int:
        return self._size

    def write(self, text: str) -> None:
        """Add ``text`` (whole lines); written at once past ``limit`` bytes
        (None: only by :meth:`flush`)."""
        data = text.encode("utf-8")
        self._pending.append(data)
        self._size += len(data)
        if self._limit is not None and self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        """Write what is pending, then the follower's; OSError (EPIPE, a full
        disk) propagates."""
        if self._pending:
            data = memoryview(b"".join(self._pending))
            self._pending.clear()
            self._size = 0
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        if self.follower is not None:
            self.follower.flush()


@contextlib.contextmanager
def _take_over(stream: IO[Any], replacement: int) -> Iterator[int]:
    """A private duplicate of ``stream``'s descriptor, for this process
    alone, while the descriptor itself (0 or 1, which child processes
    inherit) points at ``replacement``; put back on exit.  The caller owns
    (closes) the duplicate."""
    try:
        fd = stream.fileno()
        saved = os.dup(fd)
    except (AttributeError, ValueError, OSError) as exc:
        raise UsageError(
            f"standard {'input' if stream is sys.stdin else 'output'} is not usable: {exc}"
        ) from None
    private = os.dup(fd)
    os.dup2(replacement, fd)
    try:
        yield private
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def read_line_batches(source: IO[bytes], wake_fd: int | None = None) -> Iterator[list[bytes]]:
    """The lines of ``source`` (without their newline), as they become available.

    Each batch holds the complete lines one read of up to :data:`READ_SIZE`
    bytes brought, so a pipe's line is handed on as soon as it has arrived,
    and a file's lines go on in large batches.  A last line without a
    newline is a line.  Memory: one read, plus the line being assembled.
    Reading stops early (the partial line is dropped) once ``wake_fd`` is
    readable: a run that stops (``--halt``) is not held up by a pipe that
    sends nothing more.
    """
    fd = source.fileno()
    partial: list[bytes] = []  # the start of a line that did not end yet
    while True:
        if wake_fd is not None and wake_fd in select.select([fd, wake_fd], [], [])[0]:
            return
        data = os.read(fd, READ_SIZE)
        if not data:
            break
        if b"\n" not in data:
            partial.append(data)
            continue
        if partial:
            partial.append(data)
            data = b"".join(partial)
            partial = []
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            partial.append(tail)
        yield lines
    if partial:
        yield [b"".join(partial)]


def regular_file_fd(source: IO[bytes]) -> int | None:
    """``source``'s descriptor if it is a regular file, else None."""
    try:
        fd = source.fileno()
        info = os.fstat(fd)
    except (OSError, ValueError):
        return None
    return fd if stat.S_ISREG(info.st_mode) else None


def count_lines(fd: int, stop: Any = None) -> int | None:
    """The number of lines :func:`read_line_batches` yields for the regular
    file open as ``fd``, read from offset 0 with ``pread`` (the descriptor's
    own position does not move, so the reader is not disturbed).

    Counts newline bytes in 1 MiB chunks (C speed, flat memory), plus one
    for a last line without a newline.  ``stop``, an object with
    ``is_set()``, gives up early: None is returned then, or on a read error.
    """
    offset = 0
    lines = 0
    last = b"\n"
    while stop is None or not stop.is_set():
        try:
            chunk = os.pread(fd, _COUNT_SIZE, offset)
        except OSError:
            return None
        if not chunk:
            return lines + (last != b"\n")
        lines += chunk.count(b"\n")
        last = chunk[-1:]
        offset += len(chunk)
    return None

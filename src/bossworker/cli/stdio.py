"""The run's byte streams: taking over standard input and output, reading
input lines as they arrive, and counting a file's lines."""

from __future__ import annotations

import contextlib
import os
import stat
import sys
from collections.abc import Iterator
from typing import IO, Any

from .errors import UsageError

__all__ = ["count_lines", "open_input", "open_output", "read_line_batches", "regular_file_fd"]

#: Input is read in chunks of this size (one chunk's lines make one batch).
READ_SIZE = 64 * 1024
#: Lines are counted in chunks of this size.
_COUNT_SIZE = 1024 * 1024


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
def open_output(path: str | None) -> Iterator[IO[str]]:
    """The output as text: ``path``, or standard output for None.

    Standard output is taken over (see :func:`_take_over`): the pool's
    processes, and any print() in this one, write to standard error instead,
    so a handler's print() cannot corrupt the JSON Lines.
    """
    if path is None:
        sys.stdout.flush()
        with _take_over(sys.stdout, sys.stderr.fileno()) as fd:
            out = open(fd, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
            try:
                yield out
            finally:
                with contextlib.suppress(OSError):  # a closed pipe; already reported
                    out.close()
        return
    try:
        out = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with out:
        yield out


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


def read_line_batches(source: IO[bytes]) -> Iterator[list[bytes]]:
    """The lines of ``source`` (without their newline), as they become available.

    Each batch holds the complete lines one read of up to :data:`READ_SIZE`
    bytes brought, so a pipe's line is handed on as soon as it has arrived,
    and a file's lines go on in large batches.  A last line without a
    newline is a line.  Memory: one read, plus the line being assembled.
    """
    fd = source.fileno()
    partial: list[bytes] = []  # the start of a line that did not end yet
    while data := os.read(fd, READ_SIZE):
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

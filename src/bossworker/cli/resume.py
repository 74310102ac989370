"""``--resume`` / ``--resume-failed``: which input lines a stopped run
already finished, read back from its output file.

Where the done-set comes from: **the output file itself**.  A line is done
exactly when its record is in the output, so there is no second file (a
journal, a SQLite file) that could disagree with the output after a crash
between two writes, and nothing extra to write per job.  Records are
written as whole lines (:class:`.stdio.LineSink`); a kill inside a
``write`` can leave a partial last line, and a crash of the whole machine
can leave the end of the file missing or as zero bytes (data not yet on
disk; records are not fsync'd, which would cost a disk flush per batch).
Both are *repaired* here: the invalid tail is cut off, and its lines, which
then have no record, are run again.  A line that is not a record *before*
valid ones is not a torn write: it is refused (wrong file?), as is a
second record for one line.

How it is kept: :class:`DoneSet`, a bitmap in blocks of 65,536 lines,
at most 1 bit per input line (8 KiB per block), and a block whose lines
are all done collapses to a marker.  A resumed run's records fill the file
in nearly input order (lines are read in order, and at most
``--max-in-flight`` are between read and written), so the blocks that stay
partly done are few: the ones around where the run stopped, and those with
blank lines (which have no record) or, with ``--resume-failed``, failed
lines.  The reader forgets each block once it has passed it.  A
2,000,000-line output costs about 31 markers, not 2,000,000 set entries.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .errors import UsageError

__all__ = ["DoneSet", "Scan", "parse_head", "repair_tail", "scan_output"]

_BLOCK_BITS = 16
_BLOCK = 1 << _BLOCK_BITS  # lines per block
_READ_SIZE = 1024 * 1024
_HEAD = b'{"line":'


class DoneSet:
    """A set of positive line numbers, in bounded memory (see the module docstring)."""

    def __init__(self) -> None:
        # block index -> its bitmap, or None once every line of it is done
        self._blocks: dict[int, bytearray | None] = {}
        self._counts: dict[int, int] = {}
        self._len = 0

    def add(self, number: int) -> bool:
        """Add line ``number``; False if it was there already."""
        index, bit = divmod(number - 1, _BLOCK)
        if index not in self._blocks:
            self._blocks[index] = bytearray(_BLOCK // 8)
        bits = self._blocks[index]
        if bits is None:
            return False
        byte, mask = bit >> 3, 1 << (bit & 7)
        if bits[byte] & mask:
            return False
        bits[byte] |= mask
        self._len += 1
        count = self._counts[index] = self._counts.get(index, 0) + 1
        if count == _BLOCK:
            self._blocks[index] = None  # full: the bitmap is not needed any more
            del self._counts[index]
        return True

    def __contains__(self, number: object) -> bool:
        if not isinstance(number, int) or number < 1:
            return False
        index, bit = divmod(number - 1, _BLOCK)
        bits = self._blocks.get(index, b"")
        if bits is None:
            return True
        return bool(bits) and bool(bits[bit >> 3] & (1 << (bit & 7)))

    def __len__(self) -> int:
        return self._len

    def forget_below(self, number: int) -> None:
        """Free the blocks wholly below line ``number`` (the reader has passed
        them; membership of their lines is not asked again)."""
        last = (number - 1) // _BLOCK  # the block of ``number`` stays
        for index in [i for i in self._blocks if i < last]:
            del self._blocks[index]
            self._counts.pop(index, None)

    def memory_blocks(self) -> int:
        """How many 8 KiB bitmaps are held (for tests and the benchmark)."""
        return sum(bits is not None for bits in self._blocks.values())


def parse_head(line: bytes) -> tuple[int, bool] | None:
    """``(line number, failed)`` of one complete record as this command
    writes it (``{"line":N,"result":...}`` or ``{"line":N,"error":...}``,
    without its newline); None if it is not one."""
    if not line.startswith(_HEAD) or not line.endswith(b"}"):
        return None
    comma = line.find(b",", len(_HEAD))
    if comma < 0:
        return None
    digits = line[len(_HEAD) : comma]
    if not digits.isdigit() or len(digits) > 18:
        return None
    key = line[comma + 1 : comma + 9]
    if key == b'"result"':
        failed = False
    elif key.startswith(b'"error"'):
        failed = True
    else:
        return None
    number = int(digits)
    return (number, failed) if number >= 1 else None


@dataclass(slots=True)
class Scan:
    """What :func:`scan_output` found."""

    done: DoneSet
    records: int = 0  # records kept in the output
    failed_removed: int = 0  # error records removed (--resume-failed)
    torn_bytes: int = 0  # bytes cut off the end (a torn last record)


def _lines(fd: int) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line, complete)`` for each line of the file, read in 1 MiB
    chunks; ``complete`` is False for a last line without a newline."""
    offset = 0
    partial = b""
    while chunk := os.read(fd, _READ_SIZE):
        data = partial + chunk if partial else chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            yield offset + start, data[start:end], True
            start = end + 1
        offset += start
        partial = data[start:]
    if partial:
        yield offset, partial, False


def scan_output(path: str, resume_failed: bool, on_record: Callable[[int, bool], None] | None = None) -> Scan:
    """Read back the output of an earlier run of this command.

    Every record of ``path`` marks its line done (with ``resume_failed``,
    only the successful ones: the error records are removed from the file,
    which is rewritten beside itself and renamed over it, so a kill during
    the rewrite leaves the old or the new file, whole).  An invalid tail (a
    torn last record) is cut off.  A missing file is an empty one.
    ``on_record(line, failed)`` is called for each record kept.
    Raises :class:`UsageError` for a file that is not such an output.
    """
    scan = Scan(DoneSet())
    try:
        source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return scan
    except OSError as exc:
        raise UsageError(f"--resume cannot read {path}: {exc.strerror}") from None
    bad_from: int | None = None  # start of a run of invalid lines (a torn tail, if last)
    bad_line = 0
    size = 0
    failed = 0
    with source:
        for count, (offset, line, complete) in enumerate(_lines(source.fileno()), start=1):
            size = offset + len(line) + complete
            head = parse_head(line) if complete else None
            if head is None:
                if bad_from is None:
                    bad_from, bad_line = offset, count
                continue
            if bad_from is not None:
                raise UsageError(
                    f"--resume: line {bad_line} of {path} is not a record of bossworker run, and "
                    "records follow it; is it the right --output file?  Fix or remove that line"
                )
            number, is_failed = head
            if is_failed and resume_failed:
                failed += 1
                continue
            if not scan.done.add(number):
                raise UsageError(
                    f"--resume: {path} has two records for input line {number}; it is not the "
                    "output of runs of this command over one input (remove one, or start afresh "
                    "without --resume)"
                )
            scan.records += 1
            if on_record is not None:
                on_record(number, is_failed)
    if bad_from is not None:
        scan.torn_bytes = size - bad_from
        os.truncate(path, bad_from)
    if failed:
        _drop_failed(path)
        scan.failed_removed = failed
    return scan


def _drop_failed(path: str) -> None:
    """Rewrite ``path`` without its error records, atomically (a temporary
    file beside it, fsync'd, renamed over it)."""
    temporary = f"{path}.resume-{os.getpid()}"
    try:
        with open(path, "rb") as source, open(temporary, "wb") as copy:
            for _, line, complete in _lines(source.fileno()):
                head = parse_head(line) if complete else None
                if head is not None and not head[1]:
                    copy.write(line + b"\n")
            copy.flush()
            os.fsync(copy.fileno())
        os.replace(temporary, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise UsageError(f"--resume-failed cannot rewrite {path}: {exc.strerror or exc}") from None


def repair_tail(path: str) -> int:
    """Cut a last line without a newline off ``path`` (a torn write);
    return how many bytes were cut.  A missing file is left missing."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            end = size
            while end > 0:
                start = max(0, end - 65536)
                block = os.pread(f.fileno(), end - start, start)
                newline = block.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
    except FileNotFoundError:
        return 0
    if end < size:
        os.truncate(path, end)
    return size - end

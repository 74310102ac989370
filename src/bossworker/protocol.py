"""The wire protocol: frames, an incremental decoder and a send queue. No I/O.

Every message between main, the Boss and a worker is one *frame*::

    offset  size  field
    0       1     kind      (Kind)
    1       1     flags     (Flag: how the payload is stored)
    2       6     padding   (zero), but: in a JOB, its retry settings
                            (u8 retries, u8 RetryOn bits, see job_header);
                            in an answer, u32 at offset 4 = the pid of the
                            worker that answered or died (see answer_header)
    8       8     length    of the payload, in bytes
    16      8     job_id    (0 when the frame is not about a job; in INIT_FAILED,
                            an InitFailure saying what failed)
    24      8     seconds   float, one meaning per kind: in a JOB, its time
                            limit (Frame.limit; 0.0 = none); in an answer
                            (RESULT, ERROR, TIMED_OUT), how long the job ran
                            (Frame.ran); 0.0 in every other frame
    32      ...   payload   opaque bytes (a pickle, UTF-8 text or JSON)

The header is fixed-size and little-endian, so a reader knows how many bytes
to wait for before it looks at a payload, and any byte string is a valid
payload (the Perl original split on a delimiter, which payloads had to avoid
and which cost a quadratic re-scan of the buffer at every read).

Nothing here owns a socket (the h11/wsproto style): the Boss's event
loop, the worker's blocking loop, main's blocking client and the asyncio
front end all share the same :class:`Decoder` and :class:`SendQueue`, and the
codec is tested alone.  :func:`recv_frames` is the one place a non-blocking
socket someone else owns is read into a :class:`Decoder` (main, both Bosses
and the Dask plugin use it).  The Boss only ever reads headers: it forwards the
``raw`` bytes of a frame untouched and never unpickles a job or a result, so
a hostile or broken payload cannot crash it.

A payload is at most :data:`MAX_PAYLOAD` bytes: a header that claims more is
a :class:`ProtocolError` before anything is allocated (bytes a handler wrote
to its worker's socket must not make the Boss allocate 2**62 bytes).  Larger
pickles travel in ``/dev/shm`` segments (see :mod:`bossworker.payload`), never
inside a frame.
"""

from __future__ import annotations

import errno
import mmap
import struct
import sys
from collections.abc import Iterable
from enum import IntEnum
from typing import NamedTuple, Protocol, TypeAlias

__all__ = [
    "HEADER",
    "HEADER_SIZE",
    "MAX_PAYLOAD",
    "Buffer",
    "Decoder",
    "Flag",
    "Frame",
    "InitFailure",
    "Kind",
    "ProtocolError",
    "RetryOn",
    "SendQueue",
    "answer_header",
    "answer_pid",
    "encode",
    "job_header",
    "job_retry",
    "recv_frames",
]

HEADER = struct.Struct("<BB6xQQd")
HEADER_SIZE = HEADER.size  # 32
# The same 32 bytes with the padding used (see job_header / answer_header).
_JOB_HEADER = struct.Struct("<BBBB4xQQd")
_ANSWER_HEADER = struct.Struct("<BB2xIQQd")
_ANSWER_PID = struct.Struct("<I")

Buffer: TypeAlias = bytes | bytearray | memoryview

# A frame larger than this is handed out as the very bytearray it was read
# into, instead of being copied out of the shared read buffer.
_DEFAULT_CHUNK = 1024 * 1024

#: The largest payload one frame may carry (4 GiB).  Far above what travels
#: inline in practice (pickles of 256 KiB and more go to /dev/shm segments
#: when there is room), and low enough that a reader can allocate it.
MAX_PAYLOAD = 1 << 32


class ProtocolError(Exception):
    """A peer sent bytes that are not a valid frame. Always a bug (ours)."""


class Kind(IntEnum):
    """What a frame means. The direction is given as sender -> receiver."""

    JOB = 1  # main -> Boss -> worker: payload = pickled job
    RESULT = 2  # worker -> Boss -> main: payload = pickled return value
    ERROR = 3  # worker/Boss -> main: payload = UTF-8 text of the job's ERROR
    TIMED_OUT = 4  # worker/Boss -> main: the job ran out of time; no payload
    SHUTDOWN = 5  # main -> Boss, Boss -> worker: finish what you have, then exit
    BYE = 6  # Boss -> main: every result has been sent; the Boss is exiting
    READY = 7  # worker -> Boss: init done; Boss -> main: the pool is serving
    INIT_FAILED = 8  # worker -> Boss, Boss -> main: payload = UTF-8 traceback
    STATS_REQUEST = 9  # main -> Boss: please send a STATS frame
    STATS = 10  # Boss -> main: payload = JSON object of counters
    # (20 and up: kept apart from the numbers above so that kinds added
    # elsewhere meanwhile do not collide.)
    CANCEL = 20  # main -> Boss: drop job ``job_id`` if it still waits in the queue
    CANCEL_REPLY = 21  # Boss -> main: payload = b"\x01" dropped, b"\x00" not (started, done or unknown)
    # Boss -> main: job ``job_id`` failed an attempt and was queued again
    # (retries=); header and payload as the ERROR / TIMED_OUT it replaces.
    RETRYING = 22
    # worker -> Boss -> main, Boss -> main: payload = a logging record as
    # JSON (bossworker.logfwd); job_id = the job running when it was made
    # (0: none).  The Boss forwards a worker's unread.
    LOG = 23


class InitFailure(IntEnum):
    """What an INIT_FAILED frame reports, in its ``job_id`` field."""

    WORKERS = 0  # every initial worker failed to start (init_handler, init_timeout, no process)
    NOT_IMPORTABLE = 1  # a new process could not unpickle (import) the handlers
    BOSS = 2  # the Boss itself failed before it could serve


class Flag(IntEnum):
    """Bits of a frame's ``flags`` byte."""

    # The payload is not in the frame: it waits in a shared-memory segment
    # named after the job (see bossworker.payload.Segments).  The reader
    # loads it from there (the worker a JOB's, main a RESULT's); the Boss
    # only needs to know to clean up after a worker that died holding one.
    SEGMENT = 1
    # On answer frames (ERROR), saying how to read the payload and why:
    EXCEPTION = 2  # an ERROR whose payload also carries the pickled exception
    DIED = 4  # an ERROR the Boss made because the job's worker died under it
    MEMORY = 8  # an ERROR the Boss made because the worker exceeded its memory cap
    # An ERROR whose payload ends with what the Boss measured (the exit code,
    # the memory figures): see bossworker.jobs.Facts.
    FACTS = 16


class RetryOn(IntEnum):
    """Bits of a JOB's retry mask: which failures of an attempt the Boss
    retries (at most ``retries`` times), instead of answering them."""

    DIED = 1  # the worker died under the job (signal, exit, segfault)
    TIMED_OUT = 2  # the job ran out of time
    MEMORY = 4  # the worker exceeded its memory cap


_KINDS = frozenset(int(k) for k in Kind)


class Frame(NamedTuple):
    """One decoded frame. ``raw`` is the whole frame, header included.

    ``seconds`` is the header's float field as it is; read it through the
    name that says what it means for the frame's kind: :attr:`limit` for a
    JOB, :attr:`ran` for an answer."""

    kind: int
    flags: int
    job_id: int
    seconds: float
    raw: bytes | bytearray

    @classmethod
    def parse(cls, raw: bytes | bytearray) -> Frame:
        """The frame whose complete bytes (header included) are ``raw``."""
        kind, flags, _length, job_id, seconds = HEADER.unpack_from(raw)
        # tuple.__new__: without the NamedTuple's Python-level __new__ (the
        # Boss parses every job it sends a worker).
        return tuple.__new__(cls, (kind, flags, job_id, seconds, raw))

    @property
    def limit(self) -> float:
        """A JOB's time limit in seconds (0.0: none)."""
        return self.seconds

    @property
    def ran(self) -> float:
        """How long the job of an answer (RESULT, ERROR, TIMED_OUT) ran, in
        seconds, as its worker (or, for a job it answered itself, the Boss)
        measured it; 0.0 if not known."""
        return self.seconds

    @property
    def payload(self) -> memoryview:
        """The payload, without a copy."""
        return memoryview(self.raw)[HEADER_SIZE:]


def encode(kind: Kind, job_id: int = 0, payload: Buffer = b"", seconds: float = 0.0, flags: int = 0) -> bytes:
    """Return one complete frame as bytes (``seconds``: see :class:`Frame`)."""
    return HEADER.pack(kind, flags, len(payload), job_id, seconds) + payload


def job_header(
    kind: int, flags: int, length: int, job_id: int, limit: float, retries: int, retry_on: int
) -> bytes:
    """A JOB frame's header with its retry settings (``retries`` <= 255)."""
    return _JOB_HEADER.pack(kind, flags, retries, retry_on, length, job_id, limit)


def job_retry(raw: Buffer) -> tuple[int, int]:
    """A JOB frame's ``(retries, retry_on)``: (0, 0) for one never retried."""
    return raw[2], raw[3]


def answer_header(kind: int, flags: int, length: int, job_id: int, ran: float, pid: int) -> bytes:
    """The header of an answer (RESULT, ERROR, TIMED_OUT, RETRYING): ``ran``
    is how long the job ran, ``pid`` the worker that ran it (0: none)."""
    return _ANSWER_HEADER.pack(kind, flags, pid, length, job_id, ran)


def answer_pid(raw: Buffer) -> int:
    """The worker pid an answer carries (0 if none ran the job)."""
    pid: int = _ANSWER_PID.unpack_from(raw, 4)[0]
    return pid


class Decoder:
    """Turns a byte stream into frames, however the stream is chunked.

    Two ways to feed it:

    * ``feed(data)`` copies ``data`` in (simple; used by tests);
    * ``get_buffer()`` / ``buffer_updated(n)`` let a reader ``recv_into`` the
      decoder's own buffer, as asyncio's ``BufferedProtocol`` does, so bytes
      are copied once from the kernel and once out into the frame.  A frame
      larger than the chunk size gets a buffer of exactly its own size,
      which becomes the frame's ``raw`` without another copy.

    Decoded frames wait in the decoder until :meth:`take` collects them.
    ``at_frame_boundary`` tells a clean end of stream (between frames) from a
    torn one.  A frame of an unknown kind or with a payload above
    ``max_payload`` raises :class:`ProtocolError` (frames decoded before it
    are still there for :meth:`take`); the stream cannot be trusted after it.
    """

    __slots__ = ("_big", "_big_filled", "_buf", "_end", "_frames", "_max_payload", "_start")

    def __init__(self, chunk_size: int = _DEFAULT_CHUNK, max_payload: int = MAX_PAYLOAD) -> None:
        if chunk_size < HEADER_SIZE:
            raise ValueError(f"chunk_size must be at least {HEADER_SIZE}")
        self._max_payload = max_payload
        self._buf = _zeroed(chunk_size)
        self._start = 0  # first byte not yet decoded
        self._end = 0  # one past the last byte received
        self._big: bytearray | None = None  # a large frame being filled
        self._big_filled = 0
        self._frames: list[Frame] = []

    # -- input -----------------------------------------------------------

    def get_buffer(self) -> memoryview:
        """Return writable space to receive into; call :meth:`buffer_updated` next."""
        if self._big is not None:
            return memoryview(self._big)[self._big_filled :]
        if self._end == len(self._buf):
            self._compact()
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, nbytes: int) -> None:
        """Record that ``nbytes`` were written into the last :meth:`get_buffer`."""
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                big, self._big = self._big, None
                self._frames.append(Frame.parse(big))
            return
        self._end += nbytes
        self._parse()

    def feed(self, data: Buffer) -> None:
        """Copy ``data`` in and decode what is complete."""
        view = memoryview(data).cast("B")
        while view:
            target = self.get_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            target.release()
            self.buffer_updated(n)
            view = view[n:]

    # -- output ----------------------------------------------------------

    def take(self) -> list[Frame]:
        """Return the frames decoded so far, oldest first, and forget them."""
        frames, self._frames = self._frames, []
        return frames

    @property
    def at_frame_boundary(self) -> bool:
        """True when no partial frame is buffered (a clean place for EOF)."""
        return self._big is None and self._start == self._end

    # -- internals -------------------------------------------------------

    def _compact(self) -> None:
        pending = self._end - self._start
        if self._start:
            self._buf[:pending] = self._buf[self._start : self._end]
            self._start, self._end = 0, pending

    def _parse(self) -> None:
        buf = self._buf
        start, end = self._start, self._end
        append = self._frames.append
        unpack_from = HEADER.unpack_from
        new = tuple.__new__  # Frame(...) without its Python-level __new__
        with memoryview(buf) as view:
            while end - start >= HEADER_SIZE:
                kind, flags, length, job_id, seconds = unpack_from(buf, start)
                if kind not in _KINDS:
                    raise ProtocolError(f"unknown frame kind {kind} at offset {start}")
                if length > self._max_payload:
                    raise ProtocolError(
                        f"a frame of kind {kind} claims a payload of {length} bytes, "
                        f"above the limit of {self._max_payload}"
                    )
                total = HEADER_SIZE + length
                if end - start < total:
                    if total > len(buf):
                        # Too big for the shared buffer: give it one of its own.
                        big = bytearray(total)
                        have = end - start
                        big[:have] = view[start:end]
                        self._big, self._big_filled = big, have
                        start = end = 0
                    break
                append(new(Frame, (kind, flags, job_id, seconds, view[start : start + total].tobytes())))
                start += total
        if start == end:
            start = end = 0
        self._start, self._end = start, end


def _zeroed(size: int) -> mmap.mmap:
    """A writable buffer of ``size`` zero bytes whose pages are only made
    when first written.  A ``bytearray(size)`` is zero-filled at once: for
    the default megabyte, milliseconds of page faults that every Boss,
    worker and main paid at start-up before reading a byte, though most
    reads only ever touch the first page.  Raises MemoryError, as a
    bytearray would, when the address space is exhausted."""
    try:
        if sys.platform == "win32":
            return mmap.mmap(-1, size)
        # Private: a process forked later gets its own copy, not a share.
        return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    except OSError as exc:
        if exc.errno == errno.ENOMEM:
            raise MemoryError(f"no room for a read buffer of {size} bytes") from exc
        raise


class _Receiver(Protocol):
    """What :func:`recv_frames` needs of a socket."""

    def recv_into(self, buffer: memoryview, /) -> int: ...


def recv_frames(sock: _Receiver, decoder: Decoder, drain: bool = False) -> tuple[list[Frame], bool]:
    """Read what the non-blocking ``sock`` holds now into ``decoder``.

    Returns ``(frames, ended)``: the frames completed, oldest first (empty
    when nothing came, or only part of a frame), and whether the stream has
    ended: end-of-file, or an ``OSError`` other than "would block" (a broken
    socket is read as its end, as every reader treats it).  When ``ended``
    is True, ``frames`` are the last ones.

    One ``recv_into`` unless ``drain``: then it reads on while each read
    fills the room offered, and returns once a read comes back short (the
    socket is empty for now: that spares the system call that would say so),
    would block, or ends.  One read per call suits a loop that serves many
    sockets in turn; ``drain`` suits a reader that must not leave bytes
    behind (main's reader; a Boss reading a worker that has exited).

    Raises :class:`ProtocolError` (or ``MemoryError``) from the decoder on
    bytes that are not a frame; the frames completed before them are still
    in the decoder, for :meth:`Decoder.take`.
    """
    while True:
        with decoder.get_buffer() as buffer:
            room = len(buffer)
            try:
                n = sock.recv_into(buffer)
            except (BlockingIOError, InterruptedError):
                return decoder.take(), False
            except OSError:
                n = 0
        if not n:
            return decoder.take(), True
        decoder.buffer_updated(n)
        if not drain or n < room:
            return decoder.take(), False


class SendQueue:
    """Bytes waiting to be sent, kept as a list of buffers (no concatenation).

    A writer asks for :meth:`chunks` and passes them to ``socket.sendmsg``
    (one system call for many frames), then reports how much went out with
    :meth:`consume`.
    """

    __slots__ = ("_chunks", "_nbytes")

    # sendmsg accepts at most IOV_MAX (1024 on Linux) buffers per call.
    MAX_CHUNKS = 512

    def __init__(self) -> None:
        self._chunks: list[Buffer] = []
        self._nbytes = 0

    def __len__(self) -> int:
        """The number of bytes waiting."""
        return self._nbytes

    def __bool__(self) -> bool:
        return self._nbytes > 0

    def append(self, data: Buffer) -> None:
        """Queue ``data`` after everything already queued."""
        n = len(data)
        if n:
            self._chunks.append(data)
            self._nbytes += n

    def extend(self, items: Iterable[Buffer]) -> None:
        """Queue each of ``items`` in order."""
        chunks = self._chunks
        for item in items:
            n = len(item)
            if n:
                chunks.append(item)
                self._nbytes += n

    def chunks(self) -> list[Buffer]:
        """The next buffers to send, in order (at most :attr:`MAX_CHUNKS`)."""
        return self._chunks[: self.MAX_CHUNKS]

    def consume(self, nbytes: int) -> None:
        """Drop the first ``nbytes`` queued bytes: they have been sent."""
        if nbytes > self._nbytes:
            raise ValueError("consumed more than was queued")
        self._nbytes -= nbytes
        chunks = self._chunks
        i = 0
        while nbytes:
            size = len(chunks[i])
            if nbytes >= size:
                nbytes -= size
                i += 1
            else:
                chunks[i] = memoryview(chunks[i])[nbytes:]
                nbytes = 0
        if i:
            del chunks[:i]

    def clear(self) -> None:
        """Forget everything queued."""
        self._chunks.clear()
        self._nbytes = 0

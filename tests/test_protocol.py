"""The sans-IO frame codec, alone: no processes (and no socket but the
socketpair that :func:`recv_frames`, the one reader of a socket, is tested on)."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bossworker.protocol import (
    HEADER_SIZE,
    Decoder,
    Frame,
    Kind,
    ProtocolError,
    SendQueue,
    encode,
    recv_frames,
)

frames_strategy = st.lists(
    st.tuples(
        st.sampled_from(list(Kind)),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.binary(max_size=300),
        st.floats(min_value=0, max_value=1e6, allow_nan=False),
    ),
    max_size=8,
)


def decoded(stream: bytes, chunk_size: int, cuts: list[int]) -> list[tuple[int, int, bytes, float]]:
    decoder = Decoder(chunk_size)
    start = 0
    for cut in [*sorted(cuts), len(stream)]:
        decoder.feed(stream[start:cut])
        start = max(start, cut)
    assert decoder.at_frame_boundary
    return [(f.kind, f.job_id, bytes(f.payload), f.seconds) for f in decoder.take()]


@given(frames=frames_strategy, chunk_size=st.integers(min_value=HEADER_SIZE, max_value=200), data=st.data())
@settings(max_examples=300, deadline=None)
def test_any_split_of_any_frames_round_trips(
    frames: list[tuple[Kind, int, bytes, float]], chunk_size: int, data: st.DataObject
) -> None:
    stream = b"".join(encode(k, i, p, t) for k, i, p, t in frames)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=10))
    assert decoded(stream, chunk_size, cuts) == [(int(k), i, p, t) for k, i, p, t in frames]


@pytest.mark.parametrize("chunk_size", [HEADER_SIZE, 40, 64, 4096])
def test_every_single_byte_boundary(chunk_size: int) -> None:
    frames = [
        (Kind.JOB, 1, b"a" * 70, 1.5),
        (Kind.RESULT, 2, b"", 0.0),
        (Kind.ERROR, 3, bytes(range(256)), 0.0),
    ]
    stream = b"".join(encode(*f[:3], seconds=f[3]) for f in frames)
    expected = [(int(k), i, p, t) for k, i, p, t in frames]
    for cut in range(len(stream) + 1):
        assert decoded(stream, chunk_size, [cut]) == expected
    # and one byte at a time
    assert decoded(stream, chunk_size, list(range(len(stream)))) == expected


def test_recv_into_style_and_big_frames_are_not_copied_out() -> None:
    payload = bytes(range(256)) * 1000  # larger than the chunk size
    stream = encode(Kind.RESULT, 9, payload) + encode(Kind.BYE)
    decoder = Decoder(1024)
    pos = 0
    while pos < len(stream):
        buf = decoder.get_buffer()
        n = min(len(buf), 700, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        buf.release()
        decoder.buffer_updated(n)
        pos += n
    big, bye = decoder.take()
    assert isinstance(big.raw, bytearray)  # its own buffer, handed over as is
    assert bytes(big.payload) == payload and big.job_id == 9
    assert bye.kind == Kind.BYE
    assert decoder.at_frame_boundary


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="resident size read from /proc")
def test_a_read_buffer_costs_no_memory_until_written() -> None:
    """A decoder's read buffer is made of pages only as they are written: a
    zero-filled bytearray cost every process milliseconds of page faults
    per megabyte at start-up, though most reads touch one page."""

    def resident() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = resident()
    decoders = [Decoder(1024 * 1024) for _ in range(64)]
    assert resident() - before < 16 * 1024 * 1024  # 64 MiB if filled up front
    for i, decoder in enumerate(decoders):  # and each one works
        decoder.feed(encode(Kind.RESULT, i, b"x" * 100))
        (frame,) = decoder.take()
        assert frame.job_id == i and bytes(frame.payload) == b"x" * 100


def test_torn_frame_is_visible() -> None:
    decoder = Decoder(64)
    decoder.feed(encode(Kind.JOB, 1, b"abc")[:-1])
    assert decoder.take() == []
    assert not decoder.at_frame_boundary


def test_unknown_kind_is_a_protocol_error() -> None:
    decoder = Decoder(64)
    with pytest.raises(ProtocolError):
        decoder.feed(b"\xff" + bytes(HEADER_SIZE - 1))


def test_chunk_size_must_hold_a_header() -> None:
    with pytest.raises(ValueError):
        Decoder(HEADER_SIZE - 1)


@given(parts=st.lists(st.binary(min_size=0, max_size=50), max_size=20), sends=st.lists(st.integers(1, 40)))
def test_send_queue_keeps_order_across_partial_sends(parts: list[bytes], sends: list[int]) -> None:
    queue = SendQueue()
    queue.extend(parts)
    expected = b"".join(parts)
    assert len(queue) == len(expected)
    sent = b""
    for n in [*sends, len(expected)]:
        n = min(n, len(queue))
        sent += b"".join(bytes(c) for c in queue.chunks())[:n]
        queue.consume(n)
    assert sent == expected
    assert not queue
    with pytest.raises(ValueError):
        queue.consume(1)


def test_the_seconds_field_is_read_by_what_it_means() -> None:
    (job,) = _decode(encode(Kind.JOB, 1, b"x", seconds=2.5))
    (answer,) = _decode(encode(Kind.RESULT, 1, b"x", seconds=0.125))
    assert (job.limit, answer.ran) == (2.5, 0.125)


def _decode(stream: bytes) -> list[Frame]:
    decoder = Decoder()
    decoder.feed(stream)
    return decoder.take()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_recv_frames_reads_once_or_until_drained(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    stream = b"".join(encode(Kind.RESULT, i, bytes([i]) * 100) for i in range(50))  # 6,600 bytes
    theirs.sendall(stream)
    one = Decoder(HEADER_SIZE + 200)  # one read holds at most one or two frames
    frames, ended = recv_frames(ours, one)
    assert not ended and 1 <= len(frames) <= 2
    rest, ended = recv_frames(ours, one, drain=True)
    assert not ended
    assert [f.job_id for f in frames + rest] == list(range(50))
    assert [bytes(f.payload) for f in frames + rest] == [bytes([i]) * 100 for i in range(50)]
    assert recv_frames(ours, one, drain=True) == ([], False)  # nothing there: would block


def test_recv_frames_keeps_a_torn_frame_for_the_next_read(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    frame = encode(Kind.ERROR, 3, b"abc" * 50)
    decoder = Decoder()
    for cut in (1, HEADER_SIZE, HEADER_SIZE + 10):
        theirs.sendall(frame[:cut])
        assert recv_frames(ours, decoder, drain=True) == ([], False)
        theirs.sendall(frame[cut:])
        (got,), ended = recv_frames(ours, decoder, drain=True)
        assert got.raw == frame and not ended


def test_recv_frames_says_the_stream_ended_after_the_last_frames(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(encode(Kind.RESULT, 1, b"last") + encode(Kind.BYE))
    theirs.close()
    decoder = Decoder()
    frames, ended = recv_frames(ours, decoder, drain=True)
    # One read takes both frames (a short read), the next one the end.
    assert [f.kind for f in frames] == [Kind.RESULT, Kind.BYE] and not ended
    assert recv_frames(ours, decoder, drain=True) == ([], True)
    assert decoder.at_frame_boundary


def test_recv_frames_reads_a_broken_socket_as_its_end() -> None:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.close()
    ours.close()  # recv_into on a closed socket: OSError (EBADF)
    assert recv_frames(ours, Decoder()) == ([], True)


def test_recv_frames_leaves_the_frames_before_garbage_in_the_decoder(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    theirs.sendall(encode(Kind.RESULT, 1, b"ok") + b"\xff" * HEADER_SIZE)
    decoder = Decoder()
    with pytest.raises(ProtocolError):
        recv_frames(ours, decoder, drain=True)
    assert [f.job_id for f in decoder.take()] == [1]

"""Job handlers and the raw socketpair echo server used by ``bench/run.py``.

Everything here is a module-level function so that every pool can pickle it
by reference, including the spawn-based ones (loky).  ``run.py`` puts this
directory on ``sys.path`` (and ``PYTHONPATH``), so children import it as
``workloads``.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Any

# -- handlers ------------------------------------------------------------------


def multiply(job: dict[str, int]) -> dict[str, int]:
    """The tiny job: ``{"a": i, "b": 2}`` -> ``{"product": 2 * i}``."""
    return {"product": job["a"] * job["b"]}


def echo(data: Any) -> Any:
    """The payload job: give the bytes back."""
    return data


def spin(job: dict[str, int]) -> dict[str, int]:
    """A CPU job: ``job["n"]`` turns of a pure-Python loop (calibrated to 1 ms)."""
    x = 0
    for i in range(job["n"]):
        x ^= i
    return {"x": x}


def calibrate_spin(seconds: float = 0.001) -> int:
    """How many :func:`spin` turns take ``seconds`` of CPU in this process."""
    n = 20_000
    while True:
        t = time.process_time()
        spin({"n": n})
        took = time.process_time() - t
        if took >= 0.05:
            break
        n *= 2
    best = took
    for _ in range(4):  # the fastest of a few runs: least disturbed by others
        t = time.process_time()
        spin({"n": n})
        best = min(best, time.process_time() - t)
    return max(1, round(n * seconds / best))


def wait_or_multiply(job: dict[str, Any]) -> dict[str, Any]:
    """``{"wait": path}`` blocks until ``path`` exists (at most 5 minutes);
    anything else is a tiny job.  Used to hold the only worker busy while
    the Boss's queue fills up."""
    path = job.get("wait")
    if path is None:
        return multiply(job)
    end = time.monotonic() + 300
    while not os.path.exists(path) and time.monotonic() < end:
        time.sleep(0.01)
    return {"waited": True}


def run_share(fn: Any, jobs: list[Any]) -> None:
    """Run ``jobs`` one after another: one process's share of a static split."""
    for job in jobs:
        fn(job)


# -- mpire unpacks dicts into keyword arguments and tuples into positional
# ones, so the benchmark hands it one-element tuples: func(job).

# -- the raw socketpair floor -------------------------------------------------
#
# Frames are an 8-byte little-endian length and the body.  The echo server
# reads what is there, sends back every complete frame in one call (the
# bytes untouched, straight from its buffer) and keeps the rest.  No
# pickling, no per-frame Python objects beyond a header unpack: the fastest a
# Python process can move frames to a child and back.

FRAME_HEADER = struct.Struct("<Q")


def echo_server(sock: socket.socket, other_end: socket.socket | None = None) -> None:
    """Echo length-prefixed frames until the other side closes.

    ``other_end`` is main's end, inherited by fork: closed first, or main's
    close would never reach us as end-of-file."""
    if other_end is not None:
        other_end.close()
    buf = bytearray(1 << 16)
    view = memoryview(buf)
    start = end = 0
    unpack = FRAME_HEADER.unpack_from
    try:
        while True:
            n = sock.recv_into(view[end:])
            if not n:
                return
            end += n
            pos = start
            need = 0
            while True:
                if end - pos < 8:
                    need = 8
                    break
                size = 8 + unpack(buf, pos)[0]
                if end - pos < size:
                    need = size
                    break
                pos += size
            if pos > start:
                sock.sendall(view[start:pos])
                start = pos
            if start == end:
                start = end = 0
            if len(buf) - start < need or end == len(buf):
                # Make room for the whole incomplete frame at the front.
                new = bytearray(max(need, 1 << 16, end - start))
                new[: end - start] = view[start:end]
                view.release()
                buf = new
                view = memoryview(buf)
                end -= start
                start = 0
    finally:
        sock.close()


def start_echo_server() -> tuple[socket.socket, Any]:
    """Fork a child running :func:`echo_server`; return main's socket and it."""
    import multiprocessing

    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else methods[0])
    mine, theirs = socket.socketpair()
    process = ctx.Process(target=echo_server, args=(theirs, mine), daemon=True)
    process.start()
    theirs.close()
    return mine, process

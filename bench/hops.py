"""One round trip, hop by hop: bossworker against a raw two-hop relay.

    python bench/hops.py                 # 5 rounds of 2,000 round trips each
    python bench/hops.py --rounds 3 --jobs 1000

A round trip of one tiny job (``add_work(job)`` + ``get_result()``, 2
workers) crosses main -> Boss -> worker -> Boss -> main.  The raw relay does
the same hops with nothing else: main sends a length-prefixed frame (the
size of the pickled job) to a relay process, a plain Python ``select`` loop
that forwards it to an echo process, which sends it straight back through
the relay; no pickling, no bookkeeping.  Its round trip is the floor a
Python design with this topology can reach on this machine.

Each round measures both, alternating, first without instrumentation (the
headline: median round trip, and bossworker's ratio to the relay's), then
with every process stamping its events into shared memory (see
``stamps.py``) to split the round trip into spans:

    main's send | to the Boss | Boss: read -> route -> write | to the worker |
    worker: read -> decode | call | result -> write | to the Boss |
    Boss: relay back | to main | main: read -> decode

A "to X" span is the socket crossing plus X waking up and reading (a system
call, a context switch, on a busy machine a wait for a CPU).  Spans are the
median over the round trips of each round; the table gives, per span, the
minimum over rounds (least disturbed by other load) and the median.
"""

from __future__ import annotations

import argparse
import os
import pickle
import select
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import stamps as st  # noqa: E402
import workloads as wl  # noqa: E402

WORKERS = 2
JOB = {"a": 3, "b": 2}
LEN = struct.Struct("<Q")

# (label, from tag, to tag); None: the raw relay has no such event.
SPANS: list[tuple[str, str, str]] = [
    ("main: pickle, frame", "t0", "main>boss JOB"),
    ("main: write; to the Boss (wake-up, read)", "main>boss JOB", "boss<main JOB"),
    ("Boss: route", "boss<main JOB", "boss>worker JOB"),
    ("Boss: write; to the worker (wake-up, read)", "boss>worker JOB", "worker<boss JOB"),
    ("worker: decode the job", "worker<boss JOB", "call start"),
    ("worker: the call", "call start", "call end"),
    ("worker: pickle the result, frame", "call end", "worker>boss RESULT"),
    ("write; to the Boss (wake-up, read)", "worker>boss RESULT", "boss<worker RESULT"),
    ("Boss: relay back", "boss<worker RESULT", "boss>main RESULT"),
    ("Boss: write; to main (wake-up, read)", "boss>main RESULT", "main<boss RESULT"),
    ("main: decode, hand out", "main<boss RESULT", "t2"),
]
RAW_WORKER = ("worker: read -> write", "worker<boss JOB", "worker>boss RESULT")


# -- the raw relay ---------------------------------------------------------------


def _read_frames(sock: socket.socket, buf: bytearray) -> list[bytes] | None:
    """Read once; return the complete frames now in ``buf`` (None at EOF)."""
    data = sock.recv(1 << 16)
    if not data:
        return None
    buf += data
    frames = []
    while len(buf) >= 8:
        size = 8 + LEN.unpack_from(buf)[0]
        if len(buf) < size:
            break
        frames.append(bytes(buf[:size]))
        del buf[:size]
    return frames


def relay(up: socket.socket, down: socket.socket) -> None:
    """Forward frames between main (``up``) and the echo (``down``)."""
    peers = {up: down, down: up}
    bufs = {up: bytearray(), down: bytearray()}
    stamp = st.stamp
    while True:
        readable, _, _ = select.select([up, down], [], [])
        for sock in readable:
            frames = _read_frames(sock, bufs[sock])
            if frames is None:
                return
            from_main = sock is up
            for frame in frames:
                stamp("boss<main JOB" if from_main else "boss<worker RESULT")
                stamp("boss>worker JOB" if from_main else "boss>main RESULT")
                peers[sock].sendall(frame)


def echo(sock: socket.socket) -> None:
    """Send every frame straight back."""
    buf = bytearray()
    stamp = st.stamp
    while True:
        frames = _read_frames(sock, buf)
        if frames is None:
            return
        for frame in frames:
            stamp("worker<boss JOB")
            stamp("worker>boss RESULT")
            sock.sendall(frame)


def cpu_ns(pid: int) -> int:
    """CPU time ``pid`` has used so far, in ns (``/proc/<pid>/schedstat``)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


class RawRelay:
    """main -> relay -> echo -> relay -> main, over socketpairs, forked."""

    def __init__(self) -> None:
        body = pickle.dumps(JOB, protocol=pickle.HIGHEST_PROTOCOL)
        self.frame = LEN.pack(len(body)) + body
        self.sock, relay_main = socket.socketpair()
        relay_echo, echo_sock = socket.socketpair()
        self.pids = []
        pid = os.fork()
        if pid == 0:  # the echo
            self.sock.close()
            relay_main.close()
            relay_echo.close()
            _child(lambda: echo(echo_sock))
        self.pids.append(pid)
        pid = os.fork()
        if pid == 0:  # the relay
            self.sock.close()
            echo_sock.close()
            _child(lambda: relay(relay_main, relay_echo))
        self.pids.append(pid)
        relay_main.close()
        relay_echo.close()
        echo_sock.close()
        self.buf = bytearray()
        # The processes by their place: main, the one in the middle, the far end.
        self.roles = {"middle": [self.pids[1]], "end": [self.pids[0]]}

    def one(self) -> None:
        st.stamp("t0")
        st.stamp("main>boss JOB")
        self.sock.sendall(self.frame)
        frames: list[bytes] | None = []
        while not frames:
            frames = _read_frames(self.sock, self.buf)
            if frames is None:
                raise EOFError("the relay closed")
        st.stamp("main<boss RESULT")
        st.stamp("t2")

    def close(self) -> None:
        self.sock.close()
        for pid in self.pids:
            os.waitpid(pid, 0)


def _child(body: Callable[[], None]) -> None:
    code = 0
    try:
        body()
    except BaseException:  # noqa: BLE001
        code = 1
    os._exit(code)


class Ours:
    """A bossworker pool of ``WORKERS`` running one job at a time."""

    def __init__(self, handler: Callable[[Any], Any]) -> None:
        from bossworker import BossWorkerAsync

        self.bw = BossWorkerAsync(handler, worker_count=WORKERS)
        boss = self.bw.boss_pid
        self.roles = {"middle": [boss], "end": children(boss)}

    def one(self) -> None:
        st.stamp("t0")
        self.bw.add_work(JOB)
        self.bw.get_result()
        st.stamp("t2")

    def close(self) -> None:
        self.bw.shut_down()


# -- measuring -------------------------------------------------------------------


def timed(system: Any, jobs: int) -> tuple[float, dict[str, float]]:
    """The median round trip in µs, after a warm-up; and the CPU time each
    place (main, middle, end) used per round trip, in µs: unlike the wall
    time, that does not grow when other processes take the CPUs."""
    for _ in range(50):
        system.one()
    roles = {"main": [os.getpid()], **system.roles}
    before = {role: sum(cpu_ns(p) for p in pids) for role, pids in roles.items()}
    times = []
    clock = time.perf_counter
    for _ in range(jobs):
        t = clock()
        system.one()
        times.append(clock() - t)
    cpu = {role: (sum(cpu_ns(p) for p in pids) - before[role]) / jobs / 1e3 for role, pids in roles.items()}
    return statistics.median(times) * 1e6, cpu


def split(system: Any, jobs: int, stamps: st.Stamps, spans: list[tuple[str, str, str]]) -> dict[str, float]:
    """Per span, the median over ``jobs`` round trips, in µs."""
    for _ in range(50):
        system.one()
    stamps.reset()
    for _ in range(jobs):
        system.one()
    out: dict[str, float] = {}
    for label, a, b in spans:
        ta, tb = stamps.times(a), stamps.times(b)
        if len(ta) != jobs or len(tb) != jobs:
            raise RuntimeError(f"{label}: {len(ta)} x {a!r} and {len(tb)} x {b!r} for {jobs} round trips")
        out[label] = statistics.median(y - x for x, y in zip(ta, tb, strict=True)) / 1e3
    t0, t2 = stamps.times("t0"), stamps.times("t2")
    out["total"] = statistics.median(y - x for x, y in zip(t0, t2, strict=True)) / 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each measuring both (default 5)")
    parser.add_argument("--jobs", type=int, default=2000, help="round trips per measurement (default 2000)")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    stamps = st.instrument(args.jobs)
    raw_spans = [*SPANS[:4], RAW_WORKER, *SPANS[7:]]
    plain: dict[str, list[float]] = {"ours": [], "raw": []}
    cpu: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    parts: dict[str, list[dict[str, float]]] = {"ours": [], "raw": []}
    for r in range(args.rounds):
        order = ("ours", "raw") if r % 2 == 0 else ("raw", "ours")
        for name in order:
            # Uninstrumented first: the instrumented wrappers stay installed
            # but write nothing while STAMPS is None.
            st.STAMPS = None
            system: Any = Ours(wl.multiply) if name == "ours" else RawRelay()
            try:
                wall, used = timed(system, args.jobs)
                plain[name].append(wall)
                cpu[name].append(used)
            finally:
                system.close()
            st.STAMPS = stamps
            system = Ours(st.traced_multiply) if name == "ours" else RawRelay()
            try:
                parts[name].append(split(system, args.jobs, stamps, SPANS if name == "ours" else raw_spans))
            finally:
                system.close()
        print(
            f"round {r + 1}/{args.rounds}: ours {plain['ours'][-1]:.0f} µs, "
            f"raw relay {plain['raw'][-1]:.0f} µs",
            file=sys.stderr,
            flush=True,
        )
    end_load = os.getloadavg()
    ratios = [o / r for o, r in zip(plain["ours"], plain["raw"], strict=True)]
    print(
        f"Load average at the start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; "
        f"at the end {end_load[0]:.2f}, {end_load[1]:.2f}, {end_load[2]:.2f}. "
        f"{args.rounds} rounds × {args.jobs} round trips, {WORKERS} workers."
    )
    print()
    print("| uninstrumented round trip | min | median |")
    print("|---|---|---|")
    for name, label in (("ours", "bossworker"), ("raw", "raw two-hop relay")):
        print(f"| {label} | {min(plain[name]):.0f} µs | {statistics.median(plain[name]):.0f} µs |")
    print(f"| ratio (same round) | {min(ratios):.2f}× | {statistics.median(ratios):.2f}× |")
    print()
    print("| CPU time per round trip (uninstrumented; µs, min / median) | bossworker | raw relay |")
    print("|---|---|---|")
    for role, label in (
        ("main", "main"),
        ("middle", "the Boss / the relay"),
        ("end", "the workers / the echo"),
    ):
        row = []
        for name in ("ours", "raw"):
            values = [c[role] for c in cpu[name]]
            row.append(f"{min(values):.1f} / {statistics.median(values):.1f}")
        print(f"| {label} | {row[0]} | {row[1]} |")
    print()
    print("| span (instrumented; µs, min / median over rounds) | bossworker | raw relay | difference (min) |")
    print("|---|---|---|---|")

    def cell(name: str, label: str) -> tuple[str, float | None]:
        values = [p[label] for p in parts[name] if label in p]
        if not values:
            return "", None
        return f"{min(values):.1f} / {statistics.median(values):.1f}", min(values)

    raw_worker_done = False
    for label, _, _ in [*SPANS, ("total", "", "")]:
        ours, ours_min = cell("ours", label)
        if label.startswith("worker:"):
            if raw_worker_done:
                print(f"| {label} | {ours} | ″ | |")
                continue
            raw_worker_done = True
            raw, raw_min = cell("raw", RAW_WORKER[0])
            worker_min = sum(min(p[s[0]] for p in parts["ours"]) for s in SPANS[4:7])
            print(
                f"| {label} | {ours} | {raw} (read -> write) | "
                f"{worker_min - (raw_min or 0):+.1f} (whole worker) |"
            )
            continue
        raw, raw_min = cell("raw", label)
        diff = f"{ours_min - raw_min:+.1f}" if ours_min is not None and raw_min is not None else ""
        print(f"| {label} | {ours} | {raw} | {diff} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

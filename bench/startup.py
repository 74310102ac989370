"""Start-up and shut-down, step by step, against ProcessPoolExecutor.

    python bench/startup.py               # 20 rounds
    python bench/startup.py --rounds 10

Each round measures, in one process, one after another (the order rotates):

* ``BossWorkerAsync(f, worker_count=2)`` + one job + ``shut_down()``;
* ``with bossworker.Executor(2) as ex: ex.submit(f, x).result()``;
* ``with ProcessPoolExecutor(2) as ex: ex.submit(f, x).result()``;

then the first again with every process stamping its events (see
``stamps.py``), which splits it: the Boss's fork, its start, each worker's
fork and start, READY on its way to main, the first job, the graceful stop
(SHUTDOWN to the Boss and to each worker, their exits, the reaping, BYE)
and main's return.  Times are medians over the rounds; the ratios to
ProcessPoolExecutor are taken within each round.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import stamps as st  # noqa: E402
import workloads as wl  # noqa: E402

WORKERS = 2
JOB = {"a": 3, "b": 2}

# (what happened, tag, which occurrence: 0 first, -1 last)
EVENTS: list[tuple[str, str, int]] = [
    ("main: Boss process started (fork returned)", "backend", 0),
    ("Boss: body begins", "boss run", 0),
    ("Boss: first worker forked", "boss fork worker", 0),
    ("Boss: last worker forked", "boss fork worker", -1),
    ("worker: first body begins", "worker run", 0),
    ("worker: first READY sent", "worker>boss READY", 0),
    ("Boss: first READY read", "boss<worker READY", 0),
    ("Boss: READY sent to main", "boss>main READY", 0),
    ("main: READY read", "main<boss READY", 0),
    ("main: constructor returned", "ctor", 0),
    ("Boss: last READY read", "boss<worker READY", -1),
    ("main: JOB sent", "main>boss JOB", 0),
    ("worker: RESULT sent", "worker>boss RESULT", 0),
    ("main: first result back", "job", 0),
    ("main: SHUTDOWN sent", "main>boss SHUTDOWN", 0),
    ("Boss: SHUTDOWN read", "boss<main SHUTDOWN", 0),
    ("Boss: SHUTDOWN sent to the first worker", "boss>worker SHUTDOWN", 0),
    ("worker: first exits", "worker exit", 0),
    ("worker: last exits", "worker exit", -1),
    ("Boss: last worker reaped", "boss reaped", -1),
    ("Boss: BYE sent", "boss>main BYE", 0),
    ("main: BYE read", "main<boss BYE", 0),
    ("Boss: exits", "boss exit", 0),
    ("main: shut_down() returned", "stop", 0),
]


def ours() -> None:
    from bossworker import BossWorkerAsync

    bw = BossWorkerAsync(wl.multiply, worker_count=WORKERS)
    bw.add_work(JOB)
    assert bw.get_result() == {"product": 6}
    bw.shut_down()


def ours_executor() -> None:
    from bossworker import Executor

    with Executor(WORKERS) as ex:
        assert ex.submit(wl.multiply, JOB).result() == {"product": 6}


def ppe() -> None:
    with ProcessPoolExecutor(WORKERS) as ex:
        assert ex.submit(wl.multiply, JOB).result() == {"product": 6}


def traced(stamps: st.Stamps) -> dict[str, float]:
    """One instrumented ``ours()``: each event's time since the start, in ms."""
    from bossworker import BossWorkerAsync

    stamps.reset()
    st.stamp("t0")
    bw = BossWorkerAsync(st.traced_multiply, worker_count=WORKERS)
    st.stamp("ctor")
    bw.add_work(JOB)
    bw.get_result()
    st.stamp("job")
    bw.shut_down()
    st.stamp("stop")
    t0 = stamps.times("t0")[0]
    out = {}
    for label, tag, which in EVENTS:
        times = sorted(stamps.times(tag))
        if times:
            out[label] = (times[which] - t0) / 1e6
    return out


SYSTEMS: dict[str, Callable[[], None]] = {
    "BossWorkerAsync + 1 job + shut_down()": ours,
    "with bossworker.Executor(): submit().result()": ours_executor,
    "with ProcessPoolExecutor(): submit().result()": ppe,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (default 20)")
    args = parser.parse_args(argv)
    load = os.getloadavg()
    stamps = st.instrument(256)
    st.STAMPS = None
    for fn in SYSTEMS.values():  # warm-up: imports, first forks
        fn()
    took: dict[str, list[float]] = {name: [] for name in SYSTEMS}
    steps: list[dict[str, float]] = []
    names = list(SYSTEMS)
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            gc.collect()
            t = time.perf_counter()
            SYSTEMS[name]()
            took[name].append((time.perf_counter() - t) * 1e3)
        st.STAMPS = stamps
        gc.collect()
        steps.append(traced(stamps))
        st.STAMPS = None
    end = os.getloadavg()
    ppe_name = names[-1]
    print(
        f"Load average at the start {load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}; at the end "
        f"{end[0]:.2f}, {end[1]:.2f}, {end[2]:.2f}. {args.rounds} rounds, {WORKERS} workers, fork."
    )
    print()
    print("| start + 1 job + stop | min | median | ÷ ProcessPoolExecutor (same round): min / median |")
    print("|---|---|---|---|")
    for name in names:
        ratios = [a / b for a, b in zip(took[name], took[ppe_name], strict=True)]
        print(
            f"| {name} | {min(took[name]):.1f} ms | {statistics.median(took[name]):.1f} ms | "
            f"{min(ratios):.2f}× / {statistics.median(ratios):.2f}× |"
        )
    print()
    print("| BossWorkerAsync + 1 job + shut_down(), instrumented | since start (median) | step (median) |")
    print("|---|---|---|")
    rows = []
    for label, _, _ in EVENTS:
        values = [s[label] for s in steps if label in s]
        if values:
            rows.append((statistics.median(values), label))
    previous = 0.0
    for at, label in sorted(rows):  # in the order they happened (by median)
        print(f"| {label} | {at:.2f} ms | {at - previous:+.2f} ms |")
        previous = at
    return 0


if __name__ == "__main__":
    sys.exit(main())

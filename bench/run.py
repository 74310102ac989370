"""The benchmark suite: bossworker against the Python pools, side by side.

    python bench/run.py            # full run, writes docs/benchmarks.md and the charts
    python bench/run.py --quick    # small sizes (CI), writes to bench/results/
    python bench/run.py --only tiny,rtt --systems bossworker,pool
                                   # a partial run: also to bench/results/

Every workload runs every system in the same process, one repetition after
another, and the order of the systems rotates between repetitions so that
machine drift (thermal, other load) hits all alike.  Each measurement gets a
fresh pool that is warmed up first and shut down after, so no system
inherits another's processes or state.  Reported figures are medians over
the repetitions; ratios are bossworker's figure divided by the other
system's.

A peer that cannot be imported is reported as skipped; a peer that fails or
hangs (each measurement has a time limit) is reported as failed; neither
stops the run.  There are no thresholds here: the targets of issue #4 are
shown as met or not, never enforced.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import multiprocessing
import os
import pickle
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
# Spawned children (loky) must find ``workloads`` too.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)

import workloads as wl  # noqa: E402

WORKERS = 2
VERBOSE = False
MIB = 1024 * 1024


# -- sizes ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    tiny_jobs: int
    tiny_reps: int
    rtt_jobs: int
    rtt_reps: int
    cpu_jobs: int
    cpu_reps: int
    payloads: tuple[tuple[int, int], ...]  # (size in bytes, jobs per repetition)
    payload_reps: int
    start_reps: int
    mem_jobs: int
    mem_reps: int
    limit: float  # seconds one measurement may take before it is abandoned


FULL = Sizes(
    tiny_jobs=20_000,
    tiny_reps=5,
    rtt_jobs=2_000,
    rtt_reps=5,
    cpu_jobs=2_000,
    cpu_reps=5,
    payloads=((1 * MIB, 64), (16 * MIB, 16)),
    payload_reps=5,
    start_reps=10,
    mem_jobs=200_000,
    mem_reps=3,
    limit=120.0,
)

QUICK = Sizes(
    tiny_jobs=2_000,
    tiny_reps=2,
    rtt_jobs=200,
    rtt_reps=2,
    cpu_jobs=100,
    cpu_reps=2,
    payloads=((1 * MIB, 8), (16 * MIB, 2)),
    payload_reps=2,
    start_reps=3,
    mem_jobs=20_000,
    mem_reps=1,
    limit=30.0,
)


# -- the systems -----------------------------------------------------------------


class System:
    """One way of running jobs. A fresh ``start`` for every measurement."""

    key = ""
    label = ""
    module: str | None = None  # must be importable, else the system is skipped
    per_job = True  # a per-job peer (counts for the targets), not batch-only or a floor

    def available(self) -> str | None:
        """None if usable, else why not."""
        if self.module is None:
            return None
        try:
            importlib.import_module(self.module)
        except Exception as exc:  # noqa: BLE001
            return f"cannot import {self.module}: {exc.__class__.__name__}: {exc}"
        return None

    def prepare(self, jobs: Sequence[Any]) -> Sequence[Any]:
        """Reshape jobs for this system (outside the timed section)."""
        return jobs

    def start(self, fn: Callable[[Any], Any]) -> None:
        raise NotImplementedError

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        """Submit every job, then collect every result (completion order)."""
        raise NotImplementedError

    def one(self, job: Any) -> Any:
        """One job's round trip."""
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def kill(self) -> None:
        """Best-effort teardown after a failure."""
        with contextlib.suppress(Exception):
            self.stop()

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        """Start a pool, run one job, stop the pool."""
        raise NotImplementedError


class BossWorker(System):
    key = "bossworker"
    label = "bossworker"
    module = "bossworker"

    def start(self, fn: Callable[[Any], Any]) -> None:
        from bossworker import BossWorkerAsync

        self.bw = BossWorkerAsync(fn, worker_count=WORKERS)

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        bw = self.bw
        bw.add_work(*jobs)
        get = bw.get_result
        return [get() for _ in range(len(jobs))]

    def one(self, job: Any) -> Any:
        self.bw.add_work(job)
        return self.bw.get_result()

    def stop(self) -> None:
        self.bw.shut_down()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.bw.shut_down(force=True)

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        from bossworker import BossWorkerAsync

        bw = BossWorkerAsync(fn, worker_count=WORKERS)
        try:
            bw.add_work(job)
            return bw.get_result()
        finally:
            bw.shut_down()


class MpPool(System):
    module = "multiprocessing.pool"

    def __init__(self, big_chunks: bool = False) -> None:
        self.big = big_chunks
        if big_chunks:
            self.key = "mp_pool_chunks"
            self.label = "mp.Pool, big chunks (batch-only)"
            self.per_job = False
        else:
            self.key = "mp_pool"
            self.label = "mp.Pool (chunksize=1)"

    def start(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.pool = multiprocessing.Pool(WORKERS)

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        chunk = max(1, len(jobs) // (4 * WORKERS)) if self.big else 1
        return list(self.pool.imap_unordered(self.fn, jobs, chunksize=chunk))

    def one(self, job: Any) -> Any:
        return self.pool.apply(self.fn, (job,))

    def stop(self) -> None:
        self.pool.close()
        self.pool.join()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.terminate()
            self.pool.join()

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        pool = multiprocessing.Pool(WORKERS)
        try:
            return pool.apply(fn, (job,))
        finally:
            pool.close()
            pool.join()


class _FutureSystem(System):
    """Executors with ``submit`` returning concurrent.futures futures."""

    def submit(self, job: Any) -> Any:
        return self.ex.submit(self.fn, job)

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        submit = self.submit
        futures = [submit(job) for job in jobs]
        return [f.result() for f in as_completed(futures)]

    def one(self, job: Any) -> Any:
        return self.submit(job).result()


class Executor(_FutureSystem):
    key = "executor"
    label = "ProcessPoolExecutor"
    module = "concurrent.futures"

    def start(self, fn: Callable[[Any], Any]) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.fn = fn
        self.ex = ProcessPoolExecutor(WORKERS)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            for p in list(getattr(self.ex, "_processes", {}).values()):
                p.kill()
            self.ex.shutdown(wait=False, cancel_futures=True)

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(WORKERS) as ex:
            return ex.submit(fn, job).result()


class ExecutorMap(Executor):
    key = "executor_map"
    label = "ProcessPoolExecutor.map (input order)"
    per_job = False  # a reference for bossworker.Executor.map, not a target peer

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        return list(self.ex.map(self.fn, jobs))


class BwExecutor(_FutureSystem):
    """bossworker.Executor, the concurrent.futures front end (issue 11)."""

    key = "bw_executor"
    label = "bossworker.Executor (submit + as_completed)"
    module = "bossworker"
    per_job = False  # bossworker itself: not a peer for the targets

    def start(self, fn: Callable[[Any], Any]) -> None:
        from bossworker import Executor as BwExec

        self.fn = fn
        self.ex = BwExec(WORKERS)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.ex.shutdown(kill=True)

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        from bossworker import Executor as BwExec

        with BwExec(WORKERS) as ex:
            return ex.submit(fn, job).result()


class BwExecutorMap(BwExecutor):
    key = "bw_executor_map"
    label = "bossworker.Executor.map (input order)"

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        return list(self.ex.map(self.fn, jobs))


class Loky(_FutureSystem):
    key = "loky"
    label = "loky"
    module = "loky"

    def start(self, fn: Callable[[Any], Any]) -> None:
        import loky

        self.fn = fn
        self.ex = loky.get_reusable_executor(max_workers=WORKERS)

    def stop(self) -> None:
        self.ex.shutdown(wait=True)

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.ex.shutdown(wait=False, kill_workers=True)

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        import loky

        ex = loky.get_reusable_executor(max_workers=WORKERS)
        try:
            return ex.submit(fn, job).result()
        finally:
            ex.shutdown(wait=True)


class Pebble(_FutureSystem):
    key = "pebble"
    label = "pebble"
    module = "pebble"

    def start(self, fn: Callable[[Any], Any]) -> None:
        import pebble

        self.fn = fn
        self.ex = pebble.ProcessPool(max_workers=WORKERS)

    def submit(self, job: Any) -> Any:
        return self.ex.schedule(self.fn, args=(job,))

    def stop(self) -> None:
        self.ex.close()
        self.ex.join()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.ex.stop()
            self.ex.join(timeout=5)

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        import pebble

        pool = pebble.ProcessPool(max_workers=WORKERS)
        try:
            return pool.schedule(fn, args=(job,)).result()
        finally:
            pool.close()
            pool.join()


class Mpire(System):
    key = "mpire"
    label = "mpire"
    module = "mpire"

    def prepare(self, jobs: Sequence[Any]) -> Sequence[Any]:
        # mpire unpacks a dict job into keyword arguments: wrap each job in a
        # one-element tuple so the handler gets it as its one argument.
        return [(job,) for job in jobs]

    def start(self, fn: Callable[[Any], Any]) -> None:
        from mpire import WorkerPool

        self.fn = fn
        self.pool = WorkerPool(n_jobs=WORKERS, keep_alive=True)

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        return list(self.pool.imap_unordered(self.fn, jobs, iterable_len=len(jobs), chunk_size=1))

    def one(self, job: Any) -> Any:
        return self.pool.apply(self.fn, args=(job,))

    def stop(self) -> None:
        self.pool.stop_and_join()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.pool.terminate()

    def cold(self, fn: Callable[[Any], Any], job: Any) -> Any:
        from mpire import WorkerPool

        # Without keep_alive, map() starts the workers and joins them after.
        return WorkerPool(n_jobs=WORKERS).map(fn, [(job,)], chunk_size=1)[0]


class Serial(System):
    key = "serial"
    label = "serial loop"
    per_job = False

    def start(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        fn = self.fn
        return [fn(job) for job in jobs]

    def one(self, job: Any) -> Any:
        return self.fn(job)

    def stop(self) -> None:
        pass


class StaticSplit(System):
    """The CPU ceiling: ``WORKERS`` plain processes forked for the run, each
    given an equal share of the jobs up front; no pool, no messages, no
    results.  What the machine itself allows, coordination costs excluded."""

    key = "split"
    label = f"{WORKERS} plain processes, static split (ceiling)"
    per_job = False

    def start(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        methods = multiprocessing.get_all_start_methods()
        self.ctx = multiprocessing.get_context("fork" if "fork" in methods else methods[0])

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        jobs = list(jobs)
        shares = [jobs[i::WORKERS] for i in range(WORKERS)]
        procs = [self.ctx.Process(target=wl.run_share, args=(self.fn, share)) for share in shares]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
            if p.exitcode != 0:
                raise RuntimeError(f"a split process exited with {p.exitcode}")
        return [None] * len(jobs)

    def stop(self) -> None:
        pass


class RawFloor(System):
    """A forked child echoing length-prefixed frames over a socketpair: no
    pickling, no pool.  Tiny jobs are sent as a frame the size of the
    pickled job; payloads as the bytes themselves, one in flight."""

    per_job = False

    def __init__(self, depth: int) -> None:
        self.depth = depth
        self.key = f"raw_{depth}"
        self.label = f"raw socketpair, {depth} in flight (floor)"

    def start(self, fn: Callable[[Any], Any]) -> None:
        self.sock, self.process = wl.start_echo_server()
        body = pickle.dumps({"a": 1, "b": 2}, protocol=pickle.HIGHEST_PROTOCOL)
        self.frame = wl.FRAME_HEADER.pack(len(body)) + body
        self.inbox = memoryview(bytearray(0))

    def map(self, jobs: Sequence[Any]) -> list[Any]:
        if jobs and isinstance(jobs[0], (bytes, bytearray)):
            # Views of one reused buffer (every job is the same payload).
            return [self._echo(job) for job in jobs]
        return self._frames(len(jobs))

    def _frames(self, n: int) -> list[Any]:
        sock, frame = self.sock, self.frame
        size = len(frame)
        buf = bytearray(max(1 << 16, size * self.depth * 2))
        view = memoryview(buf)
        sent = min(n, self.depth)
        sock.sendall(frame * sent)
        got = 0
        total = n * size
        while got < total:
            before = got // size
            got += sock.recv_into(view)  # counting bytes is enough: every frame is alike
            more = min(n - sent, got // size - before)
            if more > 0:
                sock.sendall(frame * more)
                sent += more
        return [None] * n

    def _echo(self, payload: bytes | bytearray) -> memoryview:
        sock = self.sock
        sock.sendall(wl.FRAME_HEADER.pack(len(payload)))
        sock.sendall(payload)
        total = 8 + len(payload)
        if len(self.inbox) < total:
            self.inbox = memoryview(bytearray(total))  # one buffer, reused
        view = self.inbox
        got = 0
        while got < total:
            n = sock.recv_into(view[got:total])
            if not n:
                raise EOFError("echo server closed")
            got += n
        return view[8:total]

    def one(self, job: Any) -> Any:
        if isinstance(job, (bytes, bytearray)):
            return self._echo(job)
        return self._frames(1)[0]

    def stop(self) -> None:
        self.sock.close()
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.sock.close()
        with contextlib.suppress(Exception):
            self.process.kill()
            self.process.join()


SYSTEMS: dict[str, System] = {
    s.key: s
    for s in (
        BossWorker(),
        MpPool(),
        MpPool(big_chunks=True),
        Executor(),
        ExecutorMap(),
        BwExecutor(),
        BwExecutorMap(),
        Loky(),
        Pebble(),
        Mpire(),
        Serial(),
        StaticSplit(),
        RawFloor(1),
        RawFloor(16),
    )
}
POOLS = ["bossworker", "mp_pool", "executor", "loky", "pebble", "mpire"]


# -- running measurements ------------------------------------------------------


class MeasurementTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise MeasurementTimeout(f"took longer than {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Result:
    """The repetitions of one system on one workload."""

    values: list[float] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None


Results = dict[str, dict[str, Result]]  # workload -> system key -> Result


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_workload(
    results: Results,
    name: str,
    keys: Sequence[str],
    reps: int,
    measure: Callable[[System], float],
    limit: float,
    only: set[str] | None,
) -> None:
    """``reps`` rounds; every round runs every system once, the order rotated."""
    table = results.setdefault(name, {})
    systems = []
    for key in keys:
        if only and key not in only:
            continue
        system = SYSTEMS[key]
        reason = system.available()
        table[key] = Result(skipped=reason)
        if reason is None:
            systems.append(system)
        else:
            log(f"  {name}: {key} skipped ({reason})")
    t0 = time.perf_counter()
    for rep in range(reps):
        k = rep % len(systems) if systems else 0
        for system in systems[k:] + systems[:k]:
            result = table[system.key]
            if result.error:
                continue  # failed once: do not keep paying its time limit
            gc.collect()
            t = time.perf_counter()
            try:
                with time_limit(limit):
                    value = measure(system)
            except Exception as exc:  # noqa: BLE001
                result.error = f"{exc.__class__.__name__}: {exc}"
                log(f"  {name}: {system.key} FAILED: {result.error}")
                log("".join(traceback.format_exception(exc)[-3:]).rstrip())
                system.kill()
                continue
            result.values.append(value)
            if VERBOSE:
                log(f"    {name} rep {rep + 1}: {system.key}: {value:.6g} ({time.perf_counter() - t:.2f} s)")
    log(f"  {name}: {reps} repetitions in {time.perf_counter() - t0:.1f} s")


@contextlib.contextmanager
def running(system: System, fn: Callable[[Any], Any]) -> Iterator[System]:
    system.start(fn)
    try:
        yield system
    except BaseException:
        system.kill()
        raise
    else:
        system.stop()


def check(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"wrong results: {what}")


def measure_tiny(n: int) -> Callable[[System], float]:
    jobs = [{"a": i, "b": 2} for i in range(n)]
    warm = [{"a": i, "b": 2} for i in range(min(200, n))]
    expected = 2 * sum(range(n))

    def measure(system: System) -> float:
        todo, warm_jobs = system.prepare(jobs), system.prepare(warm)
        with running(system, wl.multiply):
            system.map(warm_jobs)
            t = time.perf_counter()
            out = system.map(todo)
            took = time.perf_counter() - t
        check(len(out) == n, f"{len(out)} results for {n} jobs")
        if not isinstance(system, RawFloor):
            check(sum(r["product"] for r in out) == expected, "products")
        return n / took

    return measure


def measure_rtt(n: int) -> Callable[[System], float]:
    job = {"a": 3, "b": 2}

    def measure(system: System) -> float:
        times = []
        with running(system, wl.multiply):
            for _ in range(50):
                system.one(job)
            clock = time.perf_counter
            one = system.one
            for _ in range(n):
                t = clock()
                one(job)
                times.append(clock() - t)
            check(isinstance(system, RawFloor) or one(job) == {"product": 6}, "round trip")
        return statistics.median(times)

    return measure


def measure_cpu(n: int, turns: int) -> Callable[[System], float]:
    jobs = [{"n": turns} for _ in range(n)]
    warm = [{"n": turns} for _ in range(4 * WORKERS)]

    def measure(system: System) -> float:
        todo, warm_jobs = system.prepare(jobs), system.prepare(warm)
        with running(system, wl.spin):
            system.map(warm_jobs)
            t = time.perf_counter()
            out = system.map(todo)
            took = time.perf_counter() - t
        check(len(out) == n, f"{len(out)} results for {n} jobs")
        return took

    return measure


def measure_payload(size: int, n: int) -> Callable[[System], float]:
    payload = os.urandom(size)
    jobs = [payload] * n

    def measure(system: System) -> float:
        todo, warm_jobs = system.prepare(jobs), system.prepare(jobs[:1])
        with running(system, wl.echo):
            system.map(warm_jobs)
            t = time.perf_counter()
            out = system.map(todo)
            took = time.perf_counter() - t
        check(len(out) == n and all(len(r) == size for r in out), "echoed payload sizes")
        check(out[0] == payload, "echoed payload bytes")
        return size * n / took / 1e6

    return measure


def measure_start(system: System) -> float:
    job = {"a": 3, "b": 2}
    t = time.perf_counter()
    out = system.cold(wl.multiply, job)
    took = time.perf_counter() - t
    check(out == {"product": 6}, f"start + 1 job gave {out!r}")
    return took


def measure_memory(n: int, results: Results, reps: int, limit: float) -> None:
    """Boss RSS growth per queued tiny job, its only worker held busy."""
    table = results.setdefault("memory", {})
    boss_result = table["bossworker"] = Result()
    main_result = table["bossworker_main"] = Result()
    try:
        import psutil
    except Exception as exc:  # noqa: BLE001
        boss_result.skipped = main_result.skipped = f"cannot import psutil: {exc}"
        log(f"  memory: skipped ({boss_result.skipped})")
        return
    from bossworker import BossWorkerAsync

    jobs = [{"a": i, "b": 2} for i in range(n)]
    me = psutil.Process()
    t0 = time.perf_counter()
    for _ in range(reps):
        tmp = tempfile.mkdtemp(prefix="bossworker-bench-")
        gate = os.path.join(tmp, "go")
        bw = None
        try:
            with time_limit(limit):
                bw = BossWorkerAsync(wl.wait_or_multiply, worker_count=1)
                bw.add_work({"wait": gate})
                bw.stats()  # one round trip: the Boss has the blocking job
                time.sleep(0.2)  # and its worker has started it
                boss = psutil.Process(bw.boss_pid)
                gc.collect()
                boss_before = boss.memory_info().rss
                main_before = me.memory_info().rss
                for i in range(0, n, 10_000):
                    bw.add_work(*jobs[i : i + 10_000])
                stats = bw.stats()  # answered after the Boss read every job
                boss_after = boss.memory_info().rss
                main_after = me.memory_info().rss
                check(stats.queued >= n - 64, f"only {stats.queued} of {n} jobs queued")
            boss_result.values.append((boss_after - boss_before) / n)
            main_result.values.append((main_after - main_before) / n)
        except Exception as exc:  # noqa: BLE001
            boss_result.error = f"{exc.__class__.__name__}: {exc}"
            log(f"  memory: FAILED: {boss_result.error}")
            break
        finally:
            if bw is not None:
                with contextlib.suppress(Exception):
                    bw.shut_down(force=True)
            shutil.rmtree(tmp, ignore_errors=True)
    log(f"  memory: {reps} repetitions in {time.perf_counter() - t0:.1f} s")


# -- reporting -------------------------------------------------------------------


def fmt_rate(v: float) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k"
    return f"{v:.0f}"


def fmt_us(v: float) -> str:
    return f"{v * 1e6:.0f} µs"


def fmt_ms(v: float) -> str:
    return f"{v * 1e3:.1f} ms"


def fmt_mbs(v: float) -> str:
    return f"{v:,.0f}"


def fmt_pct(v: float) -> str:
    return f"{v * 100:.1f} %"


def fmt_bytes(v: float) -> str:
    return f"{v:.0f} B"


def fmt_ratio(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "—"
    return f"{v:.2f}×"


@dataclass(frozen=True)
class Column:
    workload: str
    title: str
    fmt: Callable[[float], str]
    higher_is_better: bool


def payload_key(size: int) -> str:
    return f"payload_{size // MIB}MiB"


def columns(sizes: Sizes) -> list[Column]:
    cols = [
        Column("tiny", "tiny jobs/s", fmt_rate, True),
        Column("rtt", "one-job round trip", fmt_us, False),
        Column("cpu", "1 ms jobs: wall", fmt_ms, False),
    ]
    for size, _ in sizes.payloads:
        cols.append(Column(payload_key(size), f"{size // MIB} MiB echo, MB/s", fmt_mbs, True))
    cols.append(Column("start", "start + 1 job + stop", fmt_ms, False))
    return cols


def cell(result: Result | None, fmt: Callable[[float], str]) -> str:
    if result is None:
        return ""
    if result.skipped:
        return "skipped"
    if result.error and not result.values:
        return "failed"
    if result.median is None:
        return ""
    return fmt(result.median)


def ratio(results: Results, workload: str, key: str) -> float | None:
    """bossworker's median divided by ``key``'s."""
    table = results.get(workload, {})
    bw, other = table.get("bossworker"), table.get(key)
    if bw is None or other is None or bw.median is None or other.median is None or other.median == 0:
        return None
    return bw.median / other.median


def efficiency(results: Results, key: str) -> float | None:
    table = results.get("cpu", {})
    serial, r = table.get("serial"), table.get(key)
    if serial is None or r is None or serial.median is None or r.median is None or key == "serial":
        return None
    return serial.median / WORKERS / r.median


def summary_table(results: Results, sizes: Sizes) -> str:
    cols = columns(sizes)
    head = ["system"]
    for c in cols:
        head.append(c.title)
        if c.workload == "cpu":
            head.append("1 ms jobs: efficiency")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, system in SYSTEMS.items():
        row = [system.label]
        present = False
        for c in cols:
            r = results.get(c.workload, {}).get(key)
            text = cell(r, c.fmt)
            if r is not None and r.median is not None:
                present = True
                if key != "bossworker":
                    text += f" ({fmt_ratio(ratio(results, c.workload, key))})"
            row.append(text)
            if c.workload == "cpu":
                eff = efficiency(results, key)
                row.append(fmt_pct(eff) if eff is not None else "")
        if present or any(key in results.get(c.workload, {}) for c in cols):
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


EXTRA_LABELS = {
    "bossworker": "bossworker: the Boss process",
    "bossworker_main": "bossworker: the main process (client bookkeeping)",
}


def detail_table(
    results: Results, workload: str, title: str, fmt: Callable[[float], str], ratios: bool = True
) -> str:
    table = results.get(workload, {})
    lines = [
        f"**{title}**",
        "",
        "| system | median | min | max | reps | bossworker ÷ this |",
        "|---|---|---|---|---|---|",
    ]
    for key, r in table.items():
        label = SYSTEMS[key].label if ratios else EXTRA_LABELS.get(key, key)
        if r.skipped:
            lines.append(f"| {label} | skipped: {r.skipped} | | | | |")
            continue
        if not r.values:
            lines.append(f"| {label} | failed: {r.error} | | | | |")
            continue
        note = f" (then failed: {r.error})" if r.error else ""
        lines.append(
            f"| {label} | {fmt(statistics.median(r.values))}{note} | {fmt(min(r.values))} | "
            f"{fmt(max(r.values))} | {len(r.values)} | "
            f"{fmt_ratio(ratio(results, workload, key) if ratios else None)} |"
        )
    return "\n".join(lines)


@dataclass
class Target:
    text: str
    measured: str
    met: bool | None


def best_peer(results: Results, workload: str, higher: bool) -> tuple[str, float] | None:
    table = results.get(workload, {})
    peers = [
        (k, r.median)
        for k, r in table.items()
        if k != "bossworker" and k in SYSTEMS and SYSTEMS[k].per_job and r.median is not None
    ]
    if not peers:
        return None
    return max(peers, key=lambda p: p[1]) if higher else min(peers, key=lambda p: p[1])


def targets(results: Results, sizes: Sizes) -> list[Target]:
    out: list[Target] = []

    def bw(workload: str) -> float | None:
        r = results.get(workload, {}).get("bossworker")
        return r.median if r else None

    def against_peer(
        text: str, workload: str, higher: bool, fmt: Callable[[float], str], ok: Callable[[float], bool]
    ) -> None:
        mine, best = bw(workload), best_peer(results, workload, higher)
        if mine is None or best is None:
            out.append(Target(text, "not measured", None))
            return
        r = mine / best[1]
        label = SYSTEMS[best[0]].label
        out.append(Target(text, f"{fmt_ratio(r)} ({fmt(mine)} vs {fmt(best[1])}, {label})", ok(r)))

    against_peer("tiny jobs ≥ 2× best per-job peer", "tiny", True, fmt_rate, lambda r: r >= 2.0)
    against_peer("round trip ≤ 0.5× best peer", "rtt", False, fmt_us, lambda r: r <= 0.5)
    big = max(size for size, _ in sizes.payloads)
    key = payload_key(big)
    mine, floor = bw(key), results.get(key, {}).get("raw_1")
    text = f"{big // MIB} MiB echo ≥ 50 % of raw socketpair MB/s"
    if mine is None or floor is None or floor.median is None:
        out.append(Target(text, "not measured", None))
    else:
        r = mine / floor.median
        out.append(Target(text, f"{fmt_pct(r)} ({fmt_mbs(mine)} vs {fmt_mbs(floor.median)} MB/s)", r >= 0.5))
    against_peer("start + 1 job + stop ≤ fastest peer", "start", False, fmt_ms, lambda r: r <= 1.0)
    eff = efficiency(results, "bossworker")
    out.append(
        Target(
            "1 ms CPU jobs ≥ 95 % parallel efficiency",
            fmt_pct(eff) if eff is not None else "not measured",
            None if eff is None else eff >= 0.95,
        )
    )
    mem = results.get("memory", {}).get("bossworker")
    out.append(
        Target(
            "Boss memory ≤ 200 B per queued tiny job",
            fmt_bytes(mem.median) if mem and mem.median is not None else "not measured",
            None if not mem or mem.median is None else mem.median <= 200,
        )
    )
    return out


def targets_table(results: Results, sizes: Sizes) -> str:
    lines = ["| target (issue #4) | measured | met? |", "|---|---|---|"]
    for t in targets(results, sizes):
        verdict = "—" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.text} | {t.measured} | {verdict} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        nproc = subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except Exception:  # noqa: BLE001
        nproc = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    versions = {}
    for dist in ("bossworker", "loky", "pebble", "mpire", "matplotlib", "psutil"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    commit = ""
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        if dirty:
            commit += " (with uncommitted changes in src/)"
    return {
        "nproc": nproc,
        "cpu": model or platform.processor() or platform.machine(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "versions": versions,
        "commit": commit,
        "start_method": multiprocessing.get_start_method(),
        "load": os.getloadavg() if hasattr(os, "getloadavg") else None,
    }


def fmt_load(load: Sequence[float] | None) -> str:
    return "unknown" if not load else ", ".join(f"{x:.2f}" for x in load)


def render_markdown(
    results: Results,
    sizes: Sizes,
    info: dict[str, Any],
    command: str,
    date: str,
    took: float,
    charts: list[str],
    quick: bool,
) -> str:
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items())
    spin_turns = info.get("spin_turns")
    payload_desc = ", ".join(f"{n} × {size // MIB} MiB" for size, n in sizes.payloads)
    parts = [
        "# Benchmarks",
        "",
        "<!-- Generated by bench/run.py; do not edit by hand. -->",
        "",
        f"Command: `{command}`{' (quick mode: small sizes, not for comparing)' if quick else ''}  ",
        f"Date: {date}; the run took {took:.0f} s.  ",
        f"Machine: {info['nproc']} CPUs (`nproc`), {info['cpu']}; {info['platform']}.  ",
        f"Python: {info['python']}; {versions}.  ",
        f"bossworker tree: {info['commit'] or 'unknown'}.  ",
        f"Load average (1, 5, 15 min) at the start: {fmt_load(info.get('load'))}; "
        f"at the end: {fmt_load(info.get('load_end'))}.  ",
        f"Every pool has {WORKERS} workers and its default start method (multiprocessing: "
        f"`{info['start_method']}`; loky: its own `loky` context).",
        "",
        "## Summary",
        "",
        "Medians over the repetitions. In parentheses: bossworker's figure divided by that system's "
        "(for rates above 1× means bossworker is faster; for times below 1× means bossworker is faster).",
        "",
        summary_table(results, sizes),
        "",
        targets_table(results, sizes),
        "",
    ]
    mem = results.get("memory", {})
    b, m = mem.get("bossworker"), mem.get("bossworker_main")
    if b is not None and b.median is not None:
        parts += [
            f"Boss memory per queued tiny job: {cell(b, fmt_bytes)} "
            f"(main process: {cell(m, fmt_bytes)} per job), "
            f"over {sizes.mem_jobs:,} queued jobs, {len(b.values)} repetition(s).",
            "",
        ]
    for chart in charts:
        parts += [f"![{Path(chart).stem}]({Path(chart).name})", ""]
    parts += [
        "## Reading the numbers",
        "",
        "- The ratios are what the issue's targets are stated in; absolute figures move with the "
        "machine's load (the load averages above; the run itself keeps about 2 busy). Compare "
        "rows of one run, not figures across runs.",
        f"- The {WORKERS}-plain-processes row of the 1 ms jobs is the machine's own ceiling for "
        "parallel efficiency: no pool can beat it, and on a VM it is usually below 100 %.",
        "- Round trips depend on how fast an idle CPU wakes up: on an idle machine every hop "
        "pays a cross-CPU wake-up, on a busy one the partner process is often already running "
        "on the same CPU. The raw floor shows the size of that effect in each run.",
        "- Each system's figure is a median over repetitions; the details below give the spread (min, max).",
        "",
        "## Workloads",
        "",
        f'- **tiny jobs**: {sizes.tiny_jobs:,} jobs `{{"a": i, "b": 2}}` → `{{"product": a*b}}`, '
        "all submitted at once, then every result collected; jobs/s. bossworker: `add_work(*jobs)` "
        "then a `get_result()` loop. Pool: `imap_unordered(chunksize=1)`; the big-chunks row "
        "(chunksize = jobs / 8) is a batch-only reference. Executors: `submit` + `as_completed`. "
        "pebble: `ProcessPool.schedule`. mpire: `WorkerPool(keep_alive=True).imap_unordered(chunk_size=1)` "
        "(jobs wrapped in 1-tuples, else mpire unpacks dicts into keyword arguments). Raw floor: frames "
        "the size of the pickled job, echoed by one child, 1 or 16 in flight.",
        f"- **one-job round trip**: median latency of {sizes.rtt_jobs:,} sequential single jobs after 50 "
        "warm-up jobs (bossworker: `add_work(job)` + `get_result()`; Pool: `apply`; executors: "
        "`submit().result()`; mpire: `apply`).",
        f"- **1 ms jobs**: {sizes.cpu_jobs:,} jobs of a pure-Python loop calibrated to 1 ms of CPU"
        + (f" ({spin_turns:,} turns)" if spin_turns else "")
        + f"; efficiency = serial wall / workers / wall. Ceiling: {WORKERS} processes forked for "
        "the run, each given its share of the jobs up front.",
        f"- **payload echo**: {payload_desc} random `bytes`, all submitted at once, echoed back; MB/s = "
        "payload bytes (one way, 10^6 B per MB) / wall. Raw floor: one frame at a time through one child.",
        f"- **start + 1 job + stop**: in-process, a new pool, one tiny job, a graceful stop; "
        f"{sizes.start_reps} repetitions.",
        f"- **Boss memory**: one worker blocked on its first job, {sizes.mem_jobs:,} tiny jobs queued; "
        "Boss RSS growth (psutil) / jobs.",
        "",
        "Each measurement uses a fresh pool, warmed up first; repetitions: "
        f"tiny {sizes.tiny_reps}, round trip {sizes.rtt_reps}, 1 ms jobs {sizes.cpu_reps}, "
        f"payloads {sizes.payload_reps}, start {sizes.start_reps}; "
        "the order of the systems rotates between repetitions.",
        "",
        "## Details",
        "",
        detail_table(results, "tiny", "Tiny jobs (jobs/s)", fmt_rate),
        "",
        detail_table(results, "rtt", "One-job round trip", fmt_us),
        "",
        detail_table(results, "cpu", "1 ms CPU jobs (wall)", fmt_ms),
        "",
    ]
    for size, _ in sizes.payloads:
        parts += [
            detail_table(results, payload_key(size), f"{size // MIB} MiB payload echo (MB/s)", fmt_mbs),
            "",
        ]
    parts += [
        detail_table(results, "start", "Start + 1 job + stop", fmt_ms),
        "",
        detail_table(
            results, "memory", "Memory per queued tiny job (RSS growth / jobs)", fmt_bytes, ratios=False
        ),
        "",
    ]
    return "\n".join(parts)


def draw_charts(results: Results, sizes: Sizes, outdir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as exc:  # noqa: BLE001
        log(f"charts skipped: cannot import matplotlib: {exc}")
        return []
    written = []
    bw_color, peer_color, ref_color = "#d62728", "#1f77b4", "#7f7f7f"

    tiny = [(k, r.median) for k, r in results.get("tiny", {}).items() if r.median is not None]
    if tiny:
        tiny.sort(key=lambda kv: kv[1])
        fig, ax = plt.subplots(figsize=(9, 0.45 * len(tiny) + 1.4))
        colors = [
            bw_color if k == "bossworker" else (peer_color if SYSTEMS[k].per_job else ref_color)
            for k, _ in tiny
        ]
        bars = ax.barh([SYSTEMS[k].label for k, _ in tiny], [v for _, v in tiny], color=colors)
        for bar, (_, v) in zip(bars, tiny, strict=True):
            ax.text(
                bar.get_width() * 1.05,
                bar.get_y() + bar.get_height() / 2,
                fmt_rate(v),
                va="center",
                fontsize=8,
            )
        ax.set_xscale("log")
        ax.set_xlabel("tiny jobs per second (log scale; grey = batch-only or floor)")
        ax.set_title(f"Throughput, {sizes.tiny_jobs:,} tiny jobs, {WORKERS} workers (median)")
        ax.set_xlim(right=max(v for _, v in tiny) * 4)
        fig.tight_layout()
        path = outdir / "bench_throughput.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    keys = [payload_key(size) for size, _ in sizes.payloads]
    systems = [
        k for k in SYSTEMS if any(results.get(w, {}).get(k, Result()).median is not None for w in keys)
    ]
    if systems:
        fig, ax = plt.subplots(figsize=(9, 4.2))
        width = 0.8 / len(keys)
        for i, (w, (size, _)) in enumerate(zip(keys, sizes.payloads, strict=True)):
            vals = [results.get(w, {}).get(k, Result()).median or 0 for k in systems]
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(systems))]
            bars = ax.bar(xs, vals, width, label=f"{size // MIB} MiB")
            for bar, v in zip(bars, vals, strict=True):
                if v:
                    ax.text(
                        bar.get_x() + bar.get_width() / 2,
                        v,
                        f"{v:,.0f}",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                    )
        ax.set_xticks(range(len(systems)))
        ax.set_xticklabels(
            [SYSTEMS[k].label.replace(", 1 in flight", "") for k in systems],
            rotation=20,
            ha="right",
            fontsize=8,
        )
        ax.set_ylabel("MB/s (payload echoed, one way)")
        ax.set_title(f"Payload echo by size, {WORKERS} workers (median)")
        ax.legend()
        fig.tight_layout()
        path = outdir / "bench_payload.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))
    return written


def dump_json(results: Results, sizes: Sizes, info: dict[str, Any], path: Path) -> None:
    data = {
        "sizes": sizes.__dict__,
        "machine": info,
        "results": {
            w: {
                k: {"values": r.values, "median": r.median, "error": r.error, "skipped": r.skipped}
                for k, r in t.items()
            }
            for w, t in results.items()
        },
    }
    path.write_text(json.dumps(data, indent=1, default=str))


# -- main ----------------------------------------------------------------------

WORKLOADS = ("tiny", "rtt", "cpu", "payload", "start", "memory")


# The part of benchmarks.md written from bench/hops.py and bench/startup.py
# output: kept as it is when this script rewrites the rest.
KEPT_MARKER = "<!-- From bench/hops.py and bench/startup.py: kept by bench/run.py. -->"


def kept_section(path: Path) -> str:
    """The kept part of the report at ``path`` (from KEPT_MARKER on), or ""."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, few repetitions (CI)")
    parser.add_argument(
        "--write-docs",
        action="store_true",
        help="accepted for a full run, which always writes docs/; refused with --quick, --only, --systems",
    )
    parser.add_argument("--out", type=Path, help="write the report and charts here instead")
    parser.add_argument("--only", help=f"comma-separated workloads to run, of {','.join(WORKLOADS)}")
    parser.add_argument("--systems", help=f"comma-separated systems to run, of {','.join(SYSTEMS)}")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long for the 1-minute load average to drop below 1 (shared machines)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every measurement")
    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.verbose

    sizes = QUICK if args.quick else FULL
    # Only a full run (default sizes, every workload, every system) replaces
    # the committed docs/benchmarks.md and its charts: a partial table there
    # would read as the published figures.
    full = not (args.quick or args.only or args.systems)
    if args.write_docs and not full:
        parser.error("--write-docs: only a full run (no --quick, --only or --systems) may replace docs/")
    if args.out:
        outdir = args.out
    elif full:
        outdir = ROOT / "docs"
    else:
        outdir = HERE / "results"
    outdir.mkdir(parents=True, exist_ok=True)
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    only_workloads = set(args.only.split(",")) if args.only else set(WORKLOADS)
    only_systems = set(args.systems.split(",")) if args.systems else None
    command = "python bench/run.py" + (
        "" if not (argv or sys.argv[1:]) else " " + " ".join(argv or sys.argv[1:])
    )

    if args.settle > 0 and hasattr(os, "getloadavg"):
        give_up = time.monotonic() + args.settle
        while os.getloadavg()[0] >= 1.0 and time.monotonic() < give_up:
            log(f"waiting for a quieter machine: load average {fmt_load(os.getloadavg())}")
            time.sleep(min(15.0, max(0.0, give_up - time.monotonic())))
    started = time.perf_counter()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    info = machine()
    log(
        f"bossworker benchmarks ({'quick' if args.quick else 'full'}), "
        f"{WORKERS} workers, on {info['nproc']} CPUs"
    )
    results: Results = {}
    limit = sizes.limit
    if "tiny" in only_workloads:
        run_workload(
            results,
            "tiny",
            [k for k in SYSTEMS if k != "split"],
            sizes.tiny_reps,
            measure_tiny(sizes.tiny_jobs),
            limit,
            only_systems,
        )
    if "rtt" in only_workloads:
        run_workload(
            results,
            "rtt",
            [*POOLS, "bw_executor", "raw_1"],
            sizes.rtt_reps,
            measure_rtt(sizes.rtt_jobs),
            limit,
            only_systems,
        )
    if "cpu" in only_workloads:
        turns = wl.calibrate_spin(0.001)
        info["spin_turns"] = turns
        run_workload(
            results,
            "cpu",
            [*POOLS, "serial", "split"],
            sizes.cpu_reps,
            measure_cpu(sizes.cpu_jobs, turns),
            limit,
            only_systems,
        )
    if "payload" in only_workloads:
        for size, n in sizes.payloads:
            run_workload(
                results,
                payload_key(size),
                [*POOLS, "raw_1"],
                sizes.payload_reps,
                measure_payload(size, n),
                limit,
                only_systems,
            )
    if "start" in only_workloads:
        run_workload(results, "start", POOLS, sizes.start_reps, measure_start, limit, only_systems)
    if "memory" in only_workloads and (only_systems is None or "bossworker" in only_systems):
        measure_memory(sizes.mem_jobs, results, sizes.mem_reps, limit)
    took = time.perf_counter() - started
    if hasattr(os, "getloadavg"):
        info["load_end"] = os.getloadavg()

    charts = draw_charts(results, sizes, outdir)
    report = render_markdown(results, sizes, info, command, date, took, charts, args.quick)
    report_path = outdir / "benchmarks.md"
    report_path.write_text(report + kept_section(report_path))
    dump_json(
        results,
        sizes,
        info,
        results_dir / ("full.json" if full else "quick.json" if args.quick else "partial.json"),
    )

    print(summary_table(results, sizes))
    print()
    print(targets_table(results, sizes))
    mem = results.get("memory", {})
    if mem:
        print()
        print(f"Boss memory per queued tiny job: {cell(mem.get('bossworker'), fmt_bytes)}")
    print()
    print(f"wrote {report_path}" + "".join(f", {c}" for c in charts) + f"; took {took:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

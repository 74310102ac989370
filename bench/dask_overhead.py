"""What the Dask backend costs on top of plain Dask (issue 6).

Usage: ``python bench/dask_overhead.py [--jobs 2000] [--trips 100] [--rounds 3]``

Starts a loopback cluster from the command line (``dask scheduler`` and
``dask worker --nworkers 2 --nthreads 1``, everything on 127.0.0.1), then,
in alternating rounds on that same cluster:

* **plain Dask**: ``client.submit(noop, i, pure=False)`` for every job, then
  ``as_completed(futures, with_results=True)``; one lone job:
  ``client.submit(...).result()``;
* **bossworker**: ``BossWorkerAsync(noop, backend=DaskBackend(address))``,
  ``add_work(*jobs)`` then ``results()``; one lone job: ``add_work`` then
  ``get_result``.

Throughput is jobs per second from the first submission to the last result;
the round trip is the median over ``--trips`` lone jobs.  Prints a table and
one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def noop(job: Any) -> Any:
    """The job: nothing, so that only the machinery is measured."""
    return job


class Cluster:
    def __init__(self, directory: Path, workers: int) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        scheduler_file = directory / "scheduler.json"
        self._start(
            directory, "scheduler", "--host", "127.0.0.1", "--port", "0",
            "--dashboard-address", "127.0.0.1:0", "--scheduler-file", str(scheduler_file),
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() or not scheduler_file.read_text().strip():
            if time.monotonic() > deadline:
                raise RuntimeError("the scheduler did not start")
            time.sleep(0.05)
        self.address = json.loads(scheduler_file.read_text())["address"]
        self._start(
            directory, "worker", self.address, "--nworkers", str(workers), "--nthreads", "1",
            "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0",
        )  # fmt: skip
        from distributed import Client

        with Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)

    def _start(self, directory: Path, *args: str) -> None:
        log = open(directory / f"{args[0]}.log", "wb")  # noqa: SIM115 - lives as long as the process
        self.procs.append(
            subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT)
        )

    def stop(self) -> None:
        for proc in reversed(self.procs):  # workers first
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def plain_dask(client: Any, jobs: int, trips: int) -> tuple[float, list[float]]:
    from distributed import as_completed

    start = time.perf_counter()
    futures = [client.submit(noop, i, pure=False) for i in range(jobs)]
    done = sum(1 for _future, _result in as_completed(futures, with_results=True))
    elapsed = time.perf_counter() - start
    assert done == jobs
    del futures
    times = []
    for i in range(trips):
        t = time.perf_counter()
        assert client.submit(noop, i, pure=False).result() == i
        times.append(time.perf_counter() - t)
    return jobs / elapsed, times


def ours(bw: Any, jobs: int, trips: int) -> tuple[float, list[float]]:
    start = time.perf_counter()
    bw.add_work(*range(jobs))
    done = sum(1 for _ in bw.results())
    elapsed = time.perf_counter() - start
    assert done == jobs
    times = []
    for i in range(trips):
        t = time.perf_counter()
        bw.add_work(i)
        assert bw.get_result() == i
        times.append(time.perf_counter() - t)
    return jobs / elapsed, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--trips", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from distributed import Client

    from bossworker import BossWorkerAsync
    from bossworker.dask import DaskBackend

    with tempfile.TemporaryDirectory() as tmp:
        cluster = Cluster(Path(tmp), args.workers)
        try:
            with (
                Client(cluster.address) as client,
                BossWorkerAsync(noop, backend=DaskBackend(cluster.address)) as bw,
            ):
                # Warm up both (imports, first connections, task prefixes).
                plain_dask(client, 200, 5)
                ours(bw, 200, 5)
                rates: dict[str, list[float]] = {"dask": [], "bossworker": []}
                trips: dict[str, list[float]] = {"dask": [], "bossworker": []}
                for _ in range(args.rounds):
                    for name, run in (("dask", lambda: plain_dask(client, args.jobs, args.trips)),
                                      ("bossworker", lambda: ours(bw, args.jobs, args.trips))):  # fmt: skip
                        rate, times = run()
                        rates[name].append(rate)
                        trips[name] += times
        finally:
            cluster.stop()

    report: dict[str, Any] = {
        "jobs": args.jobs,
        "trips": args.trips,
        "rounds": args.rounds,
        "workers": args.workers,
        "cpus": os.cpu_count(),
    }
    print(f"{'':12} {'jobs/s (median)':>16} {'rounds':>26} {'round trip median':>18} {'p90':>8}")
    for name in ("dask", "bossworker"):
        rate = statistics.median(rates[name])
        rtt = statistics.median(trips[name])
        p90 = statistics.quantiles(trips[name], n=10)[-1]
        each = ", ".join(f"{r:.0f}" for r in rates[name])
        print(f"{name:12} {rate:16.0f} {each:>26} {rtt * 1e3:15.2f} ms {p90 * 1e3:5.2f} ms")
        report[name] = {"jobs_per_s": rate, "rounds": rates[name], "rtt_median_s": rtt, "rtt_p90_s": p90}
    throughput = report["bossworker"]["jobs_per_s"] / report["dask"]["jobs_per_s"] - 1
    latency = report["bossworker"]["rtt_median_s"] / report["dask"]["rtt_median_s"] - 1
    print(f"bossworker vs plain Dask: throughput {throughput:+.1%}, round trip {latency:+.1%}")
    report["throughput_change"] = throughput
    report["round_trip_change"] = latency
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

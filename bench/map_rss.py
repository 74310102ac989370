"""Main's peak memory while ``BossWorkerAsync.map`` reads an endless generator.

    python bench/map_rss.py [items ...]     # default: 10000 1000000
    python bench/map_rss.py --window 64 --window 1024 1000000

Each count runs in a fresh interpreter, which reports its peak RSS
(``ru_maxrss``) and its rate; flat memory means the peak does not grow with
the number of items.  The generator is endless (``itertools.count``): the
loop stops after ``items`` results, in input order.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import itertools, json, resource, sys, time
from bossworker import BossWorkerAsync
from workloads import multiply

n, window, ordered = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
with BossWorkerAsync(multiply, worker_count=2) as bw:
    jobs = ({"a": i, "b": 2} for i in itertools.count())
    t = time.perf_counter()
    total = 0
    for i, r in enumerate(bw.map(jobs, max_in_flight=window, ordered=ordered)):
        if i == n:
            break
        total += r["product"]
    took = time.perf_counter() - t
assert not ordered or total == 2 * sum(range(n)), total
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"items": n, "seconds": took, "peak_rss_kib": peak}))
"""


def measure(n: int, window: int, ordered: bool = True) -> dict[str, float]:
    """Run ``n`` jobs through map() in a fresh interpreter; its figures."""
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent / "src")])}
    args = [sys.executable, "-c", CHILD, str(n), str(window), "1" if ordered else "0"]
    out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(out.stderr)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("items", nargs="*", type=int, default=[10_000, 1_000_000])
    parser.add_argument("--window", action="append", type=int, help="max_in_flight (default 1024)")
    parser.add_argument("--unordered", action="store_true")
    args = parser.parse_args()
    for window in args.window or [1024]:
        for n in args.items:
            r = measure(n, window, not args.unordered)
            print(
                f"max_in_flight={window:>5}: {r['items']:>9,} items: peak RSS of main "
                f"{r['peak_rss_kib'] / 1024:.1f} MiB, {r['items'] / r['seconds']:,.0f} items/s"
            )


if __name__ == "__main__":
    main()

"""Main's peak memory while ``Executor.map`` reads a long generator with a bounded buffer.

    python bench/executor_map_rss.py [items ...]     # default: 10000 1000000

Each count runs in a fresh interpreter, which reports its peak RSS
(``ru_maxrss``) and its rate; flat memory means the peak does not grow with
the number of items.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = """
import itertools, json, resource, sys, time
from bossworker import Executor
from workloads import multiply

n = int(sys.argv[1])
with Executor(2) as ex:
    jobs = ({"a": i, "b": 2} for i in range(n))
    t = time.perf_counter()
    total = sum(r["product"] for r in ex.map(multiply, jobs, buffersize=1000))
    took = time.perf_counter() - t
assert total == 2 * sum(range(n))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"items": n, "seconds": took, "peak_rss_kib": peak}))
"""


def main() -> None:
    here = Path(__file__).resolve().parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), str(here.parent / "src")])}
    for n in [int(a) for a in sys.argv[1:]] or [10_000, 1_000_000]:
        out = subprocess.run([sys.executable, "-c", CHILD, str(n)], env=env, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr, file=sys.stderr)
            sys.exit(1)
        r = json.loads(out.stdout)
        print(
            f"{r['items']:>9,} items: peak RSS of main {r['peak_rss_kib'] / 1024:.1f} MiB, "
            f"{r['items'] / r['seconds']:,.0f} items/s"
        )


if __name__ == "__main__":
    main()

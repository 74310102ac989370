"""The synopsis of Perl's Parallel::Fork::BossWorkerAsync, in Python.

Run it with ``python examples/synopsis.py``; it prints ``12`` then
``the answer is: 12``.  Its ``work`` function also serves the command line::

    bossworker run examples/synopsis.py:work --input examples/jobs.jsonl
"""

from __future__ import annotations

import sys
from typing import Any

from bossworker import BossWorkerAsync


def work(job: dict[str, int]) -> dict[str, int]:
    """Multiply ``a`` by ``b``.  Jobs and results are dicts."""
    # Uncomment to test the timeout:
    # import time; time.sleep(3)
    # Uncomment to test a worker error:
    # raise RuntimeError("rattle")
    return {"product": job["a"] * job["b"]}


def handle_result(result: dict[str, Any]) -> dict[str, Any]:
    """Runs in the main process on each result, before get_result() returns it."""
    if "product" in result:
        result["string"] = f"the answer is: {result['product']}"
    return result


def main() -> None:
    with BossWorkerAsync(work, result_handler=handle_result, global_timeout=2) as bw:
        # Jobs are dicts
        bw.add_work({"a": 3, "b": 4})
        while bw.pending():
            ref = bw.get_result()
            if "ERROR" in ref:
                print(ref["ERROR"], file=sys.stderr)
            else:
                print(ref["product"])
                print(ref["string"])


if __name__ == "__main__":
    main()

"""Watching a pool work with ``stats()``: ``python examples/stats_example.py``."""

from __future__ import annotations

import time

from bossworker import BossWorkerAsync


def work(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def main() -> None:
    with BossWorkerAsync(work, worker_count=2) as bw:
        bw.add_work(*[0.05] * 20)
        while bw.pending():
            s = bw.stats()
            print(f"{s.completed}/{s.added} done, {s.running} running, {s.queued} queued")
            bw.get_result()
        print(bw.stats())


if __name__ == "__main__":
    main()

"""Memory caps: ``python examples/memory_cap_example.py`` (Linux)."""

from __future__ import annotations

from bossworker import BossWorkerAsync

MiB = 1024 * 1024


def work(mib: int) -> int:
    chunks = [b"x" * MiB for _ in range(mib)]  # holds `mib` MiB, every page written
    return len(chunks)


if __name__ == "__main__":
    with BossWorkerAsync(work, worker_count=2, max_worker_memory="256MiB") as bw:
        bw.add_work(10, 4000, 20)  # 4000 MiB: far past the cap
        for result in sorted(bw.results(), key=str):
            print(result)  # 10, 20, then {'ERROR': 'BossWorkerAsync: worker exceeded ...'}
        print("memory kills:", bw.stats().memory_kills)  # the pool carries on with a new worker

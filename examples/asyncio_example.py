"""The pool from asyncio code: ``python examples/asyncio_example.py``."""

from __future__ import annotations

import asyncio

from bossworker import BossWorkerAsync


def work(job: dict[str, int]) -> dict[str, int]:
    return {"product": job["a"] * job["b"]}


async def main() -> None:
    async with BossWorkerAsync(work, worker_count=2) as bw:
        await bw.aadd_work(*({"a": i, "b": 2} for i in range(10)))  # add_work works too
        async for job_id, result in bw.aresults(with_id=True):
            print(job_id, result["product"])
        print(await bw.aget_result(timeout=0.1))  # None: nothing came
    # leaving the block: await bw.ashut_down() (force=True on an exception)


if __name__ == "__main__":
    asyncio.run(main())

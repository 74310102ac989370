"""Input as a stream: ``python examples/streams_example.py``."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import AsyncIterator

from bossworker import BossWorkerAsync


def square(x: int) -> int:
    return x * x


async def numbers() -> AsyncIterator[int]:
    for i in range(5):
        await asyncio.sleep(0.01)  # a slow source: each item is sent as it comes
        yield i


async def amain() -> None:
    async with BossWorkerAsync(square, worker_count=2) as bw:
        print([r async for r in bw.amap(numbers())])  # [0, 1, 4, 9, 16]


if __name__ == "__main__":
    with BossWorkerAsync(square, worker_count=2) as bw:
        # An endless input; at most 100 jobs in flight; results in input order.
        print(list(itertools.islice(bw.map(itertools.count(), max_in_flight=100), 8)))

        def produce() -> None:
            try:
                for x in range(20):
                    bw.add_work(x)
            finally:
                bw.close_input()  # no more work: the consumer stops after the last result

        producer = threading.Thread(target=produce)
        producer.start()
        print(sum(bw.results(until_closed=True)))  # all 20, not just those pending now
        producer.join()
    asyncio.run(amain())

"""Drop-in for concurrent.futures: ``python examples/executor_example.py``."""

from __future__ import annotations

import concurrent.futures as cf
import os
import time

from bossworker import Executor, TaskTimeoutError, WorkerDiedError


def square(x: int) -> int:
    return x * x


def crash() -> None:
    os._exit(3)  # a worker dying mid-task: a segfault, the OOM killer, ...


def stuck() -> None:
    time.sleep(60)


if __name__ == "__main__":
    with Executor(max_workers=2) as ex:  # was: ProcessPoolExecutor(max_workers=2)
        print(list(ex.map(square, range(5))))  # [0, 1, 4, 9, 16]
        futures = [ex.submit(square, n) for n in (6, 7)]
        print(sorted(f.result() for f in cf.as_completed(futures)))  # [36, 49]
        try:
            ex.submit(crash).result()
        except WorkerDiedError as e:  # also a BrokenProcessPool
            print("worker died:", e.reason)  # exit code 3
        try:
            ex.options(timeout=0.5).submit(stuck).result()  # a limit for this call
        except TaskTimeoutError:
            print("timed out")
        print(ex.submit(square, 8).result())  # 64: the executor carries on

"""A main program using ``bossworker.Executor`` that gets Ctrl-C (SIGINT to
its whole process group).

Usage: ``python executor_ctrl_c.py START_METHOD MODE FOLDER`` in a session of
its own.  Six 60-second tasks on two workers; once two run, it says
``ready`` (JSON line on stdout) and waits for them:

``with``  ``concurrent.futures.wait`` inside ``with Executor(...)``;
``map``   iterating ``ex.map`` inside ``with Executor(...)``;
``bare``  iterating ``ex.map`` with no ``with`` block: the KeyboardInterrupt
          ends the program (the interpreter-exit hook must stop the work).

For ``with`` and ``map`` it then says ``stopped``: how long leaving the block
took after the SIGINT came, and how the futures ended.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import sys
import time
from types import FrameType
from typing import Any

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)

import executor_tasks as tasks  # noqa: E402
from bossworker import Executor  # noqa: E402

SIGINT_AT: list[float] = []


def say(event: str, **facts: Any) -> None:
    print(json.dumps({"event": event, **facts}), flush=True)


def on_sigint(signum: int, frame: FrameType | None) -> None:
    SIGINT_AT.append(time.monotonic())
    raise KeyboardInterrupt


def wait_started(markers: list[str], count: int) -> None:
    deadline = time.monotonic() + 60
    while sum(os.path.exists(m) for m in markers) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the tasks never started")
        time.sleep(0.01)


def main() -> int:
    method, mode, folder = sys.argv[1:4]
    signal.signal(signal.SIGINT, on_sigint)  # as from a terminal, and note when it came
    markers = [os.path.join(folder, f"started-{i}") for i in range(6)]
    fs: list[cf.Future[Any]] = []
    if mode == "bare":
        ex = Executor(2, start_method=method)
        results = ex.map(tasks.sleep_marked, markers, [60] * 6)
        wait_started(markers, 1)
        say("ready", boss=ex.pool.boss_pid)
        for _ in results:
            pass
        say("error", why="the map ended without a KeyboardInterrupt")
        return 1
    try:
        with Executor(2, start_method=method) as ex:
            boss = ex.pool.boss_pid
            if mode == "with":
                fs = [ex.submit(tasks.sleep_marked, m, 60) for m in markers]
                wait_started(markers, 2)
                say("ready", boss=boss)
                cf.wait(fs)
            else:
                results = ex.map(tasks.sleep_marked, markers, [60] * 6)
                wait_started(markers, 1)
                say("ready", boss=boss)
                for _ in results:
                    pass
        say("error", why="left the with block without a KeyboardInterrupt")
        return 1
    except KeyboardInterrupt:
        took = time.monotonic() - SIGINT_AT[0]
        states = [
            "cancelled" if f.cancelled() else type(f.exception(timeout=0)).__name__ if f.done() else "pending"
            for f in fs
        ]
        say("stopped", took=took, states=states, started=sum(os.path.exists(m) for m in markers))
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""The portable engine path: what Windows runs, tested on Linux.

CI also runs the whole suite with ``BOSSWORKER_PORTABLE=1``; these tests
cover the pieces directly, in every run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import selectors
import socket
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from bossworker.portable import PortableSelector, _send_first, watch_forks


def _exit_when_told(conn: socket.socket) -> None:
    conn.recv(1)


def test_portable_selector_reads_writes_and_process_exits() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    ctx = multiprocessing.get_context("spawn")
    child_end, mine = socket.socketpair()
    proc = ctx.Process(target=_exit_when_told, args=(child_end,))
    proc.start()
    child_end.close()
    sel = PortableSelector()
    try:
        sel.register(a, selectors.EVENT_READ, "a")
        sel.register(proc.sentinel, selectors.EVENT_READ, "proc")
        assert sel.select(0) == []
        # Room to write is reported as soon as it is asked for.
        sel.modify(a, selectors.EVENT_READ | selectors.EVENT_WRITE, "a")
        assert [(k.data, m) for k, m in sel.select(0)] == [("a", selectors.EVENT_WRITE)]
        sel.modify(a, selectors.EVENT_READ, "a")
        b.sendall(b"x")
        assert [(k.data, m) for k, m in sel.select(5)] == [("a", selectors.EVENT_READ)]
        assert a.recv(1) == b"x"
        mine.sendall(b"!")  # the child exits: its sentinel becomes ready
        assert [(k.data, m) for k, m in sel.select(30)] == [("proc", selectors.EVENT_READ)]
        proc.join(10)
        assert sel.get_key(a).data == "a"
        sel.unregister(proc.sentinel)
        with pytest.raises(KeyError):
            sel.get_key(proc.sentinel)
    finally:
        sel.close()
        for s in (a, b, mine):
            s.close()
        proc.join(10)


def test_a_full_socket_wakes_the_writer_when_room_comes() -> None:
    a, b = socket.socketpair()
    a.setblocking(False)
    sel = PortableSelector()
    sel.register(a, selectors.EVENT_READ | selectors.EVENT_WRITE, None)
    sent = 0
    try:
        while True:
            sent += _send_first(a, [b"y" * 65536, b"never: only the first chunk goes"])
    except BlockingIOError:
        pass
    assert sel.select(0) == []  # full: neither readable nor writable
    got = 0
    while got < sent:
        got += len(b.recv(1 << 20))
    assert [m for _, m in sel.select(5)] == [selectors.EVENT_WRITE]
    sel.close()
    a.close()
    b.close()


def test_fork_flag_is_set_only_in_a_forked_child() -> None:
    flag = watch_forks()
    assert not flag
    pid = os.fork()
    if pid == 0:
        os._exit(0 if flag else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not flag


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_on_the_portable_path(method: str) -> None:
    """The synopsis, timeouts and a worker's death, with the path forced."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import handlers
        from bossworker import BossWorkerAsync, TIMED_OUT_ERROR
        from bossworker.portable import PORTABLE, HAS_ALARM
        assert PORTABLE and not HAS_ALARM
        if __name__ == "__main__":
            with BossWorkerAsync(handlers.crash_on_demand, worker_count=2, start_method={method!r}) as bw:
                bw.add_work({{"value": 1}}, {{"crash": "kill"}}, {{"value": 2}})
                bw.add_work({{"seconds": 30}}, timeout=0.5)
                out = sorted(
                    r["ERROR"].splitlines()[0] if "ERROR" in r else repr(r["job"]) for r in bw.results()
                )
            for line in out:
                print(line)
        """
    )
    env = {**os.environ, "BOSSWORKER_PORTABLE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=100, env=env
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "BossWorkerAsync: timed out",
        "BossWorkerAsync: worker died (SIGKILL) while running this job",
        "{'value': 1}",
        "{'value': 2}",
    ], proc.stdout + proc.stderr


BIG_PAYLOADS = """
import glob, json, os, sys, time
from bossworker import BossWorkerAsync


def work(job):
    if isinstance(job, dict):  # the first job holds the only worker
        while not os.path.exists(job["release"]):
            time.sleep(0.01)
        return b"r" * (1 << 20)
    return len(job)


if __name__ == "__main__":
    method, release = sys.argv[1:]
    with BossWorkerAsync(work, worker_count=1, start_method=method) as bw:
        (first,) = bw.add_work({"release": release})
        (second,) = bw.add_work(b"j" * (1 << 20))  # waits behind the first
        queued = glob.glob(f"/dev/shm/bossworker-{os.getpid()}-*")
        open(release, "w").close()
        got = dict(bw.get_result(timeout=60, with_id=True) for _ in range(2))
    print(json.dumps({"segments": len(queued), "first": len(got[first]), "second": got[second]}))
"""


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no /dev/shm to compare with")
@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_portable_path_carries_big_payloads_inside_frames(
    method: str, portable: bool, tmp_path: Any
) -> None:
    """The portable path is what Windows runs, which has
    no /dev/shm; on Linux it still put big payloads there, contrary to the
    README, so Windows' way (inside frames) went untested.  A 1 MiB job
    waiting for the only worker is a segment in /dev/shm off the portable
    path (the control) and none on it; both results arrive whole."""
    script = tmp_path / "big.py"
    script.write_text(BIG_PAYLOADS)
    env = {k: v for k, v in os.environ.items() if k != "BOSSWORKER_PORTABLE"}
    if portable:
        env["BOSSWORKER_PORTABLE"] = "1"
    proc = subprocess.run(
        [sys.executable, str(script), method, str(tmp_path / "release")],
        capture_output=True,
        text=True,
        timeout=100,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"segments": 0 if portable else 1, "first": 1 << 20, "second": 1 << 20}

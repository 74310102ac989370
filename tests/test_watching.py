"""How the Boss and the workers watch processes, and how workers leave.

* A helper a handler forks without exec holds copies of its worker's
  descriptors; the worker's death must show all the same (pidfds).
* What a handler starts (``os.system``, ``subprocess``) goes with its worker:
  timeout kill, death, recycling, shut-down (process groups).
* Under forkserver, main's death shows although a process main forked holds
  main's socket; a worker outliving its Boss leaves no segment behind.
* Log records a worker put in a ``multiprocessing.Queue`` reach main although
  the worker leaves through ``os._exit``.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import logging.handlers
import math
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

import handlers
from bossworker import BossDiedError, BossWorkerAsync
from bossworker.process import FLUSH_LIMIT
from waiting import wait_until

SCRIPTS = Path(__file__).parent / "scripts"
TIMED_OUT = {"ERROR": "BossWorkerAsync: timed out"}
DIED_SIGKILL = {"ERROR": "BossWorkerAsync: worker died (SIGKILL) while running this job"}
ALL_METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]
needs_forkserver = pytest.mark.skipif(
    "forkserver" not in multiprocessing.get_all_start_methods(), reason="no forkserver here"
)
needs_pidfd = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds here (Linux 5.3+)")


# -- helpers ---------------------------------------------------------------------


def pid_in(path: Path, timeout: float = 30) -> int:
    """The pid a handler wrote to ``path`` (waits for the file)."""
    wait_until(path.exists, timeout, f"{path.name} to be written")
    return int(path.read_text())


def is_gone(pid: int) -> bool:
    """Exited (a zombie whose parent is not us counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_quietly(pids: Iterable[int | None]) -> None:
    """Clean-up after a test: helpers that left the worker's group on purpose."""
    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def with_token(token: str) -> list[psutil.Process]:
    """Live processes with ``token`` in their command line."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if any(token in arg for arg in p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
    return found


def new_token() -> str:
    """A unique ``sleep`` argument of about half a minute: marks one child."""
    return f"3{random.randrange(10)}.{random.randrange(10**9):09d}"


def wait_tokens_gone(tokens: list[str], timeout: float) -> None:
    def gone() -> bool:
        return not any(with_token(t) for t in tokens)

    try:
        wait_until(gone, timeout, lambda: f"handler children {[t for t in tokens if with_token(t)]} exiting")
    finally:
        for t in tokens:  # never leave them, even when the test failed
            for p in with_token(t):
                with contextlib.suppress(psutil.Error):
                    p.kill()


def collect(bw: BossWorkerAsync, count: int, timeout: float) -> dict[int, Any]:
    got: dict[int, Any] = {}
    for _ in range(count):
        item = bw.get_result(timeout=timeout, with_id=True)
        assert item is not None, f"no result within {timeout} s ({len(got)} of {count} so far)"
        job_id, value = item
        assert job_id not in got, f"job {job_id} answered twice"
        got[job_id] = value
    return got


def segments_of(main_pid: int | None = None) -> list[str]:
    return glob.glob(f"/dev/shm/bossworker-{main_pid or os.getpid()}-*")


# == a helper holding the worker's descriptors hides nothing ====================


@needs_pidfd
@pytest.mark.timeout(60)
def test_sigkilled_worker_is_noticed_although_its_forked_helper_holds_its_pipes(
    start_method: str, tmp_path: Path
) -> None:
    """Five times over in one pool: each worker forks a helper that keeps
    its descriptors, and is SIGKILLed in a job with jobs queued behind."""
    helpers: list[int] = []
    bw = BossWorkerAsync(handlers.with_helper, worker_count=1, start_method=start_method)
    try:
        for n in range(5):
            helper_file, pid_file = tmp_path / f"helper-{n}", tmp_path / f"worker-{n}"
            job = {"helper_file": str(helper_file), "then": "wait", "pid_file": str(pid_file)}
            (first,) = bw.add_work(job)
            later = bw.add_work(*({"n": i} for i in range(3)))  # queued behind it
            helpers.append(pid_in(helper_file))
            worker = pid_in(pid_file)
            os.kill(worker, signal.SIGKILL)
            got = collect(bw, 4, timeout=10)
            assert got[first] == DIED_SIGKILL
            assert {got[j]["pid"] for j in later} != {worker}
            reaped = "the dead worker being reaped (not left a zombie)"
            wait_until(lambda: is_gone(worker) and not psutil.pid_exists(worker), 5, reaped)  # noqa: B023
            assert not is_gone(helpers[-1])  # it still holds the worker's descriptors
            assert bw.stats().workers_alive == 1
    finally:
        bw.shut_down(force=True)
        kill_quietly(helpers)


@needs_pidfd
@pytest.mark.timeout(60)
def test_worker_killed_at_its_deadline_is_replaced_although_its_helper_lives(
    start_method: str, tmp_path: Path
) -> None:
    helper_file = tmp_path / "helper"
    helper: int | None = None
    bw = BossWorkerAsync(handlers.with_helper, worker_count=1, start_method=start_method)
    try:
        # SIGALRM blocked: only the Boss's kill ends the job.
        (stuck,) = bw.add_work({"helper_file": str(helper_file), "then": "stuck", "seconds": 60}, timeout=0.5)
        later = bw.add_work(*({"n": i} for i in range(3)))
        got = collect(bw, 4, timeout=10)
        helper = pid_in(helper_file)
        assert got[stuck] == TIMED_OUT
        assert all("pid" in got[j] for j in later)
        wait_until(lambda: bw.stats().workers_alive == 1, 5, "a replacement worker")
    finally:
        bw.shut_down(force=True)
        kill_quietly([helper])


@needs_pidfd
@pytest.mark.timeout(60)
def test_graceful_shut_down_is_prompt_although_helpers_hold_the_workers_pipes(
    start_method: str, tmp_path: Path
) -> None:
    files = [tmp_path / f"helper-{i}" for i in range(4)]
    helpers: list[int] = []
    bw = BossWorkerAsync(handlers.with_helper, worker_count=2, start_method=start_method)
    try:
        bw.add_work(*({"helper_file": str(f)} for f in files))
        collect(bw, len(files), timeout=20)
        helpers += [pid_in(f) for f in files]
        start = time.monotonic()
        bw.shut_down()
        elapsed = time.monotonic() - start
        assert elapsed < 10, f"shut_down() took {elapsed:.1f} s"
    finally:
        bw.shut_down(force=True)
        kill_quietly(helpers)


@pytest.mark.timeout(60)
def test_graceful_shut_down_is_prompt_while_a_detached_helper_lives(
    start_method: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A helper a handler forked into its own session
    held the write end of the Boss's multiprocessing sentinel pipe (every
    forked worker inherited it), so main's join of the Boss waited 5 s and
    logged "the Boss did not exit after its BYE".  Workers now drop it."""
    helpers: list[int] = []
    try:
        for round_ in range(2):
            files = [tmp_path / f"helper-{round_}-{i}" for i in range(2)]
            bw = BossWorkerAsync(handlers.with_helper, worker_count=2, start_method=start_method)
            try:
                bw.add_work(*({"helper_file": str(f)} for f in files))
                collect(bw, len(files), timeout=20)
                new_helpers = [pid_in(f) for f in files]
                helpers += new_helpers
                # Main's end of the Boss's sentinel pipe (multiprocessing's).
                sentinel: int = bw._session.handle._process.sentinel  # type: ignore[attr-defined]
                pipe = f"pipe:[{os.fstat(sentinel).st_ino}]"
                for helper in new_helpers:
                    fds = os.listdir(f"/proc/{helper}/fd")
                    held = {os.readlink(f"/proc/{helper}/fd/{fd}") for fd in fds}
                    assert pipe not in held, f"helper {helper} holds the Boss's sentinel pipe"
                with caplog.at_level(logging.INFO, logger="bossworker"):
                    start = time.monotonic()
                    bw.shut_down()
                    elapsed = time.monotonic() - start
                assert not [r for r in caplog.records if "did not exit after its BYE" in r.getMessage()]
                # The bug cost exactly the 5 s of main's join; a loaded
                # machine may take long, so only the fact above is decisive.
                assert elapsed < 30, f"shut_down() took {elapsed:.1f} s"
                assert not any(is_gone(h) for h in new_helpers), "the helpers must still live for this test"
            finally:
                bw.shut_down(force=True)
    finally:
        kill_quietly(helpers)


# == a handler's children go with its worker ====================================


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["system", "popen"])
def test_timeout_leaves_no_handler_children(start_method: str, how: str) -> None:
    """``os.system`` sits in C (waitpid) past the deadline: the Boss kills the
    worker's group at once.  ``Popen.wait`` is Python: SIGALRM ends the job,
    the worker lives on, and its child goes at the latest with the worker
    (here: at shut-down)."""
    token = new_token()
    try:
        with BossWorkerAsync(handlers.start_children, worker_count=1, start_method=start_method) as bw:
            (job,) = bw.add_work({"how": how, "token": token}, timeout=1)
            assert collect(bw, 1, timeout=20) == {job: TIMED_OUT}
            if how == "system":
                wait_tokens_gone([token], 5)
    finally:
        wait_tokens_gone([token], 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["system", "popen"])
def test_worker_death_leaves_no_handler_children(start_method: str, how: str, tmp_path: Path) -> None:
    token, pid_file = new_token(), tmp_path / "worker"
    try:
        with BossWorkerAsync(handlers.start_children, worker_count=1, start_method=start_method) as bw:
            (job,) = bw.add_work({"how": how, "token": token, "pid_file": str(pid_file)})
            worker = pid_in(pid_file)
            wait_until(lambda: with_token(token), 10, "the handler's child starting")
            os.kill(worker, signal.SIGKILL)
            assert collect(bw, 1, timeout=20) == {job: DIED_SIGKILL}
            wait_tokens_gone([token], 5)  # with the pool still open
    finally:
        wait_tokens_gone([token], 5)


@pytest.mark.timeout(90)
def test_recycled_workers_leave_no_handler_children(start_method: str) -> None:
    """Each worker exits cleanly after one job that left a child running in
    the background; every child is gone before the pool shuts down."""
    tokens = [new_token() for _ in range(20)]
    try:
        with BossWorkerAsync(
            handlers.start_children, worker_count=2, max_jobs_per_worker=1, start_method=start_method
        ) as bw:
            bw.add_work(*({"how": "background", "token": t} for t in tokens))
            pids = {v["pid"] for v in collect(bw, len(tokens), timeout=30).values()}
            assert len(pids) == len(tokens)  # one worker per job
            wait_until(lambda: bw.stats().workers_started > len(tokens), 20, "the last worker recycled")
            wait_tokens_gone(tokens, 10)
    finally:
        wait_tokens_gone(tokens, 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("force", [False, True])
def test_shut_down_leaves_no_handler_children(start_method: str, force: bool) -> None:
    tokens = [new_token() for _ in range(6)]
    try:
        bw = BossWorkerAsync(handlers.start_children, worker_count=2, start_method=start_method)
        try:
            bw.add_work(*({"how": "background", "token": t} for t in tokens))
            collect(bw, len(tokens), timeout=20)
            wait_until(lambda: all(with_token(t) for t in tokens), 10, "the children running")
        finally:
            bw.shut_down(force=force)
        wait_tokens_gone(tokens, 5)
    finally:
        wait_tokens_gone(tokens, 5)


@pytest.mark.timeout(60)
def test_workers_lead_their_own_process_groups(start_method: str) -> None:
    with BossWorkerAsync(handlers.pid_of_worker, worker_count=2, start_method=start_method) as bw:
        bw.add_work(None)
        pids = set(collect(bw, 1, 20).values())
        pids |= {int(pid) for pid in bw.stats().jobs_per_worker}
        assert len(pids) == 2
        for pid in pids:  # the one still starting may not be there yet
            wait_until(lambda: os.getpgid(pid) == pid, 10, f"worker {pid} leading its group")  # noqa: B023
        assert os.getpgid(bw.boss_pid) == os.getpgrp()  # the Boss stays in main's


# == main's death under forkserver; no segment after the Boss's death ===========


@needs_pidfd
@pytest.mark.timeout(90)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_main_sigkilled_after_forking_leaves_no_pool(method: str, tmp_path: Path) -> None:
    """A child main forked after creating the pool holds main's socket: the
    Boss sees main's death by its pidfd (under fork and spawn also as its
    new parent)."""
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "main_forks_then_dies.py"), method],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    info: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the script said nothing; stderr: {stderr_path.read_text()}"
        info = json.loads(line)
        assert "error" not in info, info
        pool = [info["boss"], *info["workers"]]
        assert len(pool) == 3
        proc.kill()
        proc.wait(10)
        wait_until(lambda: all(is_gone(pid) for pid in pool), 5, "the Boss and the workers exiting")
        assert not is_gone(info["child"])  # it still holds main's socket
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kill_quietly([info.get("child"), *info.get("workers", []), info.get("boss")])
        if info.get("forkserver"):
            # It leaves by itself once main's last copy of its pipe is gone.
            with contextlib.suppress(AssertionError):
                wait_until(lambda: is_gone(info["forkserver"]), 10, "the fork server exiting")
            kill_quietly([info["forkserver"]])
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="big payloads travel inline without /dev/shm")
@pytest.mark.timeout(240)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_worker_outliving_its_boss_leaves_no_segment(method: str, tmp_path: Path) -> None:
    """The Boss dies while a worker runs a job with a big result.  Under
    forkserver nothing kills the worker with its Boss: it finishes the
    handler call, sees the Boss gone, and writes no segment.

    Main sees the Boss's death (end-of-file) before the Boss's pidfd says
    so, and before a worker's parent-death signal comes; a worker that
    looked once, before writing (forkserver), or not at all (fork, spawn),
    wrote a segment now and then under load.  Repeated here."""
    rounds = 12 if method == "forkserver" else 6
    for round_ in range(rounds):
        pid_file, release = tmp_path / f"worker-{round_}", tmp_path / f"release-{round_}"
        bw = BossWorkerAsync(handlers.big_result_when_released, worker_count=1, start_method=method)
        worker: int | None = None
        try:
            bw.add_work({"pid_file": str(pid_file), "release_file": str(release), "size": 1024 * 1024})
            worker = pid = pid_in(pid_file)
            os.kill(bw.boss_pid, signal.SIGKILL)
            with pytest.raises(BossDiedError):
                bw.get_result(timeout=10)
            release.touch()
            wait_until(functools.partial(is_gone, pid), 10, "the worker exiting")
            assert segments_of() == [], f"round {round_}"
        finally:
            release.touch()
            bw.shut_down(force=True)
            kill_quietly([worker])
            for path in segments_of():
                with contextlib.suppress(OSError):
                    os.unlink(path)


# == workers flush what their handlers hold before they leave =====================


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


# A multiprocessing.Queue reaches a worker only by inheritance: under fork
# (the pool refuses to pickle one for spawn and forkserver).


@pytest.mark.timeout(60)
def test_worker_log_records_reach_main_although_workers_recycle() -> None:
    """The standard QueueHandler -> QueueListener recipe with recycling:
    20 workers each log 5 records and leave; none may be lost."""
    jobs = 100
    start_method = "fork"
    queue: Any = multiprocessing.get_context(start_method).Queue()
    collected = _Collect()
    listener = logging.handlers.QueueListener(queue, collected)
    listener.start()
    try:
        with BossWorkerAsync(
            handlers.log_job,
            worker_count=2,
            max_jobs_per_worker=5,
            init_handler=functools.partial(handlers.log_through_queue, queue),
            start_method=start_method,
        ) as bw:
            bw.add_work(*range(jobs))
            collect(bw, jobs, timeout=30)
        # Every worker has left: what it logged is in the queue's pipe.
        wait_until(lambda: len(collected.messages) >= jobs, 10, lambda: f"{len(collected.messages)} records")
        assert sorted(collected.messages) == sorted(f"job {i!r}" for i in range(jobs))
    finally:
        listener.stop()
        queue.close()
        queue.join_thread()


@pytest.mark.timeout(60)
def test_logging_handlers_made_in_the_worker_are_flushed_as_it_leaves(
    start_method: str, tmp_path: Path
) -> None:
    """Records held in a MemoryHandler set up by init_handler are written
    when the worker leaves (recycling, then shut-down)."""
    jobs = 30
    with BossWorkerAsync(
        handlers.log_job,
        worker_count=2,
        max_jobs_per_worker=4,
        init_handler=functools.partial(handlers.buffer_logs_in_file, str(tmp_path)),
        start_method=start_method,
    ) as bw:
        bw.add_work(*range(jobs))
        collect(bw, jobs, timeout=30)
    lines = [line for path in tmp_path.glob("log-*") for line in path.read_text().splitlines()]
    assert sorted(lines) == sorted(f"job {i!r}" for i in range(jobs))


@pytest.mark.timeout(60)
def test_a_flush_that_cannot_finish_does_not_hold_shut_down() -> None:
    """A queue nobody reads: its feeder thread can never write what was put,
    so the worker waits FLUSH_LIMIT seconds for it, then leaves anyway."""
    queue: Any = multiprocessing.get_context("fork").Queue()
    try:
        bw = BossWorkerAsync(
            handlers.put_bytes,
            worker_count=1,
            init_handler=functools.partial(handlers.stash_queue, queue),
            start_method="fork",
        )
        start = math.inf
        try:
            bw.add_work(4 * 1024 * 1024)  # far more than a pipe holds
            collect(bw, 1, timeout=20)
            start = time.monotonic()
        finally:
            bw.shut_down()
        elapsed = time.monotonic() - start
        assert FLUSH_LIMIT - 0.5 <= elapsed < FLUSH_LIMIT + 5, f"shut_down() took {elapsed:.1f} s"
    finally:
        queue.cancel_join_thread()
        queue.close()

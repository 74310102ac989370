"""Fault injection: real processes, real signals, real sockets.

Each section matches one point of the issue:

1. a worker dies (mid-job or idle) or cannot start;
2. timeouts hold for C code that blocks or ignores signals;
3. workers are recycled after ``max_jobs_per_worker`` jobs;
4. main is SIGKILLed: no orphans (helper script ``scripts/parent_dies.py``);
5. the Boss is SIGKILLed: main's calls raise ``BossDiedError``, nothing hangs;
6. Ctrl-C to the whole process group (helper script ``scripts/ctrl_c.py``);
7. bad handlers and odd sizes;
8. several threads adding and collecting at once.

No test sleeps to synchronise: they wait on events, results or conditions,
each with a generous deadline (the suite must pass on a busy 2-core box).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import glob
import json
import math
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest

import handlers
from bossworker import BossDiedError, BossWorkerAsync, WorkerInitError
from bossworker.backend import BossHandle, LocalBackend
from bossworker.config import BossConfig
from bossworker.portable import HAS_ALARM, PORTABLE
from waiting import wait_until

SCRIPTS = Path(__file__).parent / "scripts"
TIMED_OUT = {"ERROR": "BossWorkerAsync: timed out"}


def died(reason: str) -> dict[str, str]:
    return {"ERROR": f"BossWorkerAsync: worker died ({reason}) while running this job"}


# -- helpers ---------------------------------------------------------------------


def is_gone(p: psutil.Process) -> bool:
    """Exited (a zombie waiting for a parent that is not us counts as exited)."""
    try:
        return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(procs: Iterable[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` s for every process to exit; return the survivors."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in procs if not is_gone(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.01)


def _is_mp_helper(p: psutil.Process) -> bool:
    try:
        return "resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


def workers_of(bw: BossWorkerAsync) -> list[psutil.Process]:
    """The live worker processes of ``bw`` (children of its Boss)."""
    boss = psutil.Process(bw.boss_pid)
    return [p for p in boss.children() if not is_gone(p) and not _is_mp_helper(p)]


def worker_pids(bw: BossWorkerAsync) -> set[int]:
    return {p.pid for p in workers_of(bw)}


def wait_for_workers(bw: BossWorkerAsync, count: int, timeout: float = 20) -> set[int]:
    """Wait until exactly ``count`` workers are alive; return their pids."""
    found: set[int] = set()

    def enough() -> bool:
        nonlocal found
        found = worker_pids(bw)
        return len(found) == count

    wait_until(enough, timeout, f"{count} live workers")
    return found


def marker_pids(directory: Path, kind: str) -> set[int]:
    """Pids that left an ``init-PID`` / ``exit-PID`` marker (handlers.write_marker_*)."""
    return {int(p.name.split("-")[1]) for p in directory.glob(f"{kind}-*")}


def collect(bw: BossWorkerAsync, count: int, timeout: float = 30) -> dict[int, Any]:
    """``count`` results by job id; fails on a duplicate id or a long silence."""
    got: dict[int, Any] = {}
    for _ in range(count):
        item = bw.get_result(timeout=timeout, with_id=True)
        assert item is not None, f"no result within {timeout} s ({len(got)} of {count} so far)"
        job_id, value = item
        assert job_id not in got, f"job {job_id} answered twice"
        got[job_id] = value
    return got


def kill_quietly(procs: Iterable[psutil.Process]) -> None:
    """Last-resort clean-up after a failed test: leave no orphan behind."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.kill()


def segments_of(main_pid: int | None = None) -> list[str]:
    """The /dev/shm segments of the pools of a main process (big payloads)."""
    return glob.glob(f"/dev/shm/bossworker-{main_pid or os.getpid()}-*")


needs_shm = pytest.mark.skipif(
    PORTABLE or not os.access("/dev/shm", os.W_OK),
    reason="big payloads travel inline without /dev/shm and on the portable path",
)


class LineReader:
    """Read a child's stdout line by line, each read with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], stderr_path: Path) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buffer = b""
        self.stderr_path = stderr_path

    def line(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line from the script within {timeout} s; {self._stderr()}")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise AssertionError(f"the script closed its stdout; {self._stderr()}")
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        info: dict[str, Any] = json.loads(line)
        assert "error" not in info and info.get("event") != "error", f"script says {info}; {self._stderr()}"
        return info

    def _stderr(self) -> str:
        return f"its stderr:\n{self.stderr_path.read_text(errors='replace')[-4000:]}"


# == 1. worker death ================================================================

# One row per way to die mid-job: the job, and how the Boss must name the death.
CRASHES = {
    "os._exit": ({"crash": "exit", "code": 9}, "exit code 9"),
    "sigkill-self": ({"crash": "kill"}, "SIGKILL"),
    "segfault": ({"crash": "segfault"}, "SIGSEGV"),
    "sigkill-from-test": ({"crash": "wait"}, "SIGKILL"),  # the test kills the worker
}
CRASH_CASES = [pytest.param(name, "fork", id=f"{name}-fork") for name in CRASHES] + [
    pytest.param(name, "spawn", id=f"{name}-spawn") for name in ("segfault", "sigkill-from-test")
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("crash", "method"), CRASH_CASES)
def test_worker_death_mid_job_costs_exactly_that_job(
    crash: str, method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    fatal, reason = CRASHES[crash]
    fatal = dict(fatal)
    pid_file = tmp_path / "victim.pid"
    if fatal["crash"] == "wait":
        fatal["pid_file"] = str(pid_file)
    others = [{"value": i, "seconds": 0.02} for i in range(10)]
    with BossWorkerAsync(
        handlers.crash_on_demand,
        init_handler=handlers.write_marker_init,
        worker_count=2,
        start_method=method,
    ) as bw:
        before = worker_pids(bw)
        assert len(before) == 2
        ids = bw.add_work(*others[:5])
        (victim,) = bw.add_work(fatal)
        ids += bw.add_work(*others[5:])
        if fatal["crash"] == "wait":
            pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(), 20, "the victim's pid"))
            assert pid in before
            os.kill(pid, signal.SIGKILL)
        got = collect(bw, 11)
        assert got[victim] == died(reason)
        assert [got[i]["job"] for i in ids] == others  # every other job completed
        # Back at full strength, and the replacement ran its init_handler.
        wait_until(
            lambda: (s := bw.stats()).workers_alive == 2 and s.workers_started == 3, 20, "the replacement"
        )
        after = wait_for_workers(bw, 2)
        (new,) = after - before
        assert len(before - after) == 1
        wait_until(lambda: new in marker_pids(tmp_path, "init"), 20, "init_handler in the replacement")
        assert marker_pids(tmp_path, "init") == before | after
        # The replacement serves jobs.
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the replacement never served a job"
            bw.add_work({"seconds": 0.05}, {"seconds": 0.05})
            pids = {bw.get_result(timeout=30)["pid"] for _ in range(2)}
            assert pids <= after
            if new in pids:
                break
        stats = bw.stats()
        assert stats.failed == 1
        assert stats.workers_started == 3


@pytest.mark.timeout(60)
def test_jobs_sent_ahead_to_a_dying_worker_are_not_lost() -> None:
    """Tiny jobs are pipelined: several wait in the worker's socket behind
    the running one.  When it dies, only the running job is lost; the rest
    run elsewhere, each exactly once."""
    with BossWorkerAsync(handlers.crash_on_demand, worker_count=1) as bw:
        warm = bw.add_work(*range(200))  # teach the Boss that jobs are tiny
        ids = bw.add_work(*range(200, 400))
        (victim,) = bw.add_work({"crash": "kill"})
        ids += bw.add_work(*range(400, 600))
        got = collect(bw, 601)
        assert got[victim] == died("SIGKILL")
        assert [got[i]["job"] for i in warm + ids] == list(range(600))
        assert bw.stats().workers_started == 2


def test_idle_worker_killed_is_replaced(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    with BossWorkerAsync(
        handlers.echo_with_pid,
        init_handler=handlers.write_marker_init,
        worker_count=2,
        start_method=start_method,
    ) as bw:
        before = worker_pids(bw)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: (s := bw.stats()).workers_alive == 2 and s.workers_started == 3, 20, "the replacement"
        )
        after = wait_for_workers(bw, 2)
        assert victim not in after
        (new,) = after - before
        wait_until(lambda: new in marker_pids(tmp_path, "init"), 20, "init_handler in the replacement")
        ids = bw.add_work(*range(20))
        got = collect(bw, 20)
        assert [got[i][0] for i in ids] == list(range(20))
        assert {pid for _, pid in got.values()} <= after
        assert bw.stats().failed == 0  # an idle death costs no job


@pytest.mark.timeout(60)
def test_broken_init_handler_fails_fast_and_leaves_nothing(start_method: str) -> None:
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    start = time.monotonic()
    with pytest.raises(WorkerInitError, match="init exploded"):
        BossWorkerAsync(
            handlers.echo, init_handler=handlers.failing_init, worker_count=3, start_method=start_method
        )
    assert time.monotonic() - start < 10
    new = [p for p in me.children(recursive=True) if p.pid not in before and not _is_mp_helper(p)]
    assert not wait_gone(new, 2), "the failed pool left processes behind"


@pytest.mark.timeout(90)
def test_workers_failing_at_start_back_off_and_queued_jobs_get_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pool starts fine; then every new worker fails in init_handler
    (the marker file exists).  No hot respawn loop; jobs are answered with an
    ERROR naming the init failure; when the cause goes, the pool recovers."""
    marker = tmp_path / "fail-init"
    monkeypatch.setenv("BW_INIT_FAIL_FILE", str(marker))
    with BossWorkerAsync(handlers.echo, init_handler=handlers.init_fails_if_marker, worker_count=2) as bw:
        assert bw.stats().workers_started == 2
        marker.touch()
        for p in workers_of(bw):
            p.kill()
        # Watch for two seconds: a hot loop would start hundreds of workers.
        window_end = time.monotonic() + 2
        started = 0
        while time.monotonic() < window_end:
            started = bw.stats().workers_started - 2
            time.sleep(0.05)
        assert 2 <= started < 20, f"{started} workers started in 2 s"

        ids = bw.add_work("a", "b", "c")
        got = collect(bw, 3, timeout=30)
        for job_id in ids:
            assert "ERROR" in got[job_id], got
            text = got[job_id]["ERROR"]
            assert text.startswith("BossWorkerAsync: "), text
            assert "init refused: the marker file exists" in text, text
        stats = bw.stats()
        assert stats.workers_started - 2 < 30, stats

        # The cause goes away: the back-off ends with a worker that serves.
        marker.unlink()
        deadline = time.monotonic() + 30
        while True:
            assert time.monotonic() < deadline, "the pool never recovered"
            (job_id,) = bw.add_work("back")
            result = bw.get_result(timeout=30, with_id=True)
            assert result is not None and result[0] == job_id
            if result[1] == "back":
                break
            assert "init refused" in result[1]["ERROR"], result
        wait_for_workers(bw, 2, 30)


@pytest.mark.timeout(60)
def test_one_death_during_start_up_does_not_fail_the_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker killed once while it starts (the OOM killer, an operator) is
    not a worker that "keeps dying at start": the Boss starts another, and
    the jobs that waited meanwhile are served, not failed."""
    hold = tmp_path / "hold-init"
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    monkeypatch.setenv("BW_INIT_HOLD_FILE", str(hold))
    with BossWorkerAsync(handlers.echo, init_handler=handlers.init_marker_then_hold, worker_count=1) as bw:
        (first,) = worker_pids(bw)
        hold.touch()
        os.kill(first, signal.SIGKILL)  # its replacement will hang in init_handler
        starting = wait_until(
            lambda: marker_pids(tmp_path, "init") - {first}, 20, "the replacement in init_handler"
        )
        ids = bw.add_work(*range(5))  # they wait: no worker serves
        assert bw.stats().running == 0  # the Boss has read them (it answers in order)
        (victim,) = starting
        os.kill(victim, signal.SIGKILL)  # killed during its start-up
        hold.unlink()
        got = collect(bw, 5)
        assert [got[i] for i in ids] == list(range(5)), got


# == 2. timeouts that hold ===========================================================

# handler, a job that overruns, a quick job, does the worker survive the timeout?
STUCK = {
    "sigalrm-blocked": (handlers.spin_with_alarm_blocked, {"seconds": 30}, {"seconds": 0}, False),
    "long-c-call": (handlers.long_c_call, {"iterations": 10**9}, {"iterations": 1}, False),
    "swallows-everything": (handlers.swallow_everything, {"seconds": 30}, {"seconds": 0}, True),
}
TIMEOUT_CASES = [
    pytest.param(name, how, "fork", id=f"{name}-{how}-fork")
    for name in STUCK
    for how in ("global", "per-job")
] + [pytest.param("long-c-call", "global", "spawn", id="long-c-call-global-spawn")]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("stuck", "how", "method"), TIMEOUT_CASES)
def test_timeout_holds_even_in_stuck_c_code(stuck: str, how: str, method: str) -> None:
    handler, slow_job, quick_job, survives = STUCK[stuck]
    global_timeout = 0.5 if how == "global" else 0
    per_job = {} if how == "global" else {"timeout": 0.5}
    with BossWorkerAsync(handler, global_timeout=global_timeout, worker_count=1, start_method=method) as bw:
        (first,) = workers_of(bw)
        start = time.monotonic()
        (job_id,) = bw.add_work(slow_job, **per_job)
        got = bw.get_result(timeout=30, with_id=True)
        elapsed = time.monotonic() - start
        assert got == (job_id, TIMED_OUT)
        assert 0.45 <= elapsed < 3.0, f"timed out after {elapsed:.2f} s, deadline 0.5 s"
        # Later jobs work.
        bw.add_work(quick_job, **per_job)
        assert "ERROR" not in str(bw.get_result(timeout=30))
        stats = bw.stats()
        assert stats.timed_out == 1
        if survives and HAS_ALARM:  # the gentle way worked: same worker
            assert worker_pids(bw) == {first.pid}
            assert stats.workers_started == 1
        else:  # the Boss killed it and started a replacement
            assert stats.workers_started == 2
            assert not wait_gone([first], 5)
            assert first.pid not in wait_for_workers(bw, 1)


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    not HAS_ALARM, reason="the portable path has no SIGALRM: the Boss kills the worker (asserted above)"
)
def test_python_level_timeout_keeps_the_worker(start_method: str) -> None:
    with BossWorkerAsync(handlers.sleep_for, worker_count=1, start_method=start_method) as bw:
        bw.add_work({"seconds": 0})
        pid = bw.get_result(timeout=30)["pid"]
        start = time.monotonic()
        bw.add_work({"seconds": 30}, timeout=0.5)
        assert bw.get_result(timeout=30) == TIMED_OUT
        assert time.monotonic() - start < 3.0
        bw.add_work({"seconds": 0})
        assert bw.get_result(timeout=30)["pid"] == pid
        stats = bw.stats()
        assert (stats.timed_out, stats.workers_started) == (1, 1)


@pytest.mark.timeout(60)
def test_timeout_kill_does_not_lose_jobs_sent_ahead() -> None:
    """A stuck job behind and ahead of pipelined tiny jobs: only it times out."""
    with BossWorkerAsync(handlers.long_c_call, worker_count=1) as bw:
        quick = {"iterations": 1}
        ids = bw.add_work(*[quick] * 200)  # teach the Boss that jobs are tiny
        (stuck,) = bw.add_work({"iterations": 10**9}, timeout=0.5)
        ids += bw.add_work(*[quick] * 200)
        got = collect(bw, 401)
        assert got[stuck] == TIMED_OUT
        assert all(isinstance(got[i], str) for i in ids)


@pytest.mark.timeout(60)
def test_stray_non_daemon_thread_does_not_hold_up_shutdown(start_method: str) -> None:
    bw = BossWorkerAsync(handlers.start_stray_thread, worker_count=2, start_method=start_method)
    try:
        bw.add_work(*range(4))
        assert len(collect(bw, 4)) == 4
        procs = [psutil.Process(bw.boss_pid), *workers_of(bw)]
        start = time.monotonic()
        bw.shut_down()
        assert time.monotonic() - start < 5
        assert not wait_gone(procs, 5)
    finally:
        bw.shut_down(force=True)


# == 3. recycling ====================================================================


@pytest.mark.timeout(60)
def test_max_jobs_per_worker_recycles_workers(
    start_method: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BW_MARKER_DIR", str(tmp_path))
    limit = 3
    jobs = 30 if start_method == "fork" else 12
    with BossWorkerAsync(
        handlers.pid_of_worker,
        init_handler=handlers.write_marker_init,
        exit_handler=handlers.write_marker_exit,
        worker_count=2,
        max_jobs_per_worker=limit,
        start_method=start_method,
    ) as bw:
        ids = bw.add_work(*range(jobs))
        got = collect(bw, jobs)
        assert set(got) == set(ids)  # every job got a result...
        assert not any(isinstance(v, dict) for v in got.values())  # ...a real one
        per_pid = collections.Counter(got.values())
        assert max(per_pid.values()) <= limit
        assert len(per_pid) >= math.ceil(jobs / limit)
        # A worker that did its quota leaves through its exit_handler now,
        # not at shut-down.
        retired = {pid for pid, n in per_pid.items() if n == limit}
        assert retired
        wait_until(lambda: retired <= marker_pids(tmp_path, "exit"), 20, "exit_handler of retired workers")
        # They are gone (the last may still be on its way out) and replaced.
        wait_until(lambda: not retired & worker_pids(bw), 20, "the retired workers exiting")
        assert not retired & wait_for_workers(bw, 2)
        assert bw.stats().workers_started >= len(per_pid)
    inits, exits = marker_pids(tmp_path, "init"), marker_pids(tmp_path, "exit")
    assert set(per_pid) <= inits
    assert inits == exits


# == 4. main dies =====================================================================


@pytest.mark.timeout(90)
def test_main_sigkilled_leaves_no_orphans(start_method: str, tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "parent_dies.py"), start_method],
            stdout=subprocess.PIPE,
            stderr=err,
        )
    procs: list[psutil.Process] = []
    try:
        info = LineReader(proc, stderr_path).line(60)
        assert info["main"] == proc.pid
        assert len(info["workers"]) == 2
        pids = {info["boss"], *info["workers"], *info["descendants"]}
        procs = [psutil.Process(pid) for pid in pids]
        start = time.monotonic()
        proc.kill()
        proc.wait(10)
        alive = wait_gone(procs, 10)
        elapsed = time.monotonic() - start
        assert not alive, f"orphans: {[(p.pid, p.name(), p.cmdline()) for p in alive]}"
        assert elapsed < 5, f"the pool took {elapsed:.2f} s to notice main's death"
        # The big jobs still queued were in /dev/shm: the Boss removed them.
        assert not segments_of(proc.pid), "shared-memory segments outlived the pool"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        kill_quietly(procs)
        for path in segments_of(proc.pid):
            with contextlib.suppress(OSError):
                os.unlink(path)
        assert proc.stdout is not None
        proc.stdout.close()


# == 5. the Boss dies ==================================================================


@pytest.mark.timeout(60)
def test_boss_sigkilled_main_raises_boss_died(start_method: str) -> None:
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=2, start_method=start_method)
    workers: list[psutil.Process] = []
    try:
        bw.add_work(*({"seconds": 30} for _ in range(4)))
        wait_until(lambda: bw.stats().running == 2, 20, "both workers busy")
        workers = workers_of(bw)
        assert len(workers) == 2
        boss = psutil.Process(bw.boss_pid)

        # A thread already blocked in get_result() must wake up too.
        waiting = threading.Event()
        outcome: list[BaseException | Any] = []

        def blocked_reader() -> None:
            waiting.set()
            try:
                outcome.append(bw.get_result())
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

        reader = threading.Thread(target=blocked_reader, daemon=True)
        reader.start()
        assert waiting.wait(10)

        boss.kill()
        start = time.monotonic()
        reader.join(10)
        assert not reader.is_alive(), "a blocked get_result() hangs after the Boss died"
        assert isinstance(outcome[0], BossDiedError), outcome
        with pytest.raises(BossDiedError):
            bw.get_result()
        with pytest.raises(BossDiedError):
            bw.get_result(timeout=30)
        assert time.monotonic() - start < 5
        assert bw.pending() == 4
        with pytest.raises(BossDiedError):
            bw.add_work({"seconds": 0})
        with pytest.raises(BossDiedError):
            bw.stats()
        assert bw.pending() == 4  # the failed add_work counted nothing
        assert time.monotonic() - start < 5
        assert not wait_gone(workers, 5), "the workers outlived their Boss"

        start = time.monotonic()
        with pytest.raises(BossDiedError, match="4 result"):
            bw.shut_down()
        assert time.monotonic() - start < 5
        bw.shut_down()  # harmless afterwards
        assert is_gone(boss)
    finally:
        bw.shut_down(force=True)
        kill_quietly(workers)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("pending", [0, 2])
def test_shut_down_right_after_boss_death_does_not_hang(pending: int) -> None:
    """shut_down() as the first call after the Boss died: it raises
    BossDiedError if results were lost, and returns quietly if none were."""
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=2)
    workers = workers_of(bw)
    try:
        if pending:
            bw.add_work(*({"seconds": 30} for _ in range(pending)))
            wait_until(lambda: bw.stats().running == pending, 20, "the jobs running")
        boss = psutil.Process(bw.boss_pid)
        boss.kill()
        assert not wait_gone([boss], 5)
        start = time.monotonic()
        if pending:
            with pytest.raises(BossDiedError):
                bw.shut_down()
        else:
            bw.shut_down()
        assert time.monotonic() - start < 5
        assert bw.pending() == pending
        assert not wait_gone(workers, 5)
    finally:
        bw.shut_down(force=True)
        kill_quietly(workers)


@needs_shm
@pytest.mark.timeout(60)
def test_boss_death_leaves_no_shared_memory_segments() -> None:
    """Big jobs still queued and big results not yet retrieved live in
    /dev/shm.  Once shut_down() has dealt with the dead Boss, only the
    segments of results main had already received are left, and those go
    when they are retrieved."""
    mib = 1024 * 1024
    bw = BossWorkerAsync(handlers.size_probe, worker_count=1)
    workers = workers_of(bw)
    try:
        bw.add_work(("make", mib), ("make", mib))  # two big results...
        bw.add_work(("sleep", 30))
        bw.add_work(*(("len", os.urandom(mib)) for _ in range(3)))  # ...and three big jobs waiting
        # The Boss answers STATS after the results it already forwarded, so
        # once this returns main holds both big results.
        wait_until(lambda: (s := bw.stats()).completed == 2 and s.running == 1, 20, "the big results")
        assert len(segments_of()) >= 5  # the payloads really are in segments
        os.kill(bw.boss_pid, signal.SIGKILL)
        with pytest.raises(BossDiedError, match="6 result"):
            bw.shut_down()
        assert not wait_gone(workers, 5)
        assert len(segments_of()) == 2  # the job segments are gone
        assert bw.get_result(timeout=5) == b"\xab" * mib
        assert bw.get_result(timeout=5) == b"\xab" * mib
        assert segments_of() == []
        with pytest.raises(BossDiedError):
            bw.get_result()
        assert bw.pending() == 4
    finally:
        bw.shut_down(force=True)
        kill_quietly(workers)
        for path in segments_of():
            with contextlib.suppress(OSError):
                os.unlink(path)


@pytest.mark.timeout(60)
def test_non_blocking_get_result_after_boss_death_raises() -> None:
    """A polling loop (``while bw.pending(): bw.get_result_nb() ...``) must
    not spin forever on a dead Boss: get_result_nb raises BossDiedError."""
    bw = BossWorkerAsync(handlers.sleep_for, worker_count=1)
    workers = workers_of(bw)
    try:
        bw.add_work({"seconds": 30})
        wait_until(lambda: bw.stats().running == 1, 20, "the job running")
        os.kill(bw.boss_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        with pytest.raises(BossDiedError):
            while bw.pending():
                assert time.monotonic() < deadline, "get_result_nb() kept returning None"
                assert bw.get_result_nb() is None
                time.sleep(0.01)  # the program doing other work between polls
        assert bw.pending() == 1
    finally:
        bw.shut_down(force=True)
        kill_quietly(workers)


# == 6. Ctrl-C ===========================================================================


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and not is_gone(p):
                members.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return members


@pytest.mark.timeout(90)
def test_ctrl_c_to_the_process_group(start_method: str, tmp_path: Path) -> None:
    stderr_path = tmp_path / "stderr"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "ctrl_c.py"), start_method],
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,  # its own process group, as a terminal job
        )
    pgid = proc.pid
    try:
        out = LineReader(proc, stderr_path)
        ready = out.line(60)
        assert ready["event"] == "ready"
        procs = [psutil.Process(pid) for pid in [ready["boss"], *ready["workers"]]]
        os.killpg(pgid, signal.SIGINT)

        survived = out.line(30)
        assert survived["event"] == "survived"
        # The SIGINT came while the jobs ran, and they still finished normally.
        assert survived["pending_at_interrupt"] > 0
        assert [r.get("slept") for r in survived["results"]] == [3, 3], survived["results"]
        assert survived["workers_after"] == survived["workers_before"]
        assert survived["workers_started"] == 2
        assert survived["boss_alive"]

        again = out.line(30)
        assert again["event"] == "again"
        procs += [psutil.Process(pid) for pid in again["workers"]]
        start = time.monotonic()
        os.killpg(pgid, signal.SIGINT)
        stopped = out.line(30)
        assert stopped["event"] == "stopped"
        assert stopped["alive"] == []  # the with block's force-stop was complete
        assert proc.wait(10) == 0
        assert time.monotonic() - start < 5
        assert not wait_gone(procs, 5)
        wait_until(lambda: not _group_members(pgid), 5, "every process of the group exiting")
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


# == 7. bad handlers, odd sizes ===========================================================


def test_base_exceptions_in_a_handler_are_error_results(start_method: str) -> None:
    with BossWorkerAsync(handlers.raise_base, worker_count=1, start_method=start_method) as bw:
        before = worker_pids(bw)
        kinds = ["SystemExit", "KeyboardInterrupt", "GeneratorExit"]
        ids = bw.add_work(*({"kind": kind} for kind in kinds))
        got = collect(bw, 3)
        for job_id, kind in zip(ids, kinds, strict=True):
            text = got[job_id]["ERROR"]
            assert text.startswith(kind), text
            assert "Traceback (most recent call last)" in text
        assert worker_pids(bw) == before  # the worker lives on
        stats = bw.stats()
        assert (stats.workers_started, stats.failed) == (1, 3)


def _picky_result_handler(result: Any) -> Any:
    if result == 2:
        raise ValueError("result handler says no")
    return result


def test_result_handler_exception_propagates_and_counts_as_retrieved() -> None:
    with BossWorkerAsync(handlers.echo, result_handler=_picky_result_handler, worker_count=2) as bw:
        bw.add_work(1, 2, 3)
        seen, errors = [], 0
        while bw.pending():
            before = bw.pending()
            try:
                seen.append(bw.get_result(timeout=30))
            except ValueError as exc:
                assert "result handler says no" in str(exc)
                errors += 1
            assert bw.pending() == before - 1
        assert sorted(seen) == [1, 3]
        assert errors == 1


@pytest.mark.timeout(90)
def test_zero_byte_and_many_mib_jobs_and_results(start_method: str) -> None:
    big = os.urandom(40 * 1024 * 1024)
    jobs = [
        ("echo", b""),
        ("echo", None),
        ("make", 0),
        ("make", 48 * 1024 * 1024),  # small job, big result
        ("len", big),  # big job, small result
        ("echo", big),  # big both ways
        *(("echo", i) for i in range(50)),  # small ones flowing past the big ones
    ]
    with BossWorkerAsync(handlers.size_probe, worker_count=2, start_method=start_method) as bw:
        ids = bw.add_work(*jobs)
        got = collect(bw, len(jobs), timeout=60)
    assert got[ids[0]] == b""
    assert got[ids[1]] == {}  # None becomes {}
    assert got[ids[2]] == b""
    assert got[ids[3]] == b"\xab" * (48 * 1024 * 1024)
    assert got[ids[4]] == len(big)
    assert got[ids[5]] == big
    assert [got[i] for i in ids[6:]] == list(range(50))


def test_handler_writing_to_stdout_and_stderr_does_not_corrupt(
    start_method: str, capfd: pytest.CaptureFixture[str]
) -> None:
    with BossWorkerAsync(handlers.chatty, worker_count=2, start_method=start_method) as bw:
        ids = bw.add_work(*range(40))
        got = collect(bw, 40)
    assert [got[i] for i in ids] == [{"ok": i} for i in range(40)]
    out, err = capfd.readouterr()
    assert "noise on stdout" in out and "raw bytes on fd 1" in out
    assert "noise on stderr" in err


# == 8. threads =============================================================================


@pytest.mark.timeout(90)
def test_threads_adding_and_collecting_at_once() -> None:
    adders, per_adder, collectors = 4, 500, 2
    total = adders * per_adder
    added: dict[int, Any] = {}
    collected: list[tuple[int, Any]] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Event()
    done = threading.Event()

    with BossWorkerAsync(handlers.echo, worker_count=3) as bw:

        def adder(n: int) -> None:
            try:
                go.wait(10)
                for i in range(per_adder):
                    job = (n, i)
                    # Single jobs and small batches, mixed.
                    if i % 5 == 0:
                        batch = [(n, i, k) for k in range(3)]
                        ids = bw.add_work(*batch)
                        pairs = zip(ids, batch, strict=True)
                    else:
                        pairs = zip(bw.add_work(job), [job], strict=True)
                    with lock:
                        for job_id, value in pairs:
                            assert job_id not in added
                            added[job_id] = value
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)

        def collector() -> None:
            try:
                go.wait(10)
                deadline = time.monotonic() + 60
                while not done.is_set():
                    assert time.monotonic() < deadline, "the collectors ran out of time"
                    item = bw.get_result(timeout=0.2, with_id=True)
                    if item is None:
                        continue
                    with lock:
                        collected.append(item)
                        if len(collected) == expected_total():
                            done.set()
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                failures.append(exc)
                done.set()

        def expected_total() -> int:
            return total + (per_adder // 5) * 2 * adders  # the batches add 3 jobs, not 1

        threads = [threading.Thread(target=adder, args=(n,)) for n in range(adders)]
        threads += [threading.Thread(target=collector) for _ in range(collectors)]
        threads += [threading.Thread(target=lambda: [bw.stats() for _ in range(20)])]  # stats meanwhile
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(80)
        assert not any(t.is_alive() for t in threads), "a thread hangs"
        assert not failures, failures
        assert bw.pending() == 0

    counts = collections.Counter(job_id for job_id, _ in collected)
    assert len(added) == expected_total()
    assert set(counts) == set(added)
    assert max(counts.values()) == 1, "a job came back twice"
    assert all(value == added[job_id] for job_id, value in collected)


class _ShortExitLimit(LocalBackend):
    """The local Boss, with half a second for a worker told to leave."""

    def start(self, config: BossConfig) -> tuple[socket.socket, BossHandle]:
        return super().start(dataclasses.replace(config, exit_limit=0.5))


@pytest.mark.timeout(60)
def test_graceful_shutdown_does_not_wait_forever_for_a_hung_exit_handler() -> None:
    """A graceful stop waits for exit handlers, but not forever: a worker still
    there BossConfig.exit_limit after being told to leave is killed (the limit
    is 30 s; this test's backend gives the Boss a smaller one)."""
    bw = BossWorkerAsync(
        handlers.echo,
        exit_handler=handlers.hang_forever,
        worker_count=2,
        start_method="fork",
        backend=_ShortExitLimit(),
    )
    workers = workers_of(bw)
    bw.add_work(1, 2, 3)
    start = time.monotonic()
    bw.shut_down()
    assert time.monotonic() - start < 10
    assert sorted(bw.results()) == [1, 2, 3]  # nothing lost
    assert not wait_gone(workers, 5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("round_", range(3))
def test_a_stopped_boss_bounds_what_it_can(round_: int) -> None:
    """A SIGSTOPped Boss is alive and silent (README, "Never hangs"): a
    bounded get_result returns None at its bound, and a forced stop ends the
    Boss and its workers anyway (SIGKILL reaches a stopped process)."""
    bw = BossWorkerAsync(handlers.echo, worker_count=2)
    boss = psutil.Process(bw.boss_pid)
    workers = workers_of(bw)
    assert len(workers) == 2
    os.kill(bw.boss_pid, signal.SIGSTOP)
    wait_until(lambda: boss.status() == psutil.STATUS_STOPPED, what="the Boss to stop")
    bw.add_work(*range(5))  # the socket buffers them: add_work does not wait on the Boss
    started = time.monotonic()
    assert bw.get_result(timeout=0.3) is None
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    bw.shut_down(force=True)
    assert time.monotonic() - started < 10
    assert wait_gone([boss, *workers], timeout=10) == []
    assert bw.pending() == 0

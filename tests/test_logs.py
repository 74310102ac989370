"""Worker log forwarding (issue 18): logging records made in workers (tasks,
handlers, initializers) and the Boss's own warnings reach main's logging,
once each, under the logger name they were made with, with ``worker_pid``
and ``job_id`` attributes; under fork, spawn and forkserver.

Records are kept by a handler on main's root logger (not pytest's caplog:
its level would change the level the children are given)."""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import executor_tasks as tasks
from bossworker import BossWorkerAsync, Executor, WorkerDiedError

METHODS = [m for m in ("fork", "spawn", "forkserver") if m in multiprocessing.get_all_start_methods()]


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def named(self, prefix: str) -> list[logging.LogRecord]:
        return [r for r in self.records if r.name.startswith(prefix)]


@pytest.fixture
def keep() -> Iterator[Keep]:
    """Main's root logger at INFO with a keeping handler (restored after)."""
    root = logging.getLogger()
    level = root.level
    handler = Keep()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_executor_task_records_reach_main_once_with_pid_and_job(method: str, keep: Keep) -> None:
    with Executor(2, start_method=method, initializer=tasks.log_init) as ex:
        fs = [ex.submit(tasks.log_and_return, f"m{i}", i) for i in range(10)]
        assert [f.result(timeout=60) for f in fs] == list(range(10))
        job_ids = {f._job_id for f in fs}  # type: ignore[attr-defined]
        dying = ex.submit(tasks.log_then_exit, "bye")
        assert isinstance(dying.exception(timeout=60), WorkerDiedError)
    mine = keep.named("executor_tasks")
    infos = [r for r in mine if r.name == "executor_tasks" and r.levelname == "INFO"]
    warnings = [r for r in mine if r.name == "executor_tasks" and r.levelname == "WARNING"]
    # Exactly once each (under fork the workers inherited this very handler).
    assert sorted(r.getMessage() for r in infos) == sorted(f"info: m{i}" for i in range(10))
    assert sorted(r.getMessage() for r in warnings) == sorted(f"warning: m{i}" for i in range(10))
    for r in infos + warnings:
        assert r.worker_pid != os.getpid() and r.job_id in job_ids  # type: ignore[attr-defined]
    # A record made just before the worker died is not lost.
    [last] = keep.named("executor_tasks.dying")
    assert last.getMessage() == "last words: bye" and last.job_id == dying._job_id  # type: ignore[attr-defined]
    # The initializer's records: outside a job.
    inits = keep.named("executor_tasks.init")
    assert len(inits) >= 2 and all(r.job_id is None for r in inits)  # type: ignore[attr-defined]
    # The Boss's own warning about the death, handled here under its name.
    died = [r for r in keep.named("bossworker") if "died" in r.getMessage() and r.levelname == "WARNING"]
    assert len(died) == 1 and died[0].worker_pid != os.getpid()  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", METHODS)
def test_pool_handler_and_exit_handler_records_survive_recycling(method: str, keep: Keep) -> None:
    rounds = 20
    with BossWorkerAsync(
        tasks.log_job,
        exit_handler=tasks.log_exit,
        worker_count=2,
        start_method=method,
        max_jobs_per_worker=1,  # every worker leaves after one job: its exit record must still come
    ) as bw:
        ids = bw.add_work(*({"n": n} for n in range(rounds)))
        outcomes = {o.job_id: o for o in bw.outcomes()}
    jobs = keep.named("executor_tasks.pool")
    assert sorted(r.getMessage() for r in jobs) == sorted(f"job {n}" for n in range(rounds))
    for r in jobs:
        job_id = r.job_id  # type: ignore[attr-defined]
        assert job_id in ids and outcomes[job_id].value == r.worker_pid  # type: ignore[attr-defined]
    exits = keep.named("executor_tasks.exit")
    # One per worker that ran a job (each left after it), none twice.
    assert len(exits) == len({r.worker_pid for r in exits}) >= rounds  # type: ignore[attr-defined]


@pytest.mark.timeout(120)
def test_the_level_is_mains_root_level(keep: Keep) -> None:
    logging.getLogger().setLevel(logging.WARNING)
    with Executor(1, start_method="spawn") as ex:
        assert ex.submit(tasks.log_and_return, "x", 1).result(timeout=60) == 1
    assert [r.getMessage() for r in keep.named("executor_tasks")] == ["warning: x"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_forward_logs_false_leaves_the_childrens_logging_alone(method: str, keep: Keep) -> None:
    with Executor(1, start_method=method, forward_logs=False) as ex:
        assert ex.submit(tasks.log_and_return, "x", 1).result(timeout=60) == 1
        assert ex.submit(tasks.pid).result(timeout=60) != os.getpid()
    assert keep.named("executor_tasks") == []


@pytest.mark.timeout(120)
def test_a_task_logging_from_threads_does_not_tear_frames(tmp_path: Path, keep: Keep) -> None:
    """Several threads in a task log at once while its answers go out: every
    record arrives whole, and the worker is never killed for a torn frame."""
    with Executor(2, start_method="fork") as ex:
        assert list(ex.map(tasks.log_from_threads, range(20))) == [200] * 20
    assert len(keep.named("executor_tasks.threads")) == 20 * 200

"""The Dask backend on a real multi-process cluster on 127.0.0.1.

The behaviour tests run once per backend (``local``: the default Boss;
``dask``: ``DaskBackend(address)`` on a session-wide ``dask scheduler`` +
``dask worker --nworkers 2 --nthreads 1``), so both keep one contract.  The
tests after them are about Dask alone: a Dask worker killed mid-job, TLS, a
private local cluster, an existing client, a Dask Boss that dies without
cleaning up, and that ``import bossworker`` leaves Dask alone.

No test sleeps to synchronise: they wait for results or conditions, each
with a deadline.
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

if "CI" not in os.environ:  # CI installs the extra: there, a missing Dask must fail
    pytest.importorskip("distributed", reason="the 'dask' extra is not installed")

import dask_handlers
import executor_tasks
import handlers
from bossworker import BossWorkerAsync, Executor, NoPendingResultsError, ShutDownError, WorkerInitError
from bossworker.dask import DaskBackend
from bossworker.errors import WORKER_DIED_PREFIX
from dask_cluster import DaskCluster
from waiting import wait_until

TIMED_OUT = {"ERROR": "BossWorkerAsync: timed out"}

# -- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    cluster = DaskCluster(tmp_path_factory.mktemp("dask-cluster"), n_workers=2).start()
    yield cluster
    cluster.stop()


@pytest.fixture(autouse=True)
def nothing_left_on_the_cluster(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each test on the shared cluster: no plugin of ours is still
    registered, and no worker thread is still in our code."""
    yield
    if "dask_cluster" not in request.fixturenames:
        return
    cluster: DaskCluster = request.getfixturevalue("dask_cluster")
    empty: dict[str, Any] = {"plugins": [], "threads": {}}
    last: list[dict[str, Any]] = []

    def clean() -> bool:
        last[:] = [cluster.leftovers()]
        return last[0] == empty

    try:
        wait_until(clean, 15, "the pool to leave the cluster")
    except AssertionError as exc:
        raise AssertionError(f"left on the cluster: {last}") from exc


class Pools:
    """Makes pools on one backend; knows where their worker processes live."""

    def __init__(self, kind: str, cluster: DaskCluster | None) -> None:
        self.kind = kind
        self.cluster = cluster

    def __call__(self, work: Callable[[Any], Any], **kwargs: Any) -> BossWorkerAsync:
        kwargs.setdefault("worker_count", 2)
        if self.cluster is not None:
            kwargs.setdefault("backend", DaskBackend(self.cluster.address))
        return BossWorkerAsync(work, **kwargs)

    def worker_processes(self, bw: BossWorkerAsync) -> list[psutil.Process]:
        """The processes that run the pool's jobs."""
        if self.cluster is not None:
            return self.cluster.pool_children()
        return [p for p in psutil.Process(bw.boss_pid).children() if "resource_tracker" not in _cmd(p)]


@pytest.fixture(params=["local", "dask"])
def pools(request: pytest.FixtureRequest, dask_cluster: DaskCluster) -> Pools:
    # The cluster is a static dependency even for "local": a session fixture
    # must start before the per-test check for leftover processes looks.
    return Pools(str(request.param), dask_cluster if request.param == "dask" else None)


def _cmd(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


def _gone(processes: list[psutil.Process], timeout: float = 10) -> bool:
    _dead, alive = psutil.wait_procs(processes, timeout=timeout)
    return not alive


# -- the same contract on both backends ------------------------------------------------


def test_synopsis_with_result_handler_in_main(pools: Pools) -> None:
    with pools(handlers.multiply, result_handler=dask_handlers.tag_with_pid, global_timeout=5) as bw:
        bw.add_work({"a": 3, "b": 4})
        while bw.pending():
            got = bw.get_result()
    assert got == {"result": {"product": 12}, "handled_in": os.getpid()}


def test_completion_order_and_ids(pools: Pools) -> None:
    with pools(handlers.sleep_for) as bw:
        slow, fast = bw.add_work({"seconds": 1.5}, {"seconds": 0})
        first = bw.get_result(with_id=True)
        second = bw.get_result(with_id=True)
    assert first[0] == fast and second[0] == slow
    assert first[1]["slept"] == 0 and second[1]["slept"] == 1.5


def test_ids_pending_and_results(pools: Pools) -> None:
    with pools(handlers.echo) as bw:
        ids = bw.add_work(*range(40)) + bw.add_work(*range(40), timeout=5)
        assert len(set(ids)) == 80
        assert bw.pending() == 80
        got = dict(bw.results(with_id=True))
        assert bw.pending() == 0
        assert list(bw.results()) == []
    assert [got[i] for i in ids] == list(range(40)) * 2


def test_blocking_non_blocking_and_timeout(pools: Pools) -> None:
    with pools(handlers.sleep_for) as bw:
        assert bw.get_result_nb() is None
        with pytest.raises(NoPendingResultsError):
            bw.get_result()
        assert bw.get_result(timeout=0.05) is None
        bw.add_work({"seconds": 1})
        assert bw.get_result(blocking=False) is None  # still running
        start = time.monotonic()
        assert bw.get_result(timeout=0.2) is None
        assert time.monotonic() - start < 1
        assert bw.pending() == 1
        result = wait_until(bw.get_result_nb, 30, "the result, polling")
        assert result["slept"] == 1
        assert bw.pending() == 0


def test_handler_exception_is_an_error_result(pools: Pools) -> None:
    with pools(handlers.raise_value_error) as bw:
        bw.add_work({}, {})
        errors = [bw.get_result()["ERROR"] for _ in range(2)]
        bw.add_work({})  # the workers carry on
        assert "ERROR" in bw.get_result()
    for text in errors:
        assert text.startswith("ValueError: rattle\n")
        assert "Traceback (most recent call last)" in text


@pytest.mark.timeout(60)
def test_global_timeout_then_the_worker_goes_on(pools: Pools) -> None:
    with pools(handlers.sleep_for, global_timeout=0.5, worker_count=1) as bw:
        bw.add_work({"seconds": 10})
        start = time.monotonic()
        assert bw.get_result(timeout=10) == TIMED_OUT
        assert time.monotonic() - start < 5
        bw.add_work({"seconds": 0})
        assert bw.get_result(timeout=20)["slept"] == 0
        assert bw.stats().timed_out == 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("handler", "job"),
    [
        (handlers.long_c_call, {"iterations": 10**9}),  # C code: no signal is looked at
        (handlers.spin_with_alarm_blocked, {"seconds": 30}),  # SIGALRM blocked
    ],
    ids=["c-code", "alarm-blocked"],
)
def test_per_job_timeout_holds_for_stuck_code(pools: Pools, handler: Any, job: Any) -> None:
    with pools(handler) as bw:
        start = time.monotonic()
        bw.add_work(job, timeout=0.5)
        assert bw.get_result(timeout=20) == TIMED_OUT
        assert time.monotonic() - start < 8
        bw.add_work({"iterations": 1} if handler is handlers.long_c_call else {"seconds": 0})
        assert "ERROR" not in bw.get_result(timeout=30)


def test_worker_death_is_the_jobs_error(pools: Pools) -> None:
    with pools(handlers.kill_self, worker_count=1) as bw:
        bw.add_work({})
        assert bw.get_result(timeout=30) == {
            "ERROR": "BossWorkerAsync: worker died (SIGKILL) while running this job"
        }
    with pools(handlers.echo_with_pid, worker_count=1) as bw:
        bw.add_work("still serving")
        assert bw.get_result(timeout=30)[0] == "still serving"


def test_init_and_exit_handlers_once_per_worker(pools: Pools, tmp_path: Path) -> None:
    with pools(
        handlers.pid_of_worker,
        init_handler=functools.partial(dask_handlers.write_marker, str(tmp_path), "init"),
        exit_handler=functools.partial(dask_handlers.write_marker, str(tmp_path), "exit"),
    ) as bw:
        bw.add_work(*range(20))
        pids = {str(pid) for pid in bw.results()}
    inits = {p.name.split("-")[1] for p in tmp_path.glob("init-*")}
    exits = {p.name.split("-")[1] for p in tmp_path.glob("exit-*")}
    assert len(inits) == 2 and inits == exits
    assert pids <= inits


def test_init_failure_raises_worker_init_error(pools: Pools) -> None:
    with pytest.raises(WorkerInitError, match="init exploded"):
        pools(handlers.echo, init_handler=handlers.failing_init)


def test_graceful_shutdown_keeps_every_result(pools: Pools) -> None:
    bw = pools(handlers.sleep_for)
    bw.add_work(*({"seconds": 0.05} for _ in range(10)))
    boss = psutil.Process(bw.boss_pid)
    workers = pools.worker_processes(bw)
    assert len(workers) == 2
    bw.shut_down()
    assert not boss.is_running()
    assert _gone(workers)
    assert bw.pending() == 10
    assert [r["slept"] for r in bw.results()] == [0.05] * 10
    with pytest.raises(ShutDownError):
        bw.add_work({"seconds": 0})
    bw.shut_down()  # harmless


def test_forced_shutdown_is_quick_and_complete(pools: Pools) -> None:
    bw = pools(handlers.sleep_for)
    bw.add_work(*({"seconds": 30} for _ in range(4)))
    wait_until(lambda: bw.stats().running == 2, 30, "both workers in a job")
    boss = psutil.Process(bw.boss_pid)
    workers = pools.worker_processes(bw)
    assert len(workers) == 2
    start = time.monotonic()
    bw.shut_down(force=True)
    assert time.monotonic() - start < 2.5
    assert bw.pending() == 0
    assert not boss.is_running()
    assert _gone(workers, timeout=5)
    with pytest.raises(ShutDownError):
        bw.add_work({"seconds": 0})


def test_large_payloads_both_ways(pools: Pools) -> None:
    big = os.urandom(6 * 1024 * 1024)
    with pools(handlers.echo) as bw:
        bw.add_work({"data": big}, {"data": big[:1000]})
        sizes = sorted(len(bw.get_result(timeout=60)["data"]) for _ in range(2))
    assert sizes == [1000, len(big)]


def test_stats_and_recycling(pools: Pools) -> None:
    with pools(handlers.echo_with_pid, max_jobs_per_worker=3) as bw:
        bw.add_work(*range(12))
        results = list(bw.results())
        stats = bw.stats()
    assert sorted(job for job, _pid in results) == list(range(12))
    assert len({pid for _job, pid in results}) >= 4  # each worker served 3 at most
    assert (stats.added, stats.completed, stats.failed, stats.queued, stats.running) == (12, 12, 0, 0, 0)
    assert stats.workers_started >= 4


def test_closures_travel(pools: Pools) -> None:
    """Fork ships closures to local workers; cloudpickle ships them to Dask's."""
    factor = 7
    with pools(lambda job: job * factor, result_handler=lambda r: r + 1) as bw:
        bw.add_work(1, 2, 3)
        assert sorted(bw.results()) == [8, 15, 22]


def test_asyncio_front_end(pools: Pools) -> None:
    async def main() -> list[int]:
        async with pools(handlers.multiply) as bw:
            ids = await bw.aadd_work(*({"a": i, "b": 3} for i in range(10)))
            got = {i: r["product"] async for i, r in bw.aresults(with_id=True)}
        return [got[i] for i in ids]

    assert asyncio.run(main()) == [3 * i for i in range(10)]


# -- Dask only -------------------------------------------------------------------------


def test_import_bossworker_does_not_import_dask() -> None:
    code = (
        "import sys, bossworker, bossworker.dask\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('distributed', 'dask')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


@pytest.mark.timeout(90)
def test_killing_a_dask_worker_mid_job(tmp_path: Path) -> None:
    """The pool goes on, and every job gets a result (Dask reruns the one
    that was on the dead worker)."""
    cluster = DaskCluster(tmp_path, n_workers=2).start()
    try:
        with BossWorkerAsync(handlers.sleep_for, backend=DaskBackend(cluster.address)) as bw:
            ids = bw.add_work(*({"seconds": 1} for _ in range(6)))
            wait_until(lambda: bw.stats().running == 2, 30, "both workers in a job")
            victim = next(w for w in cluster.worker_processes() if w.children())
            victim.send_signal(signal.SIGKILL)
            got = {}
            for _ in ids:
                job_id, result = bw.get_result(timeout=60, with_id=True)
                got[job_id] = result
            assert sorted(got) == ids
            # Dask runs the killed worker's task again elsewhere; should it give
            # up on it instead, that one job (and only it) says its worker died.
            failed = [r["ERROR"] for r in got.values() if "ERROR" in r]
            assert len(failed) <= 1 and all(e.startswith(WORKER_DIED_PREFIX) for e in failed), failed
            assert all(r == {"slept": 1, "pid": r["pid"]} for r in got.values() if "ERROR" not in r)
            bw.add_work({"seconds": 0})
            assert bw.get_result(timeout=60)["slept"] == 0
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
def test_tls(tmp_path: Path) -> None:
    cluster = DaskCluster(tmp_path, n_workers=1, tls=True).start()
    try:
        assert cluster.address.startswith("tls://")
        backend = DaskBackend(cluster.address, security=cluster.security)
        with BossWorkerAsync(handlers.multiply, backend=backend, worker_count=1) as bw:
            bw.add_work({"a": 6, "b": 7})
            assert bw.get_result(timeout=30) == {"product": 42}
        with pytest.raises(WorkerInitError, match="could not start on the Dask cluster"):
            # No certificates: refused, and said so.
            BossWorkerAsync(handlers.echo, backend=DaskBackend(cluster.address))
    finally:
        cluster.stop()


@pytest.mark.timeout(90)
def test_private_local_cluster_on_loopback_only() -> None:
    with BossWorkerAsync(handlers.echo_with_pid, worker_count=2, backend=DaskBackend()) as bw:
        boss = psutil.Process(bw.boss_pid)
        bw.add_work(*range(10))
        assert sorted(job for job, _pid in bw.results()) == list(range(10))
        family = [boss, *boss.children(recursive=True)]
        listening = [c.laddr for p in family for c in _connections(p) if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert _gone(family)


def test_existing_client_and_its_cluster_stay(dask_cluster: DaskCluster) -> None:
    from distributed import Client

    with Client(dask_cluster.address, timeout=30) as client:
        with BossWorkerAsync(handlers.echo, backend=DaskBackend(client=client)) as bw:
            bw.add_work("via a client")
            assert bw.get_result(timeout=30) == "via a client"
        # The pool is gone; the cluster and the client are not.
        assert len(client.scheduler_info(n_workers=-1)["workers"]) == dask_cluster.n_workers
        assert client.submit(sum, [1, 2], pure=False).result(timeout=30) == 3


@pytest.mark.timeout(60)
def test_dask_boss_killed_outright_leaves_nothing_on_the_cluster(dask_cluster: DaskCluster) -> None:
    """SIGKILL gives the Dask Boss no chance to clean up: the plugin on each
    Dask worker sees its lease go and stops its children itself."""
    bw = BossWorkerAsync(handlers.sleep_for, backend=DaskBackend(dask_cluster.address))
    bw.add_work({"seconds": 30})
    children = dask_cluster.pool_children()
    assert len(children) == 2
    os.kill(bw.boss_pid, signal.SIGKILL)
    assert _gone(children, timeout=20)
    with pytest.raises(Exception, match="died"):
        bw.shut_down()


@pytest.mark.timeout(60)
def test_main_killed_leaves_nothing(dask_cluster: DaskCluster) -> None:
    code = (
        "import sys, time\n"
        "import handlers\n"
        "from bossworker import BossWorkerAsync\n"
        "from bossworker.dask import DaskBackend\n"
        f"bw = BossWorkerAsync(handlers.sleep_for, backend=DaskBackend({dask_cluster.address!r}))\n"
        "bw.add_work({'seconds': 30}, {'seconds': 30})\n"
        "while bw.stats().running < 2: time.sleep(0.01)\n"
        "print(bw.boss_pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env) as main:
        try:
            assert main.stdout is not None
            boss = psutil.Process(int(main.stdout.readline()))
            children = dask_cluster.pool_children()
            assert len(children) == 2
        finally:
            main.kill()
    assert _gone([boss, *children], timeout=10)


def _connections(p: psutil.Process) -> list[Any]:
    try:
        return list(p.net_connections(kind="inet"))
    except psutil.Error:
        return []


@pytest.mark.timeout(120)
def test_executor_on_the_dask_backend(dask_cluster: DaskCluster) -> None:
    """bossworker.Executor over Dask: the same futures; a cancel never takes a
    task back there (the Dask Boss hands every job to the scheduler at once)."""
    with Executor(2, backend=DaskBackend(dask_cluster.address)) as ex:
        assert list(ex.map(executor_tasks.square, range(10))) == [i * i for i in range(10)]
        with pytest.raises(ValueError, match="on dask"):
            ex.submit(executor_tasks.raise_value_error, "on dask").result(timeout=60)
        f = ex.submit(executor_tasks.sleep_then, 0.5, "kept")
        assert not f.cancel()
        assert f.result(timeout=60) == "kept"


_MAIN_SCRIPT = """
import sys
from bossworker import Executor
from bossworker.dask import DaskBackend

def sq(x):
    return x * x

if __name__ == "__main__":
    ex = Executor(2, backend=DaskBackend(sys.argv[1] or None))  # "": a private local cluster
    print(ex.submit(sq, 7).result(timeout=60))
    print(list(ex.map(sq, range(4))))
    print(ex.submit(lambda x: x + 1, 1).result(timeout=60))
    if sys.argv[2] == "kill":
        f = ex.submit(sq, 3)
        ex.shutdown(kill=True)
    else:
        ex.shutdown()
    print("done", flush=True)
"""


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("cluster", "stop"), [("shared", "graceful"), ("shared", "kill"), ("private", "kill")]
)
def test_executor_on_dask_runs_functions_of_the_main_script_and_stops_cleanly(
    dask_cluster: DaskCluster, tmp_path: Path, cluster: str, stop: str
) -> None:
    """Functions defined in the main script travel by value (the Dask workers
    cannot import it); a forced stop leaks nothing (it printed
    ``resource_tracker: ... leaked semaphore objects``)."""
    script = tmp_path / "main_script.py"
    script.write_text(_MAIN_SCRIPT)
    run = subprocess.run(
        [sys.executable, str(script), dask_cluster.address if cluster == "shared" else "", stop],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["49", "[0, 1, 4, 9]", "2", "done"], run.stderr
    assert "leaked" not in run.stderr, run.stderr

"""Handlers that travel by value under spawn: the cloudpickle path."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap

import pytest

import handlers
from bossworker.byvalue import ByValue, by_value, needs_by_value


def test_importable_functions_travel_by_reference() -> None:
    assert not needs_by_value(handlers.echo)
    assert by_value(handlers.echo) is handlers.echo


def test_lambdas_and_closures_travel_by_value() -> None:
    k = 3

    def times_k(x: int) -> int:
        return x * k

    for fn in (lambda x: x + 1, times_k):
        assert needs_by_value(fn)
        wrapped = by_value(fn)
        assert isinstance(wrapped, ByValue)
        again = pickle.loads(pickle.dumps(wrapped))
        assert again(2) == fn(2)
        # and again: a Boss passes what it received on to its workers
        assert pickle.loads(pickle.dumps(again))(5) == fn(5)


def _run_c(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code``: main then has no file a spawned child can import."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_SCRIPT = """
    import sys
    {prelude}
    from bossworker import BossWorkerAsync, SerializationError

    OFFSET = 10

    def work(job):
        return job + OFFSET

    try:
        with BossWorkerAsync(work, init_handler=lambda: None, worker_count=2, start_method="spawn") as bw:
            bw.add_work(1, 2, 3)
            print(sorted(bw.results()))
    except SerializationError as exc:
        print("SerializationError:", exc)
"""


@pytest.mark.timeout(90)
def test_handlers_from_a_dash_c_script_work_under_spawn() -> None:
    """Without a file, a spawned child cannot import ``__main__.work``;
    with cloudpickle installed, the handlers travel by value."""
    proc = _run_c(_SCRIPT.format(prelude=""))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[11, 12, 13]", proc.stdout + proc.stderr


@pytest.mark.timeout(90)
def test_without_cloudpickle_the_error_names_the_extra() -> None:
    # Setting a sys.modules entry to None makes that import fail: the honest
    # way to be without a package that is installed.
    proc = _run_c(_SCRIPT.format(prelude="sys.modules['cloudpickle'] = None"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip()
    assert out.startswith("SerializationError:"), out + proc.stderr
    assert "bossworker[cloudpickle]" in out
    assert "work" in out


@pytest.mark.timeout(90)
def test_a_closure_over_a_queue_travels_by_value_under_spawn() -> None:
    """cloudpickle with multiprocessing's reducers: the Queue's pipes travel
    as they do in a Process's arguments, through the Boss to each worker."""
    import multiprocessing

    from bossworker import BossWorkerAsync

    queue = multiprocessing.get_context("spawn").Queue()
    with BossWorkerAsync(lambda job: queue.put(job * 2), worker_count=2, start_method="spawn") as bw:
        bw.add_work(*range(5))
        assert len(list(bw.results())) == 5
        assert sorted(queue.get(timeout=20) for _ in range(5)) == [0, 2, 4, 6, 8]
    queue.close()
    queue.join_thread()

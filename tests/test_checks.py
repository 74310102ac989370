"""The argument rules (bossworker.checks), alone and as the entry points apply them."""

from __future__ import annotations

import math

import pytest

import handlers
from bossworker import BossWorkerAsync, Executor, InvalidArgumentError, checks
from bossworker.protocol import RetryOn

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    ("value", "minimum", "message"),
    [
        (0, 1, "n must be greater than 0, not 0"),
        (-5, 0, "n must be at least 0, not -5"),
        (4095, 4096, "n must be at least 4096, not 4095"),
        (True, 1, "n must be an int, not bool"),
        (2.0, 1, "n must be an int, not float"),
        ("3", 1, "n must be an int, not str"),
    ],
)
def test_whole_number_refusals(value: object, minimum: int, message: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        checks.whole_number("n", value, minimum)
    assert str(info.value) == message


def test_whole_number_passes_ints_at_or_above_the_minimum() -> None:
    assert checks.whole_number("n", 1) == 1
    assert checks.whole_number("n", 0, minimum=0) == 0


@pytest.mark.parametrize(("value", "expected"), [(None, 0.0), (0, 0.0), (2, 2.0), (0.5, 0.5), (1e9, 1e9)])
def test_seconds_accepted(value: object, expected: float) -> None:
    got = checks.seconds("t", value)
    assert got == expected and type(got) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (-1, "t must be a number of seconds >= 0"),
        (math.nan, "t must be a number of seconds >= 0"),
        (math.inf, "t must be at most 1e+09 seconds"),
        (1e9 + 1, "t must be at most 1e+09 seconds"),
        (True, "t must be a number of seconds, not bool"),
        ("1", "t must be a number of seconds, not str"),
    ],
)
def test_seconds_refused(value: object, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("+", r"\+")):
        checks.seconds("t", value)


def test_retries_and_retry_on() -> None:
    assert checks.retries(0) == 0 and checks.retries(checks.MAX_RETRIES) == checks.MAX_RETRIES
    with pytest.raises(InvalidArgumentError, match="retries must be at most 255"):
        checks.retries(256)
    assert checks.retry_on(("died", "memory")) == RetryOn.DIED | RetryOn.MEMORY
    assert checks.retry_on(()) == 0
    with pytest.raises(InvalidArgumentError, match="retry_on must be a tuple"):
        checks.retry_on("died")
    with pytest.raises(InvalidArgumentError, match="retry_on names 'dead'"):
        checks.retry_on(("dead",))


def test_start_method_and_progress() -> None:
    assert checks.start_method(None) is None
    assert checks.start_method("spawn") == "spawn"
    with pytest.raises(InvalidArgumentError, match="start_method must be one of"):
        checks.start_method("sapwn")
    checks.progress(True)
    checks.progress({"desc": "x"})
    with pytest.raises(InvalidArgumentError, match="progress must be True, False or a dict"):
        checks.progress("yes")


def test_callable_arg() -> None:
    checks.callable_arg("h", None)
    checks.callable_arg("h", len, required=True)
    with pytest.raises(InvalidArgumentError, match="h must be callable, not NoneType"):
        checks.callable_arg("h", None, required=True)
    with pytest.raises(InvalidArgumentError, match="h must be callable, not int"):
        checks.callable_arg("h", 3)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: BossWorkerAsync(handlers.echo, worker_count=0),
            "worker_count must be greater than 0, not 0",
        ),
        (lambda: Executor(max_workers=0), "max_workers must be greater than 0, not 0"),
        (lambda: BossWorkerAsync(handlers.echo, global_timeout=1e10), "global_timeout must be at most 1e+09"),
        (lambda: Executor(timeout=1e10), "timeout must be at most 1e+09"),
        (lambda: BossWorkerAsync(handlers.echo, start_method="sapwn"), "start_method must be one of"),  # type: ignore[arg-type]
        (lambda: Executor(start_method="sapwn"), "start_method must be one of"),
        (lambda: BossWorkerAsync(handlers.echo, max_worker_memory="1KiB"), "must be at least 16 MiB"),
        (lambda: Executor(max_workers=1, max_worker_memory="1KiB"), "must be at least 16 MiB"),
    ],
)
def test_the_pool_and_the_executor_refuse_alike(make: object, message: str) -> None:
    """Both facades refuse a bad argument before starting anything, with the same text."""
    assert callable(make)
    with pytest.raises(InvalidArgumentError, match=message.replace("+", r"\+")):
        make()

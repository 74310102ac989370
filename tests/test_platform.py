"""Platform defaults: the start method ``start_method=None`` picks."""

from __future__ import annotations

import sys

import pytest

import handlers
from bossworker import BossWorkerAsync
from bossworker.backend import default_start_method


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="asserts the Linux default on Linux")
def test_linux_defaults_to_fork_for_real() -> None:
    assert default_start_method() == "fork"
    with BossWorkerAsync(handlers.echo, worker_count=1) as bw:
        assert bw.start_method == "fork"
        bw.add_work(1)
        assert bw.get_result() == 1


@pytest.mark.parametrize(
    ("platform", "expected"),
    [("darwin", "spawn"), ("win32", "spawn"), ("cygwin", "spawn"), ("linux", "fork"), ("freebsd14", "fork")],
)
def test_default_per_platform(platform: str, expected: str) -> None:
    """The platform's name is faked here: we cannot boot macOS or Windows on
    this machine.  The answer for a POSIX name also depends on this machine
    offering ``fork``, which every POSIX CPython does."""
    assert default_start_method(platform) == expected

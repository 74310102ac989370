from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator

import psutil
import pytest

# A shell starts a background job (`scripts/test &`, a CI runner without job
# control) with SIGINT ignored, and an ignored signal stays ignored across
# exec: every CLI the tests start would then ignore the Ctrl-C the tests send
# it. A handled signal is reset to its default at exec, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

START_METHODS = [m for m in ("fork", "spawn") if m in multiprocessing.get_all_start_methods()]


@pytest.fixture(params=START_METHODS)
def start_method(request: pytest.FixtureRequest) -> str:
    """Run the test once per start method."""
    return str(request.param)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Every test must leave no process of ours behind."""
    me = psutil.Process(os.getpid())
    before = {p.pid for p in me.children(recursive=True)}
    yield
    left = [p for p in me.children(recursive=True) if p.pid not in before and not _is_mp_helper(p)]
    # Give processes already told to exit a moment to be reaped.
    _gone, alive = psutil.wait_procs(left, timeout=5)
    assert not alive, f"processes left behind: {[(p.pid, p.name()) for p in alive]}"


def _is_mp_helper(p: psutil.Process) -> bool:
    """multiprocessing's own long-lived helpers: the resource tracker and the
    fork server (which outlive every pool by design)."""
    try:
        cmdline = " ".join(p.cmdline())
        return "resource_tracker" in cmdline or "forkserver import main" in cmdline
    except psutil.Error:
        return False

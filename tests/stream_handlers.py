"""Handlers for tests/test_streams.py (importable by spawned workers)."""

from __future__ import annotations

import time


def jitter(x: int) -> int:
    """``x``, after 0 to 2 ms, so answers come back out of input order."""
    time.sleep((x * 7919 % 3) / 1000)
    return x


def double(x: int) -> int:
    return 2 * x


def fail_on_odd(x: int) -> int:
    if x % 2:
        raise ValueError(f"odd: {x}")
    return x


def nap(x: int) -> int:
    """``x``, after 20 ms."""
    time.sleep(0.02)
    return x

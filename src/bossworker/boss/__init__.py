"""The Boss: the process between main and the workers.

* :mod:`.core` -- ``BossCore``, sans-IO: everything a Boss says to main
  (frames from main, phases, counters, retries, STATS, READY / INIT_FAILED,
  BYE), and the ``Fleet`` seam to where the workers live;
* :mod:`.link` -- ``WorkerLink``, sans-IO: what a supervisor says to one
  worker and hears back (handshake, head matching, deadline and grace,
  pipelining depth, the answer for a death);
* :mod:`.local` -- ``LocalFleet``: worker processes on this machine;
* :mod:`.main` -- the local Boss process: the selectors loop that drives
  core and fleet, and ``run_boss``, its body.

Imports go up this list: ``main`` -> ``local`` -> ``link`` and ``core``;
``core`` and ``link`` do no I/O and import nothing that does.  This
``__init__`` imports none of them, so that ``bossworker.boss.core`` can be
used (by another Boss, by tests) without loading the local Boss;
``bossworker.boss.run_boss`` and ``BossConfig`` are still found here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["BossConfig", "run_boss"]


def __getattr__(name: str) -> Any:
    if name == "run_boss":
        from .main import run_boss

        return run_boss
    if name == "BossConfig":
        from ..config import BossConfig

        return BossConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

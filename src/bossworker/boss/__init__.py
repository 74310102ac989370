"""The Boss: the process between main and the workers.

* :mod:`.core` -- ``BossCore``, sans-IO: everything a Boss says to main
  (frames from main, phases, counters, retries, STATS, READY / INIT_FAILED,
  BYE), and the ``Fleet`` seam to where the workers live;
* :mod:`.link` -- ``WorkerLink``, sans-IO: what a supervisor says to one
  worker and hears back (handshake, head matching, deadline and grace,
  pipelining depth, the answer for a death);
* :mod:`.local` -- ``LocalFleet``: worker processes on this machine;
* :mod:`.main` -- the local Boss process: the selectors loop that drives
  core and fleet, and :func:`run_boss`, its body.

Imports go down this list's reverse: ``main`` -> ``local`` -> ``link`` and
``core``; ``core`` and ``link`` import nothing that does I/O.
"""

from __future__ import annotations

from ..config import BossConfig
from .main import run_boss

__all__ = ["BossConfig", "run_boss"]

"""The Dask Boss process: ``python -m bossworker.dask.boss`` (see :mod:`bossworker.dask`).

Who talks to whom::

   main process        Dask Boss process                  Dask worker process       child
  +-------------+     +----------------------+  Dask    +----------------------+  +------------+
  | client      | <-> | DaskBoss (this file) |          | PoolPlugin (plugin.py)|  | run_worker |
  | (unchanged) |     |  BossCore (boss/core)| <------> |  slot 1 -- socket -- | -| (child.py) |
  +-------------+     |  DaskFleet (fleet.py)|  tasks   |  slot N -- socket -- | -| ...        |
     socketpair       +----------------------+          +----------------------+  +------------+

Main speaks the frame protocol to the Dask Boss exactly as it does to the
local Boss, because both Bosses drive the same sans-IO
:class:`~bossworker.boss.core.BossCore`: it holds what a Boss says to main
(the frames from main, the counters, the STATS body, READY / INIT_FAILED,
the phases from drain to BYE).  Where the workers live (a Dask cluster:
batching submits, the lease, the plugin on every Dask worker) is the
:class:`~bossworker.dask.fleet.DaskFleet`, the core's fleet.  This file is
only the asyncio driver: it feeds the core main's frames, sends main what
the core has to say, moves the core on after every event (:meth:`DaskBoss._turn`),
and holds the forced stop and the main-death check.  The Dask Boss never
unpickles a job or a result, like the local Boss.

Ending: after SHUTDOWN, the core waits for every answer, the fleet closes
gracefully (the plugins' teardown sends SHUTDOWN to each child, which runs
the exit handler) and the core says BYE.  After SIGTERM (a forced stop) or
main's death the fleet closes by force (tasks cancelled, children killed)
and the Dask Boss exits within a second.  Should the Dask Boss die without
cleaning up (SIGKILL), each plugin notices that the Dask Boss's *lease* task
is gone from the scheduler, kills its children and unregisters itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing.util
import os
import pickle
import signal
import socket
import traceback
import uuid
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from ..boss.core import PARENT_CHECK_INTERVAL, BossCore, main_gone
from ..payload import Segments
from ..process import exit_now, ignore_interrupts
from ..protocol import Decoder, recv_frames
from .launch import DaskBossOptions, read_boot

if TYPE_CHECKING:
    from .fleet import DaskFleet

__all__ = ["DaskBoss", "main", "run_dask_boss"]

log = logging.getLogger("bossworker")

# A forced stop must be over before main's patience (1 s) runs out.
FORCED_STOP_BUDGET = 0.7


class DaskBoss:
    """The Dask Boss's event loop (asyncio; Dask's client lives in it too):
    main's socket, the core and the fleet.  Construct it inside the running loop."""

    def __init__(self, main: socket.socket, options: DaskBossOptions) -> None:
        # Imported here, not at the top: the boot set the import path that
        # ``distributed`` may only be found on (see main()).
        from .fleet import DaskFleet

        self.main = main
        self.options = options
        self.name = f"bossworker-{uuid.uuid4().hex[:12]}"
        self.main.setblocking(False)
        self.main_in = Decoder(options.read_size)
        self.writing = False  # main's socket is watched for room to write
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.Event()  # set when run() should return
        self.background: set[asyncio.Task[Any]] = set()
        self.core = BossCore(options.worker_count)
        self.fleet: DaskFleet = DaskFleet(options, self.name, self.core, self._spawn, self._turn)
        self.core.attach(self.fleet)

    # -- the whole life ----------------------------------------------------------

    async def run(self) -> None:
        """Serve until main shut the pool down and has every answer, or a
        forced stop is over (or out of time)."""
        self.loop.add_reader(self.main.fileno(), self._read_main)
        self.loop.add_signal_handler(signal.SIGTERM, self.force_stop, "SIGTERM")
        self._spawn(self._check_parent())
        starting = self._spawn(self._start())
        await self.done.wait()
        starting.cancel()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def _start(self) -> None:
        await self.fleet.start()
        self._turn()

    def _turn(self) -> None:
        """After every event (main's frames, an answer, STATS numbers, the
        fleet gone): move a graceful shutdown on, send main what the core
        has for it, and let run() return once the core is finished and the
        fleet is gone."""
        self.core.step()
        self._flush_main()
        if self.core.finished() and not self.fleet.has_workers():
            self.done.set()

    # -- main's side -------------------------------------------------------------

    def _read_main(self) -> None:
        frames, ended = recv_frames(self.main, self.main_in, drain=True)
        if frames:
            self.core.receive(frames)
        if ended:
            self.loop.remove_reader(self.main.fileno())
            self._main_lost("main closed its socket")
            return
        self.fleet.flush()  # every JOB of this wake-up in one graph
        self._turn()

    def _flush_main(self) -> None:
        out = self.core.out
        while out and not self.core.finished():
            try:
                out.consume(self.main.sendmsg(out.chunks()))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._main_lost("main's socket broke")
                return
        want = bool(out) and not self.core.finished()
        if want != self.writing:
            if want:
                self.loop.add_writer(self.main.fileno(), self._turn)
            else:
                self.loop.remove_writer(self.main.fileno())
            self.writing = want

    # -- the end ---------------------------------------------------------------------

    def _main_lost(self, why: str) -> None:
        """Main is gone: nobody is left to answer."""
        self.core.main_lost()
        self.force_stop(why)

    def force_stop(self, why: str) -> None:
        """SIGTERM or main gone: stop everything now, within the budget."""
        log.debug("forced stop: %s", why)
        self.core.stop()  # the fleet is killed
        self.loop.call_later(FORCED_STOP_BUDGET, self.done.set)
        self._turn()

    async def _check_parent(self) -> None:
        while True:
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
            # Main starts the Dask Boss as a new process of its own (never
            # through a fork server): its parent is main while main lives.
            if main_gone("spawn", os.getppid(), self.options.main_pid):
                self._main_lost("main process is gone")
                return


def run_dask_boss(main_sock: socket.socket, options: DaskBossOptions) -> None:
    """The body of the Dask Boss process. Never returns: it ends in ``os._exit``."""
    ignore_interrupts()
    code = 0
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    boss: DaskBoss | None = None

    async def serve() -> None:
        nonlocal boss
        boss = DaskBoss(main_sock, options)
        await boss.run()

    try:
        loop.run_until_complete(serve())
    except BaseException:  # noqa: BLE001 - say so, then leave
        traceback.print_exc()
        code = 1
    if boss is None or not boss.core.said_bye:
        # Main is gone or stopped us by force: nobody will read the jobs
        # still waiting in shared memory.
        Segments(options.segment_prefix).discard_all()
    # No clean-up of the loop, its threads or the cluster's processes: what had
    # to be closed is closed; a cluster we started dies with us.  But the
    # multiprocessing objects such a cluster made here (each Nanny's queues:
    # 12 semaphores for two workers) are unlinked only by finalizers that a
    # normal exit runs and os._exit skips: after a forced stop the resource
    # tracker then warned "leaked semaphore objects".  Run those now.
    with contextlib.suppress(Exception):
        multiprocessing.util._run_finalizers(0)  # type: ignore[attr-defined]
    exit_now(code)


def main() -> None:
    """Entry point of the Dask Boss process (started by ``DaskBackend.start``)."""
    boot = read_boot()
    main_sock = socket.socket(fileno=boot["fd"])
    # Pickled on its own, to be read only now: its ``security`` may need
    # the import path the boot just set.
    options = pickle.loads(boot["options"])
    run_dask_boss(main_sock, options)


if __name__ == "__main__":
    main()

"""The Dask Boss process: ``python -m bossworker.dask.boss`` (see :mod:`bossworker.dask`).

Who talks to whom::

   main process        Dask Boss process                  Dask worker process       child
  +-------------+     +----------------------+  Dask    +----------------------+  +------------+
  | client      | <-> | DaskBoss (this file) |          | PoolPlugin (plugin.py)|  | run_worker |
  | (unchanged) |     |  says what main hears| <------> |  slot 1 -- socket -- | -| (child.py) |
  +-------------+     | DaskFleet (fleet.py) |  tasks   |  slot N -- socket -- | -| ...        |
     socketpair       |  one task per JOB    |          +----------------------+  +------------+
                      +----------------------+

Main speaks the frame protocol to the Dask Boss exactly as it does to the
local Boss (JOB, SHUTDOWN, STATS_REQUEST, CANCEL in; READY / INIT_FAILED,
RESULT / ERROR / TIMED_OUT, STATS, CANCEL_REPLY, BYE out).  This file holds
what a Boss says to main: the frames from main, the counters, the STATS
body, READY / INIT_FAILED, drain -> BYE, the forced stop and the main-death
check.  Where the workers live (a Dask cluster: batching submits, the lease,
the plugin on every Dask worker) is the :class:`~bossworker.dask.fleet.DaskFleet`,
reached only through its seam (``start``, ``submit``, ``flush``, ``stats``,
``close``, answers through ``on_answer``).  The Dask Boss never unpickles a
job or a result, like the local Boss.

Ending: after SHUTDOWN, the Dask Boss waits for every answer, closes the
fleet gracefully (the plugins' teardown sends SHUTDOWN to each child, which
runs the exit handler) and says BYE.  After SIGTERM (a forced stop) or
main's death it closes the fleet by force (tasks cancelled, children killed)
and exits within a second.  Should the Dask Boss die without cleaning up
(SIGKILL), each plugin notices that the Dask Boss's *lease* task is gone from
the scheduler, kills its children and unregisters itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import traceback
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import dask_start_error
from ..jobs import text_frame
from ..payload import Segments
from ..process import exit_now, ignore_interrupts
from ..protocol import Decoder, Frame, Kind, SendQueue, encode
from ..worker import describe_exception
from .launch import DaskBossOptions, read_boot

if TYPE_CHECKING:
    from .fleet import DaskFleet

__all__ = ["DaskBoss", "main", "run_dask_boss"]

log = logging.getLogger("bossworker")

# A forced stop must be over before main's patience (1 s) runs out.
FORCED_STOP_BUDGET = 0.7
# How often the Dask Boss checks that main is still its parent.
PARENT_CHECK_INTERVAL = 0.5


@dataclass(eq=False, slots=True)
class _Counters:
    added: int = 0
    completed: int = 0
    failed: int = 0
    timed_out: int = 0


class DaskBoss:
    """The Dask Boss's event loop (asyncio; Dask's client lives in it too):
    main's side of it.  Construct it inside the running loop."""

    def __init__(self, main: socket.socket, options: DaskBossOptions) -> None:
        # Imported here, not at the top: the boot set the import path that
        # ``distributed`` may only be found on (see main()).
        from .fleet import DaskFleet

        self.main = main
        self.options = options
        self.name = f"bossworker-{uuid.uuid4().hex[:12]}"
        self.main.setblocking(False)
        self.main_in = Decoder(options.read_size)
        self.main_out = SendQueue()
        self.writing = False
        self.main_open = True
        self.flushed = asyncio.Event()
        self.flushed.set()
        self.loop = asyncio.get_running_loop()
        self.stats_lock = asyncio.Lock()
        self.ready = False
        self.draining = False
        self.stopping = False
        self.done = asyncio.Event()  # set when run() should return
        self.counters = _Counters()
        self.background: set[asyncio.Task[Any]] = set()
        self.fleet: DaskFleet = DaskFleet(options, self.name, self._answer, self._spawn)

    # -- the whole life ----------------------------------------------------------

    async def run(self) -> None:
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
        try:
            results = await self.fleet.start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - main is told, then we leave
            log.error("the Dask Boss could not start: %s", exc)
            where = self.options.address or "a new local cluster"
            self._send(text_frame(Kind.INIT_FAILED, 0, dask_start_error(where, describe_exception(exc))))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.flushed.wait(), FORCED_STOP_BUDGET)
            await self._stop(graceful=False)
            return
        errors = [e for e in results if e is not None]
        self.ready = len(errors) < len(results)
        if self.ready:
            self._send(encode(Kind.READY))
        else:
            text = errors[0] if errors else "no Dask worker could start a worker"
            self._send(text_frame(Kind.INIT_FAILED, 0, text))
            # Main answers INIT_FAILED with a forced stop; wait for it.

    # -- main's side -------------------------------------------------------------

    def _read_main(self) -> None:
        decoder = self.main_in
        while True:
            try:
                n = self.main.recv_into(decoder.get_buffer())
            except (BlockingIOError, InterruptedError):
                self.fleet.flush()
                return
            except OSError:
                n = 0
            if not n:
                self.loop.remove_reader(self.main.fileno())
                self.main_open = False
                self.force_stop("main closed its socket")
                return
            decoder.buffer_updated(n)
            for frame in decoder.take():
                self._on_main_frame(frame)

    def _on_main_frame(self, frame: Frame) -> None:
        kind = frame.kind
        if kind == Kind.JOB:
            self.counters.added += 1
            self.fleet.submit(frame)
        elif kind == Kind.SHUTDOWN:
            if not self.draining:
                self.draining = True
                self._maybe_finish()
        elif kind == Kind.STATS_REQUEST:
            self._spawn(self._answer_stats())
        elif kind == Kind.CANCEL:
            # Jobs go to the scheduler as soon as they arrive: none waits
            # here to be dropped, so a cancel never succeeds on Dask.
            self._send(encode(Kind.CANCEL_REPLY, frame.job_id, b"\x00"))
        else:
            log.error("unexpected %s frame from main; ignored", Kind(kind).name)

    def _send(self, data: bytes | bytearray) -> None:
        if not self.main_open:
            return
        self.main_out.append(data)
        self._flush_main()

    def _flush_main(self) -> None:
        out = self.main_out
        while out and self.main_open:
            try:
                out.consume(self.main.sendmsg(out.chunks()))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.main_open = False
                out.clear()
                self.force_stop("main's socket broke")
        want = bool(out) and self.main_open
        if want != self.writing:
            if want:
                self.loop.add_writer(self.main.fileno(), self._flush_main)
                self.flushed.clear()
            else:
                self.loop.remove_writer(self.main.fileno())
            self.writing = want
        if not want:
            self.flushed.set()

    def _answer(self, answer: bytes) -> None:
        """Count an answer frame from the fleet and send it to main."""
        kind = answer[0]
        counters = self.counters
        counters.completed += 1
        if kind != Kind.RESULT:
            counters.failed += 1
            if kind == Kind.TIMED_OUT:
                counters.timed_out += 1
        self._send(answer)
        self._maybe_finish()

    async def _answer_stats(self) -> None:
        async with self.stats_lock:
            counters = self.counters
            running, alive, started, jobs = await self.fleet.stats()
            in_flight = counters.added - counters.completed
            running = min(running, in_flight)
            body = {
                "added": counters.added,
                "completed": counters.completed,
                "failed": counters.failed,
                "timed_out": counters.timed_out,
                "queued": max(0, in_flight - running),
                "running": running,
                "workers_alive": alive,
                "workers_started": started,
                "jobs_per_worker": jobs,
            }
            self._send(encode(Kind.STATS, 0, json.dumps(body).encode()))

    # -- the end ---------------------------------------------------------------------

    def _maybe_finish(self) -> None:
        counters = self.counters
        if self.draining and self.ready and not self.stopping and counters.completed == counters.added:
            self._spawn(self._stop(graceful=True))

    def force_stop(self, why: str) -> None:
        """SIGTERM or main gone: stop everything now, within the budget."""
        if not self.main_open:
            # Nobody will read the jobs still waiting in shared memory.
            Segments(self.options.segment_prefix).discard_all()
        if self.stopping:
            return
        log.debug("forced stop: %s", why)
        self.loop.call_later(FORCED_STOP_BUDGET, self.done.set)
        self._spawn(self._stop(graceful=False))

    async def _stop(self, graceful: bool) -> None:
        if self.stopping:
            return
        self.stopping = True
        try:
            await self.fleet.close(graceful)
        except Exception:
            log.exception("the Dask Boss could not clean up")
        if graceful:
            self._send(encode(Kind.BYE))
            await self.flushed.wait()
        self.done.set()

    async def _check_parent(self) -> None:
        while True:
            await asyncio.sleep(PARENT_CHECK_INTERVAL)
            if os.getppid() != self.options.main_pid:
                self.main_open = False
                self.force_stop("main process is gone")
                return


def run_dask_boss(main_sock: socket.socket, options: DaskBossOptions) -> None:
    """The body of the Dask Boss process. Never returns: it ends in ``os._exit``."""
    ignore_interrupts()
    code = 0
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    async def serve() -> None:
        await DaskBoss(main_sock, options).run()

    try:
        loop.run_until_complete(serve())
    except BaseException:  # noqa: BLE001 - say so, then leave
        traceback.print_exc()
        code = 1
    # No clean-up of the loop, its threads or the cluster's processes: what had
    # to be closed is closed; a cluster we started dies with us.
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

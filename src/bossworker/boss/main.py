"""The local Boss process: one single-threaded selectors loop driving the
core (what main is told) and the local fleet (the worker processes).

Who talks to whom::

      main process                      Boss process                     workers
    +---------------+   socketpair   +----------------------+  socketpair  +----------+
    | client.Client | <------------> | Boss.run()           | <----------> | worker 1 |
    |  (no threads) |  JOB, SHUTDOWN |  BossCore (core.py)  | <----------> | worker 2 |
    +---------------+  RESULT, ...   |  LocalFleet(local.py)| <----------> | worker N |
                                     +----------------------+              +----------+

The Boss reads jobs from main eagerly, hands them to workers, and writes
answers back to main whenever main's socket takes them.  It never unpickles
a job or a result: it reads frame headers and forwards the raw bytes, so no
payload can crash it.  It is the only owner of the pool's state (one loop,
no threads, no locks); :meth:`Boss.run` says what one turn does.

Shutting down gracefully: after main's SHUTDOWN, the Boss finishes the
queue, tells each worker SHUTDOWN (they run their exit handler and leave),
reaps them, sends BYE and leaves once main's socket has taken every byte.
A SIGTERM, or main's death (its pidfd, end-of-file on main's socket, or a
new parent process), makes the Boss kill its workers and leave at once.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
import traceback
from collections.abc import Iterable
from types import FrameType

from .. import logfwd
from ..config import BossConfig
from ..jobs import text_frame
from ..portable import make_selector, send_chunks
from ..process import (
    Closable,
    OwnedFd,
    close_inherited,
    exit_now,
    ignore_interrupts,
    open_pidfd,
    pipe_write_ends_since,
    preload_parent_death_signal,
)
from ..protocol import Decoder, InitFailure, Kind, recv_frames
from ..worker import SpecError, describe_exception, unpickle_spec
from .core import PARENT_CHECK_INTERVAL, BossCore, main_gone
from .local import LocalFleet

__all__ = ["Boss", "run_boss"]

log = logging.getLogger("bossworker")

#: The longest single wait of the Boss's loop, in seconds (see Boss.run).
MAX_WAIT = 3600.0


class _ForcedStop(BaseException):
    """Raised by the SIGTERM handler: kill everything and leave now."""


class Boss:
    """The local Boss's event loop: main's socket, the core and the fleet."""

    def __init__(
        self, main_sock: socket.socket, config: BossConfig, not_for_workers: Iterable[Closable] = ()
    ) -> None:
        self.config = config
        # Descriptors of ours a forked worker must not keep: the write end
        # of our own sentinel pipe (see process.pipe_write_ends_since).
        self.not_for_workers = list(not_for_workers)
        self.main = main_sock
        self.main.setblocking(False)
        self.main_in = Decoder(config.worker.read_size)
        self.selector = make_selector()
        self.selector.register(self.main, selectors.EVENT_READ, self._on_main)
        self.main_events = selectors.EVENT_READ  # what the selector watches main's socket for
        self.main_pidfd = self._watch_main()
        # Main's pidfd shows its death at once: then the Boss never looks at
        # its parent's pid, and with nothing else due it waits without a
        # timeout (a timed wait arms a timer at every sleep).
        self.next_parent_check = 0.0 if self.main_pidfd is None else math.inf
        self.core = BossCore(config.worker_count)
        self.fleet = LocalFleet(config, self.core, self.selector, time.monotonic, self._own_descriptors)
        self.core.attach(self.fleet)

    def _own_descriptors(self) -> list[Closable]:
        """What a forked worker must close of the Boss's own."""
        owned: list[Closable] = [self.main, self.selector, *self.not_for_workers]
        if self.main_pidfd is not None:
            owned.append(self.main_pidfd)
        return owned

    # -- the loop ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until main shut the pool down and has every answer.

        The writes of a turn come last, right before the wait: a process
        woken by a write to a Unix socket is usually put on the writer's
        CPU (the kernel expects the writer to sleep next), so every
        microsecond of bookkeeping after a write is one the reader waits.
        """
        fleet, core, select = self.fleet, self.core, self.selector.select
        fleet.start_all()
        due = 0.0  # the nearest time something is due (see LocalFleet.next_due)
        while True:
            now = time.monotonic()
            if now >= due:
                # Everything the callbacks set up is due later than now
                # (grace periods, back-offs, deadlines), so skipping this
                # until the nearest due time changes nothing.
                fleet.tick(now)  # deadlines, memory, lingering workers, respawns
                self._check_parent(now)  # main still there?
            fleet.dispatch()  # queued jobs to workers' send queues
            core.step()  # a graceful shutdown moves on: retire, BYE
            due = min(self.next_parent_check, fleet.next_due())
            fleet.flush()  # jobs to workers
            self._flush_main()  # answers to main
            if core.finished():
                break
            # Capped: no selector takes a wait of years (epoll counts
            # milliseconds in a C int, ~24.8 days), and a deadline as far
            # away as MAX_TIMEOUT (1e9 s) is legal.  Waking once in a while
            # early changes nothing: the loop only acts on what is due.
            wait = None if due == math.inf else min(MAX_WAIT, max(0.0, due - time.monotonic()))
            for key, mask in select(wait):
                key.data(mask)  # main's frames, workers' answers, worker exits
        self.selector.close()

    # -- main's side -----------------------------------------------------------------

    def _on_main(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read_main()
        if mask & selectors.EVENT_WRITE:
            self._flush_main()

    def _read_main(self) -> None:
        frames, ended = recv_frames(self.main, self.main_in)
        if frames:
            self.core.receive(frames)
        if ended:
            log.debug("main closed its socket; stopping")
            self.core.main_lost()

    def _flush_main(self) -> None:
        out = self.core.out
        if out and not self.core.finished():
            try:
                out.consume(send_chunks(self.main, out.chunks()))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.core.main_lost()
                return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        if self.main_events != events:
            self.selector.modify(self.main, events, self._on_main)
            self.main_events = events

    def _watch_main(self) -> OwnedFd | None:
        """Watch main's pidfd, where there are pidfds.

        Main's death shows at once, even when a process main forked after
        creating the pool holds main's end of the socket (no end-of-file
        then), and under forkserver, where main is not our parent.
        """
        pidfd = open_pidfd(self.config.main_pid, older_than_me=True)
        if pidfd is not None:
            self.selector.register(pidfd, selectors.EVENT_READ, self._on_main_exit)
        return pidfd

    def _on_main_exit(self, mask: int) -> None:
        log.debug("main process is gone; stopping")
        self.core.main_lost()

    def _check_parent(self, now: float) -> None:
        if now < self.next_parent_check:
            return
        self.next_parent_check = now + PARENT_CHECK_INTERVAL
        if main_gone(self.config.start_method, os.getppid(), self.config.main_pid):
            log.debug("main process is gone; stopping")
            self.core.main_lost()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _ForcedStop


def _tell_main_start_failed(main_sock: socket.socket, failure: InitFailure, text: str) -> None:
    """Before the Boss leaves without having served: give main the cause, so
    that the constructor raises with it instead of "the Boss died"."""
    with contextlib.suppress(OSError):
        main_sock.settimeout(5.0)  # main waits for this; never hang on it
        main_sock.sendall(text_frame(Kind.INIT_FAILED, failure, text))


def _send_what_is_left(boss: Boss, limit: float = 1.0) -> bool:
    """Best effort, within ``limit`` seconds: send main what the core still
    holds for it (above all the record of the Boss's own failure, which log
    forwarding only queued).  True if all of it went out."""
    out = boss.core.out
    deadline = time.monotonic() + limit
    try:
        boss.main.setblocking(True)
        while out and (left := deadline - time.monotonic()) > 0:
            boss.main.settimeout(left)
            out.consume(send_chunks(boss.main, out.chunks()))
    except OSError:
        return False
    return not out


def run_boss(
    main_sock: socket.socket,
    config: BossConfig | bytes,
    inherited: Iterable[Closable] = (),
    main_fds: dict[int, tuple[int, int]] | None = None,
) -> None:
    """The body of the Boss process. Never returns: it ends in ``os._exit``.

    ``config`` comes pickled (bytes) unless the Boss was forked: unpickling
    it here lets a handler this process cannot import be reported to main,
    with the error, rather than kill the process in multiprocessing's
    bootstrap.  Any failure before the Boss has told main READY is reported
    the same way (INIT_FAILED naming what failed)."""
    close_inherited(inherited)
    # Forked: main's descriptors as it forked us tell our sentinel pipe.
    sentinel = pipe_write_ends_since(main_fds) if main_fds else []
    ignore_interrupts()
    # Never walk the objects inherited from main: under fork they can be
    # many (a large program's), and walking them costs the Boss ~15 %.
    gc.freeze()
    preload_parent_death_signal()
    boss: Boss | None = None
    code = 0
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
        if isinstance(config, bytes):
            config = unpickle_spec(config)
        assert isinstance(config, BossConfig)
        boss = Boss(main_sock, config, sentinel)
        if config.worker.log_level is not None:
            # This Boss's own records ("worker 123 died") go to main too.
            core = boss.core
            logfwd.install(
                logfwd.ForwardHandler(core.log_record, lambda: 0, threading.RLock()), config.worker.log_level
            )
        boss.run()
    except _ForcedStop:
        pass
    except SpecError as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        code = 1
        _tell_main_start_failed(main_sock, InitFailure.NOT_IMPORTABLE, str(exc))
    except BaseException as exc:
        # We are leaving: main's SIGTERM, sent as soon as it reads the report
        # below, must not interrupt the clean-up.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.exception("the Boss failed")
        code = 1
        if boss is not None and not _send_what_is_left(boss):
            # The record above went to the forwarding handler, which only
            # queues it for main: said nowhere if main cannot be reached.
            traceback.print_exc()
        if boss is None or not boss.core.announced:
            _tell_main_start_failed(main_sock, InitFailure.BOSS, describe_exception(exc))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if boss is not None:
            boss.core.stop()
            if not boss.core.said_bye:
                # Main is gone or stopped us by force: nobody will read the
                # segments still waiting.
                boss.config.worker.segments.discard_all()
    exit_now(code)

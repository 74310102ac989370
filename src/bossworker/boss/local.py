"""The local fleet: worker processes on this machine, driven by a selectors loop.

:class:`LocalFleet` is the :class:`~bossworker.boss.core.Fleet` of the local
Boss.  It owns the queue of raw JOB frames and one :class:`WorkerRecord` per
worker process (a :class:`~bossworker.boss.link.WorkerLink` plus its process,
socket and pidfd), and does, on the Boss's one thread:

* dispatch: idle workers first, then, when every worker is busy and jobs
  are still waiting, a few more to each worker (pipelining), as many as
  keep it from ever waiting for the next job;
* answers: each worker's frames, matched to its running job by its link,
  go to the core (which tells main);
* deaths: a worker's pidfd (or, where there are none, its process sentinel)
  is watched beside its socket, so a death is noticed in the same wait as a
  result (a pidfd also sees it when a helper the handler forked still holds
  the worker's descriptors).  Its running job is answered (or retried), the
  jobs sent ahead to it go back to the front of the queue, and a new worker
  takes its slot (with the core's back-off when it died starting);
* deadlines: a job past its timeout (plus a grace for the worker's own
  SIGALRM) gets its worker killed, even in C code that ignores signals;
* the memory cap (``max_worker_memory``): a worker past it mid-job is killed,
  one past it after an answer is retired between jobs.

Exactly-once: a job is in the queue, or in exactly one worker's ``inflight``
deque, until its answer is handed to the core.

Each worker leads its own process group; whenever a worker goes (killed,
dead, or exited cleanly after recycling or shutdown), the fleet SIGKILLs
its group before reaping it, so what its handlers started goes with it.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
import multiprocessing
import os
import selectors
import signal
import socket
import stat
from collections import deque
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from ..config import BossConfig, PickledAtSpawn, WorkerSpec
from ..errors import (
    INIT_TIMEOUT_ERROR,
    MEMORY_AT_START_ERROR,
    MEMORY_LIMIT_ERROR,
    PROTOCOL_VIOLATION_ERROR,
    START_FAILED_ERROR,
)
from ..jobs import Facts, frame_text
from ..memory import CHECK_INTERVAL, RssProbe, mib, shown_over
from ..portable import send_chunks, socket_for_child
from ..process import Closable, OwnedFd, kill_group, open_pidfd, signal_description
from ..protocol import (
    Decoder,
    Flag,
    Frame,
    InitFailure,
    Kind,
    ProtocolError,
    RetryOn,
    SendQueue,
    encode,
    recv_frames,
)
from ..worker import run_worker
from .core import RESPAWN_BACKOFF_MAX, BossCore, FleetNumbers
from .link import (
    ANSWERED,
    DEAD,
    SERVING,
    STARTING,
    STOPPING,
    TIMED_OUT,
    HeadFate,
    OutOfTurn,
    WorkerLink,
)

__all__ = ["EXIT_GRACE", "LocalFleet", "WorkerRecord"]

log = logging.getLogger("bossworker")

# How long a worker may take to exit after its socket closed before it is killed.
EXIT_GRACE = 1.0
# Worker starts due are made for at most this long per turn of the loop:
# the rest wait for the next turn, so READYs, answers and main's frames are
# read while a big pool starts (a start costs a fork, or a fork and exec).
START_BUDGET = 0.01
# Slots that cannot get a worker (a process or file limit) are summed up in
# one log line at most this often, not one line per failed start.
START_REPORT_INTERVAL = 60.0

# The kinds a worker's frames are compared with, bound once (see link.SERVING).
_ANSWERS = frozenset({Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT})
_TIMED_OUT_KIND, _READY = Kind.TIMED_OUT, Kind.READY


class WorkerRecord(WorkerLink):
    """One worker process as the local Boss sees it: its link, and what
    talking to it takes (process, socket, buffers, exit watch)."""

    __slots__ = (
        "decoder",
        "events",
        "on_io",
        "out",
        "pidfd",
        "process",
        "rss_probe",
        "slot_failures",
        "sock",
    )

    def __init__(
        self,
        process: BaseProcess,
        sock: socket.socket,
        read_size: int,
        now: float,
        init_timeout: float,
        slot_failures: int = 0,
    ) -> None:
        super().__init__(process.pid or 0, now, init_timeout)
        self.process = process
        # How many starts of its slot failed in a row before it (its back-off).
        self.slot_failures = slot_failures
        self.sock = sock
        self.decoder = Decoder(read_size)
        self.out = SendQueue()
        self.events = selectors.EVENT_READ  # what the selector watches its socket for
        self.pidfd: OwnedFd | None = None  # readable once the process exited (None: its sentinel is watched)
        # With a memory cap only: reads the worker's resident size.
        self.rss_probe: RssProbe | None = None
        self.on_io: Callable[[int], None] = _ignore


def _ignore(mask: int) -> None:
    pass


class LocalFleet:
    """Worker processes on this machine. See the module docstring."""

    def __init__(
        self,
        config: BossConfig,
        core: BossCore,
        selector: selectors.BaseSelector,
        clock: Callable[[], float],
        boss_owned: Callable[[], list[Closable]],
    ) -> None:
        self.config = config
        self.core = core
        self.selector = selector
        self.clock = clock
        # What a forked worker must close besides the other workers' ends:
        # the Boss's own descriptors (main's socket and pidfd, the selector).
        self.boss_owned = boss_owned
        # typeshed's BaseContext lacks Process; every concrete context has it.
        self.ctx: Any = multiprocessing.get_context(config.start_method)
        # What a worker process gets: the spec itself when forked; else
        # pickled as it starts and unpickled by the worker itself, which can
        # then report a handler it cannot import (see PickledAtSpawn).
        self.worker_spec: WorkerSpec | PickledAtSpawn = config.worker
        if config.start_method != "fork":
            self.worker_spec = PickledAtSpawn(config.worker)
        self.max_jobs = config.worker.max_jobs
        self.watch_memory = config.max_worker_memory is not None
        # Jobs waiting for a worker, as raw frames: a bytes object each and
        # nothing more, so a million queued tiny jobs stay small.
        self.queue: deque[bytes | bytearray] = deque()
        self.workers: list[WorkerRecord] = []
        # Workers given frames this turn, written to by flush() at its end.
        self.unflushed: list[WorkerRecord] = []
        # The slots waiting for a new worker, a heap of (when, order, the
        # slot's failures in a row): one entry per slot.
        self.respawn_at: list[tuple[float, int, int]] = []
        self.respawn_order = itertools.count()
        # Starts that failed since the last summary line, and why the last one did.
        self.start_failures_unreported = 0
        self.start_failure_text = ""
        self.start_report_due = 0.0
        self.workers_started = 0
        self.memory_kills = 0
        self.memory_recycles = 0

    # -- the Fleet seam (see core.Fleet) --------------------------------------------------

    def submit(self, jobs: list[bytes | bytearray]) -> None:
        self.queue.extend(jobs)

    def cancel(self, job_ids: set[int]) -> set[int]:
        # Jobs that came before these CANCELs (in the same read, say) go to
        # idle workers first, as they would have had the Boss read them a
        # turn earlier: whether a job is cancelled must not depend on how
        # main's writes were split into reads (50 submits then
        # shutdown(cancel_futures=True) cancelled all 50 on a busy machine,
        # with a worker idle).
        self.dispatch()
        # All the CANCELs of one read in one pass over the queue, so
        # cancelling many queued jobs at once stays linear.
        dropped: set[int] = set()
        kept: deque[bytes | bytearray] = deque()
        for raw in self.queue:
            job_id = Frame.parse(raw).job_id
            if job_id in job_ids:
                dropped.add(job_id)
                self.config.worker.segments.discard(job_id)
            else:
                kept.append(raw)
        if dropped:
            self.queue = kept
        return dropped

    def busy(self) -> bool:
        return bool(self.queue) or any(w.inflight for w in self.workers)

    def has_workers(self) -> bool:
        return bool(self.workers or self.respawn_at)

    def can_serve(self) -> bool:
        return any(w.state is not DEAD for w in self.workers)

    def take_queued(self) -> list[int]:
        job_ids = []
        while self.queue:
            job_id = Frame.parse(self.queue.popleft()).job_id
            self.config.worker.segments.discard(job_id)
            job_ids.append(job_id)
        return job_ids

    def retire_all(self) -> None:
        self.respawn_at.clear()
        now = self.clock()
        for w in self.workers:
            if w.state in (STARTING, SERVING):
                self._tell_to_leave(w, now)

    def kill_all(self) -> None:
        """Kill and reap every worker, with its process group, at once."""
        for w in self.workers:
            kill_group(w.pid)
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.process.join()
            if w.pidfd is not None:
                w.pidfd.close()

    def request_numbers(self, reply: Callable[[FleetNumbers], None]) -> None:
        alive = [w for w in self.workers if w.state is not DEAD]
        reply(
            FleetNumbers(
                running=sum(1 for w in alive if w.inflight and w.state is SERVING),
                workers_alive=len(alive),
                workers_started=self.workers_started,
                jobs_per_worker={w.pid: w.jobs_done for w in alive},
                memory_kills=self.memory_kills,
                memory_recycles=self.memory_recycles,
            )
        )

    # -- once per turn ------------------------------------------------------------------

    def start_all(self) -> None:
        """Make every slot due for a worker now.  They are started a few per
        turn (see :data:`START_BUDGET`), so the first READY is read, and
        the first jobs run, while the rest of a big pool starts."""
        now = self.clock()
        for _ in range(self.config.worker_count):
            self._slot_due(now, 0)

    def dispatch(self) -> None:
        """Hand queued jobs to workers: idle ones first, then some ahead."""
        queue = self.queue
        if not queue:
            return
        serving = [w for w in self.workers if w.state is SERVING]
        now = self.clock()
        # Idle workers first, one job each, so work spreads before it deepens.
        for w in serving:
            if not queue:
                return
            if not w.inflight and w.budget(self.max_jobs) > 0:
                self._send(w, w.take_jobs(queue, 1, now))
        if not queue or any(not w.inflight for w in serving):
            return
        # Every worker is busy and jobs still wait: send some ahead, but no
        # worker more than its fair share of the queue (counting workers
        # still starting), so the tail of a batch stays spread out.
        starting = sum(1 for w in self.workers if w.state is STARTING)
        for w in serving:
            share = len(queue) // (len(serving) + starting)
            room = min(w.depth(), w.budget(self.max_jobs) + len(w.inflight)) - len(w.inflight)
            if min(room, share) > 0:
                self._send(w, w.take_jobs(queue, min(room, share), now))

    def next_due(self) -> float:
        """The nearest time something is due: a deadline, a memory check, a
        start-up or leave limit, a killing of a lingering process, a respawn,
        the summary of failed starts.  The Boss ticks only then."""
        soonest = math.inf
        watch_memory = self.watch_memory
        for w in self.workers:
            soonest = min(soonest, w.deadline(), w.start_deadline())
            if watch_memory:
                soonest = min(soonest, w.memory_check_due(CHECK_INTERVAL))
            if w.state is DEAD:
                soonest = min(soonest, w.dead_since + EXIT_GRACE)
            elif w.state is STOPPING:
                soonest = min(soonest, w.leave_by)
        if self.respawn_at:
            soonest = min(soonest, self.respawn_at[0][0])
        if self.start_failures_unreported:
            soonest = min(soonest, self.start_report_due)
        return soonest

    def tick(self, now: float) -> None:
        """Do what is due at ``now`` (see next_due)."""
        self._expire_deadlines(now)
        if self.watch_memory:
            self._check_memory(now)
        self._kill_overdue(now)
        self._expire_starts(now)
        self._respawn_due(now)
        self._report_start_failures(now)

    # -- workers: start -----------------------------------------------------------------

    def _start_worker(self, slot_failures: int = 0) -> None:
        """Start a worker for one slot (whose starts failed ``slot_failures``
        times in a row).  A failure to create it (a process or file limit:
        EAGAIN, EMFILE) is an init failure, retried with the slot's
        back-off, never the Boss's death."""
        try:
            boss_end, worker_end = socket.socketpair()
        except OSError as exc:
            self._start_failed(exc, slot_failures)
            return
        inherited: list[Closable] = []
        fork = self.config.start_method == "fork"
        if fork:
            # A forked worker inherits every descriptor the Boss has; it must
            # drop the ones that are not its own (see process.close_inherited).
            inherited = [*self.boss_owned(), boss_end]
            inherited += [w.sock for w in self.workers]
            inherited += [w.pidfd for w in self.workers if w.pidfd is not None]
            inherited += [w.rss_probe for w in self.workers if w.rss_probe is not None]
        process = self.ctx.Process(
            target=run_worker,
            args=(socket_for_child(worker_end), self.worker_spec, os.getpid(), inherited),
            name="bossworker-worker",
            daemon=False,
        )
        pipe_fds: list[int] = []
        try:
            if fork:
                pipe_fds = _next_pipe_fds()
            process.start()
        except OSError as exc:
            boss_end.close()
            # multiprocessing's fork start leaks the two pipes it made when
            # os.fork() fails: close what the failed start left open.
            _close_pipes(pipe_fds)
            self._start_failed(exc, slot_failures)
            return
        finally:
            worker_end.close()
        boss_end.setblocking(False)
        spec = self.config.worker
        w = WorkerRecord(process, boss_end, spec.read_size, self.clock(), spec.init_timeout, slot_failures)
        w.on_io = lambda mask: self._on_worker(w, mask)
        if self.watch_memory:
            try:
                # Opened now, while the new process is our unreaped child:
                # the descriptor can only ever describe this process.
                w.rss_probe = RssProbe(w.pid)
            except OSError as exc:
                log.warning("worker %d: cannot watch its memory (%s); its cap is not enforced", w.pid, exc)
        self.workers.append(w)
        self.workers_started += 1
        self.selector.register(boss_end, selectors.EVENT_READ, w.on_io)
        self._watch_exit(w)
        log.info("worker %d started", w.pid)

    def _start_failed(self, exc: OSError, slot_failures: int) -> None:
        """No process could be made for a slot: counted, and summed up in
        the log by :meth:`_report_start_failures`."""
        text = START_FAILED_ERROR.format(error=f"{type(exc).__name__}: {exc}")
        self.start_failures_unreported += 1
        self.start_failure_text = text
        self._slot_failed(text, InitFailure.WORKERS, False, slot_failures + 1)

    def _slot_failed(self, text: str, failure: int, killed: bool, attempt: int) -> None:
        """A slot failed to get a serving worker (its ``attempt``-th failure
        in a row): try again after the core's back-off for it."""
        delay = self.core.worker_start_failed(text, failure, killed, attempt)
        self._slot_due(self.clock() + delay, attempt)

    def _slot_due(self, when: float, slot_failures: int) -> None:
        heapq.heappush(self.respawn_at, (when, next(self.respawn_order), slot_failures))

    def _report_start_failures(self, now: float) -> None:
        """One WARNING for the starts that failed (how many slots wait for
        a worker, and why), at most every START_REPORT_INTERVAL."""
        if not self.start_failures_unreported or now < self.start_report_due:
            return
        waiting = sum(1 for _, _, failures in self.respawn_at if failures)
        log.warning(
            "%d of %d worker slot(s) could not start a worker (%d failed start(s)); "
            "each is retried with a back-off of up to %.0f s: %s",
            waiting,
            self.config.worker_count,
            self.start_failures_unreported,
            RESPAWN_BACKOFF_MAX,
            self.start_failure_text,
        )
        self.start_failures_unreported = 0
        self.start_report_due = now + START_REPORT_INTERVAL

    def _watch_exit(self, w: WorkerRecord) -> None:
        """Have the selector tell when ``w``'s process exits.

        A pidfd where there are pidfds: the process sentinel is a pipe, and
        a helper the handler forked without exec holds a copy of its write
        end, hiding the worker's death for as long as the helper lives.
        """
        if self.config.start_method == "fork":
            # The worker makes its own group too, first thing; doing it
            # here as well means the group exists from this moment, for a
            # kill that comes before the worker got that far.  (A spawned
            # worker has exec'd already, and a forkserver one is not our
            # child: both refuse, harmlessly.)
            with contextlib.suppress(OSError):
                os.setpgid(w.pid, w.pid)
        w.pidfd = open_pidfd(w.pid)
        watched = w.pidfd if w.pidfd is not None else w.process.sentinel
        self.selector.register(watched, selectors.EVENT_READ, lambda mask: self._on_exit(w))

    def _forget_exit_watch(self, w: WorkerRecord) -> None:
        if w.pidfd is not None:
            self.selector.unregister(w.pidfd)
            w.pidfd.close()
        else:
            self.selector.unregister(w.process.sentinel)

    def _respawn_due(self, now: float) -> None:
        """Start workers for the slots due, for at most START_BUDGET: the
        rest stay due, and the loop comes back at once after one look at
        its sockets."""
        due = self.respawn_at
        if not due or due[0][0] > now:
            return
        if self.core.shutting_down and not self.queue:
            while due and due[0][0] <= now:  # nothing left to do for them
                heapq.heappop(due)
            return
        stop_at = self.clock() + START_BUDGET
        while due and due[0][0] <= now:
            _, _, failures = heapq.heappop(due)
            self._start_worker(failures)
            if self.clock() >= stop_at:
                return

    def _expire_starts(self, now: float) -> None:
        """Kill a worker whose start-up (its init_handler) overran
        init_timeout: an init failure, with a text that says so."""
        for w in list(self.workers):
            if w.start_overdue(now):
                seconds = self.config.worker.init_timeout
                w.init_failed(INIT_TIMEOUT_ERROR.format(seconds=seconds))
                log.warning("worker %d: init_handler did not return within %g s; killing it", w.pid, seconds)
                self._kill(w)

    # -- workers: talking -----------------------------------------------------------------

    def _send(self, w: WorkerRecord, frames: list[bytes | bytearray]) -> None:
        """Queue ``frames`` for ``w``; :meth:`flush` writes them at the end of the turn."""
        if not w.out:
            self.unflushed.append(w)
        w.out.extend(frames)

    def flush(self) -> None:
        """Write what this turn queued for the workers (the driver calls
        this last in a turn, see Boss.run)."""
        if self.unflushed:
            for w in self.unflushed:
                self._flush_worker(w)
            self.unflushed.clear()

    def _flush_worker(self, w: WorkerRecord) -> None:
        if w.state is DEAD:
            return
        out = w.out
        if out:
            try:
                out.consume(send_chunks(w.sock, out.chunks()))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # it died; its sentinel will tell
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0)
        if w.events != events:
            self.selector.modify(w.sock, events, w.on_io)
            w.events = events

    def _on_worker(self, w: WorkerRecord, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_worker(w)
        if mask & selectors.EVENT_READ:
            self._read_worker(w)

    def _read_worker(self, w: WorkerRecord, drain: bool = False) -> None:
        """Read what ``w`` sent (all of it with ``drain``; else one read, so
        that one busy worker does not hold up the others) and handle it."""
        if w.state is DEAD:
            return
        violation: Exception | None = None
        try:
            frames, ended = recv_frames(w.sock, w.decoder, drain)
        except (ProtocolError, MemoryError) as exc:
            violation = exc  # the frames before it are good: handle them first
            frames, ended = w.decoder.take(), False
        for frame in frames:
            self._on_worker_frame(w, frame)
        if violation is not None:
            self._protocol_violation(w, f"{type(violation).__name__}: {violation}")
        elif ended:
            self._lose_socket(w)

    def _on_worker_frame(self, w: WorkerRecord, frame: Frame) -> None:
        if w.state is DEAD:
            return  # killed for a frame before this one: the rest is not trusted
        kind = frame.kind
        if kind in _ANSWERS:
            now = self.clock()
            try:
                job = w.answered(frame, now)
            except OutOfTurn as exc:
                self._protocol_violation(w, str(exc))
                return
            if kind == _TIMED_OUT_KIND:
                log.warning("job %d timed out in worker %d", frame.job_id, w.pid)
            if self.core.deliver(job, frame):
                self.queue.appendleft(job.raw)
            if self.max_jobs is not None and w.jobs_done >= self.max_jobs:
                w.retire(now, self.config.exit_limit)  # it exits by itself now
            elif self.watch_memory:
                self._recycle_if_over_memory(w, now)
        elif kind == _READY:
            if self.watch_memory and self._over_memory_at_start(w):
                return
            w.ready()
            self.core.worker_ready()
        elif kind == Kind.INIT_FAILED:
            w.init_failed(frame_text(frame), frame.job_id)
        elif kind == Kind.LOG:
            self.core.forward(frame)  # a logging record: to main, unread
        else:
            self._protocol_violation(w, f"a {Kind(kind).name} frame came from a worker")

    def _protocol_violation(self, w: WorkerRecord, detail: str) -> None:
        """Bytes from ``w`` that are not a valid answer (a handler wrote to the
        socket, say): this costs that worker and its running job only.  The
        job gets an ERROR; the worker is killed, and replaced as after any
        death (jobs sent ahead go back to the queue)."""
        if w.state is DEAD:
            return
        text = PROTOCOL_VIOLATION_ERROR.format(detail=detail)
        log.error("worker %d: %s; killing it", w.pid, detail)
        head = w.take_violation(text)
        if head is not None:
            self.core.answer(head.job_id, Kind.ERROR, text, pid=w.pid, ran=self.clock() - w.started_at)
        self._kill(w)

    def _tell_to_leave(self, w: WorkerRecord, now: float) -> None:
        """SHUTDOWN to ``w``: it runs its exit_handler and leaves."""
        w.retire(now, self.config.exit_limit)
        self._send(w, [encode(Kind.SHUTDOWN)])

    # -- workers: deadlines, death and replacement -----------------------------------------

    def _expire_deadlines(self, now: float) -> None:
        for w in list(self.workers):
            if w.deadline() <= now:
                head = w.inflight[0]
                log.warning("job %d overran its deadline in worker %d; killing it", head.job_id, w.pid)
                if self.core.may_retry(head, RetryOn.TIMED_OUT):
                    # Decided at its exit: the job must not run again while
                    # this process may still write its result segment.
                    w.head_killed(TIMED_OUT)
                else:
                    self.core.answer(head.job_id, Kind.TIMED_OUT, pid=w.pid, ran=now - w.started_at)
                    w.head_killed(ANSWERED)
                self._kill(w)

    def _kill_overdue(self, now: float) -> None:
        """Kill a worker whose socket closed but which has not exited, and a
        worker told to leave whose handlers did not let it leave in time."""
        for w in self.workers:
            if w.exit_overdue(now, EXIT_GRACE):
                kill_group(w.pid)
            elif w.leave_overdue(now):
                log.warning(
                    "worker %d did not exit within %.0f s of being told to; killing it",
                    w.pid,
                    self.config.exit_limit,
                )
                self._kill(w)

    def _lose_socket(self, w: WorkerRecord) -> None:
        """The worker's socket is closed: stop listening; wait for its exit."""
        if w.state is DEAD:
            return
        self.selector.unregister(w.sock)
        w.sock.close()
        w.out.clear()
        w.lost(self.clock())

    def _kill(self, w: WorkerRecord) -> None:
        kill_group(w.pid)
        self._lose_socket(w)

    def _on_exit(self, w: WorkerRecord) -> None:
        """``w``'s process has exited: collect its last words, answer, replace."""
        # Its last answers may still sit in the socket, read them first: the
        # sentinel and the socket become ready together, in no set order.
        self._read_worker(w, drain=True)
        # A grandchild may still hold the socket open; the worker is gone anyway.
        self._lose_socket(w)
        self._forget_exit_watch(w)
        # What its handlers started goes with it, even after a clean exit.
        # Before the reaping: until then its pid, and so its group id,
        # cannot have been reused.
        kill_group(w.pid)
        w.process.join()
        exitcode = w.process.exitcode
        reason = signal_description(exitcode)
        if w.exited_cleanly(exitcode):
            log.info("worker %d exited", w.pid)
        elif w.inflight:
            # Its job's own warning says it (died while running it, or it
            # was killed for a deadline or the memory cap): one death, one warning.
            log.info("worker %d exited (%s)", w.pid, reason)
        else:
            log.warning("worker %d exited (%s)", w.pid, reason)
        self.workers.remove(w)
        # Its I/O callback refers to it: break that cycle now, so the record
        # and its buffers go at once, not at some full garbage collection
        # (a pool recycling workers grew its Boss by ~0.3 MiB per worker).
        w.on_io = _ignore
        w.process.close()
        if w.rss_probe is not None:
            w.rss_probe.close()
        self._settle_jobs(w, reason, exitcode)
        if self.core.shutting_down and not self.queue:
            return  # no replacement needed to finish
        if not w.ever_ready:
            log.warning("worker %d failed to start (%s)", w.pid, reason)
            self._slot_failed(*w.start_failure(reason, exitcode), w.slot_failures + 1)
        else:
            self._start_worker()

    def _settle_jobs(self, w: WorkerRecord, reason: str, exitcode: int | None) -> None:
        """After ``w``'s exit: its running job is answered or retried (see
        link.exit_failure); the jobs sent ahead to it that never started go
        back to the front of the queue, in order, behind a retried head."""
        if w.inflight:
            # Now that the process is gone, nothing can still write its segments.
            self.config.worker.segments.discard(w.inflight[0].job_id)
        head, fate, unstarted = w.take_jobs_back(reason, exitcode)
        self.queue.extendleft(reversed(unstarted))
        if head is None or fate is None:
            return
        assert fate.cause is not None
        if fate.cause is RetryOn.DIED:
            log.warning("worker %d died (%s) while running job %d", w.pid, reason, head.job_id)
        ran = max(0.0, self.clock() - w.started_at)
        if self.core.fail(head, fate.cause, fate.kind, fate.text, fate.flags, w.pid, ran, fate.facts):
            self.queue.appendleft(head.raw)

    # -- workers: the memory cap ------------------------------------------------------------

    def _check_memory(self, now: float) -> None:
        """Measure each worker whose running job is due a look; kill one past
        the cap (SIGKILL: it may be deep in C code) and answer its job with
        MEMORY_LIMIT_ERROR and Flag.MEMORY.  Its replacement, and the return
        of the jobs sent ahead to it, happen as after any death (_on_exit)."""
        cap = self.config.max_worker_memory
        assert cap is not None
        for w in list(self.workers):
            if w.memory_check_due(CHECK_INTERVAL) > now or w.rss_probe is None:
                continue
            rss = w.rss_probe.rss()
            w.memory_checked_at = now
            if rss is None or rss <= cap:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(w.pid, signal.SIGKILL)  # first: every millisecond it grows
            head = w.inflight[0]
            log.warning(
                "worker %d: %.1f MiB, past max_worker_memory (%.1f MiB), running job %d; killing it",
                w.pid,
                mib(rss),
                mib(cap),
                head.job_id,
            )
            self.memory_kills += 1
            text = MEMORY_LIMIT_ERROR.format(**shown_over(rss, cap))
            facts = Facts(rss=rss, limit=cap)
            if self.core.may_retry(head, RetryOn.MEMORY):
                # Decided at its exit, as for a deadline (see _expire_deadlines).
                w.head_killed(HeadFate(RetryOn.MEMORY, Kind.ERROR, text, Flag.MEMORY, facts))
            else:
                self.core.answer(
                    head.job_id,
                    Kind.ERROR,
                    text,
                    flags=Flag.MEMORY,
                    pid=w.pid,
                    ran=now - w.started_at,
                    facts=facts,
                )
                w.head_killed(ANSWERED)
            self._kill(w)

    def _recycle_if_over_memory(self, w: WorkerRecord, now: float) -> None:
        """After ``w`` answered: if it is past the cap (a leaky handler), it
        takes no more jobs and, once the jobs sent ahead to it are done, is
        told to leave (its exit_handler runs) and replaced, before a job of
        its has to be killed for memory it leaked in earlier jobs.  Measured
        after every answer that leaves it idle, else every CHECK_INTERVAL."""
        cap = self.config.max_worker_memory
        if w.rss_probe is None or cap is None or w.state is not SERVING:
            return
        # A worker with jobs sent ahead is running sub-millisecond jobs back
        # to back: a system call after each would slow the Boss down for
        # nothing, so it is measured at most every CHECK_INTERVAL.
        due = not w.inflight or now - w.memory_checked_at >= CHECK_INTERVAL
        if not w.over_memory and due:
            rss = w.rss_probe.rss()
            w.memory_checked_at = now
            if rss is None or rss <= cap:
                return
            log.info(
                "worker %d: %.1f MiB after its job, past max_worker_memory (%.1f MiB); recycling it",
                w.pid,
                mib(rss),
                mib(cap),
            )
            w.over_memory = True
        if not w.inflight:
            self.memory_recycles += 1
            self._tell_to_leave(w, now)

    def _over_memory_at_start(self, w: WorkerRecord) -> bool:
        """A worker past the cap as soon as it is ready would see every job
        killed: refuse it as an init failure that names both sizes."""
        cap = self.config.max_worker_memory
        rss = w.rss_probe.rss() if w.rss_probe is not None else None
        if cap is None or rss is None or rss <= cap:
            return False
        w.init_failed(MEMORY_AT_START_ERROR.format(**shown_over(rss, cap)))
        log.warning("worker %d: %s", w.pid, w.init_error)
        self._kill(w)
        return True


def _next_pipe_fds() -> list[int]:
    """The descriptors two ``os.pipe()`` calls get now: the lowest free ones
    (the Boss is single-threaded, so they stay free until its next call)."""
    fds: list[int] = []
    try:
        fds.extend(os.pipe())
        fds.extend(os.pipe())
    finally:
        for fd in fds:
            os.close(fd)
    return fds


def _close_pipes(fds: list[int]) -> None:
    """Close those of ``fds`` that are pipes now: after a failed fork start,
    the two pipes multiprocessing made just before ``os.fork()`` (no
    scan of every descriptor: a pool far bigger than a process limit
    fails thousands of starts)."""
    for fd in fds:
        with contextlib.suppress(OSError):
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.close(fd)

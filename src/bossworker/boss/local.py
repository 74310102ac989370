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
  takes its slot (with the core's back-off when it died starting; making
  a worker process and the slots waiting for one are
  :mod:`bossworker.boss.starts`'s);
* deadlines: a job past its timeout (plus a grace for the worker's own
  SIGALRM) gets its worker killed, even in C code that ignores signals;
* the memory cap (``max_worker_memory``): a worker past it mid-job is killed,
  one past it after an answer is retired between jobs (the rules are
  :mod:`bossworker.boss.memcap`'s; the fleet measures when they say and
  does the kill or the leave).

Exactly-once: a job is in the queue, or in exactly one worker's ``inflight``
deque, until its answer is handed to the core.

Each worker leads its own process group; whenever a worker goes (killed,
dead, or exited cleanly after recycling or shutdown), the fleet SIGKILLs
its group before reaping it, so what its handlers started goes with it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
from collections import deque
from collections.abc import Callable

from ..config import BossConfig
from ..errors import INIT_TIMEOUT_ERROR, PROTOCOL_VIOLATION_ERROR
from ..jobs import frame_text
from ..memory import CHECK_INTERVAL
from ..portable import send_chunks
from ..process import Closable, kill_group, open_pidfd, signal_description
from ..protocol import Frame, Kind, ProtocolError, RetryOn, encode, recv_frames
from .core import BossCore, FleetNumbers
from .link import (
    ANSWERED,
    DEAD,
    SERVING,
    STARTING,
    STOPPING,
    TIMED_OUT,
    OutOfTurn,
)
from .memcap import MemoryCap
from .starts import WorkerRecord, WorkerStarts

__all__ = ["EXIT_GRACE", "LocalFleet", "WorkerRecord"]

log = logging.getLogger("bossworker")

# How long a worker may take to exit after its socket closed before it is killed.
EXIT_GRACE = 1.0

# The kinds a worker's frames are compared with, bound once (see link.SERVING).
_ANSWERS = frozenset({Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT})
_TIMED_OUT_KIND, _READY = Kind.TIMED_OUT, Kind.READY


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
        self.max_jobs = config.worker.max_jobs
        # Jobs waiting for a worker, as raw frames: a bytes object each and
        # nothing more, so a million queued tiny jobs stay small.
        self.queue: deque[bytes | bytearray] = deque()
        self.workers: list[WorkerRecord] = []
        # Workers given frames this turn, written to by flush() at its end.
        self.unflushed: list[WorkerRecord] = []
        # Worker starts: the slots waiting for a worker, their back-off,
        # the start budget and the summary of failed starts (boss/starts.py).
        self.starts = WorkerStarts(config, core, clock, boss_owned)
        # The memory cap's rules (boss/memcap.py), with a cap only.
        self.memory: MemoryCap | None = None
        if config.max_worker_memory is not None:
            self.memory = MemoryCap(config.max_worker_memory, core, self._kill, self._tell_to_leave)

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
        return bool(self.workers or self.starts.waiting)

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
        self.starts.clear()
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
                workers_started=self.starts.started,
                jobs_per_worker={w.pid: w.jobs_done for w in alive},
                memory_kills=self.memory.kills if self.memory else 0,
                memory_recycles=self.memory.recycles if self.memory else 0,
            )
        )

    # -- once per turn ------------------------------------------------------------------

    def start_all(self) -> None:
        """Make every slot due for a worker now.  They are started a few per
        turn (see :data:`~bossworker.boss.starts.START_BUDGET`), so the first READY is read, and
        the first jobs run, while the rest of a big pool starts."""
        now = self.clock()
        for _ in range(self.config.worker_count):
            self.starts.due(now, 0)

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
        watch_memory = self.memory is not None
        for w in self.workers:
            soonest = min(soonest, w.deadline(), w.start_deadline())
            if watch_memory:
                soonest = min(soonest, w.memory_check_due(CHECK_INTERVAL))
            if w.state is DEAD:
                soonest = min(soonest, w.dead_since + EXIT_GRACE)
            elif w.state is STOPPING:
                soonest = min(soonest, w.leave_by)
        return min(soonest, self.starts.next_due())

    def tick(self, now: float) -> None:
        """Do what is due at ``now`` (see next_due)."""
        self._expire_deadlines(now)
        if self.memory is not None:
            self.memory.check(self.workers, now)
        self._kill_overdue(now)
        self._expire_starts(now)
        self._respawn_due(now)
        self.starts.report(now)

    # -- workers: start -----------------------------------------------------------------

    def _start_worker(self, slot_failures: int = 0) -> None:
        """Start a worker for one slot (see WorkerStarts.start) and watch it:
        its socket and its exit, in the fleet's selector."""
        w = self.starts.start(slot_failures, self.workers)
        if w is None:
            return  # counted, and the slot retried with its back-off
        w.on_io = lambda mask: self._on_worker(w, mask)
        self.workers.append(w)
        self.selector.register(w.sock, selectors.EVENT_READ, w.on_io)
        self._watch_exit(w)
        log.info("worker %d started", w.pid)

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
        """Start workers for the slots due (a few per turn: see
        WorkerStarts.take_due); none when shutting down with nothing queued."""
        needed = not (self.core.shutting_down and not self.queue)
        for failures in self.starts.take_due(now, needed):
            self._start_worker(failures)

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
            elif self.memory is not None:
                self.memory.recycle_if_over(w, now)
        elif kind == _READY:
            if self.memory is not None and self.memory.over_at_start(w):
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
        w.detach_io()
        w.process.close()
        if w.rss_probe is not None:
            w.rss_probe.close()
        self._settle_jobs(w, reason, exitcode)
        if self.core.shutting_down and not self.queue:
            return  # no replacement needed to finish
        if not w.ever_ready:
            log.warning("worker %d failed to start (%s)", w.pid, reason)
            self.starts.slot_failed(*w.start_failure(reason, exitcode), w.slot_failures + 1)
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

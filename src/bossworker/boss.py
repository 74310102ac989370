"""The Boss: one single-threaded event loop that owns every worker.

Who talks to whom::

      main process                      Boss process                 workers
    +---------------+   socketpair   +------------------+  socketpair  +----------+
    | client.Client | <------------> | Boss.run()       | <----------> | worker 1 |
    |  (no threads) |  JOB, SHUTDOWN |  queue of frames | <----------> | worker 2 |
    +---------------+  RESULT, ...   |  WorkerRecords   | <----------> | worker N |
                                     +------------------+              +----------+

The Boss reads jobs from main eagerly into its queue, hands them to workers,
and writes answers back to main whenever main's socket takes them.  It never
unpickles a job or a result: it reads frame headers and forwards the raw
bytes, so no payload can crash it.

It is the only owner of the pool's state (one loop, no threads, no locks).
Each turn of the loop:

1. dispatch queued jobs: idle workers first, then, when every worker is busy
   and jobs are still waiting, a few more to each worker (pipelining), as
   many as keep it from ever waiting for the next job;
2. wait in ``select`` until a socket is ready or the nearest deadline is due;
3. handle what is ready: frames from main, answers from workers, worker
   exits (each worker's pidfd, or where there are none its process
   sentinel, is watched beside its socket, so a death is noticed in the
   same wait as a result; a pidfd also sees the death when a helper the
   handler forked still holds the worker's descriptors);
4. expire deadlines: a job past its timeout (plus a grace period for the
   worker's own SIGALRM to act) gets its worker killed; the job is answered
   TIMED_OUT, its worker is replaced.  Killing works even on C code that
   ignores signals;
5. restart dead workers (with a back-off for workers that fail during
   start-up), and check that main is still alive.

Exactly-once: a job is in the queue, or in exactly one worker's ``inflight``
deque, until its answer is put in main's send queue.  When a worker dies,
the job it was running is answered with an ERROR naming the exit status, and
the jobs sent ahead to it that it never started go back to the front of the
queue.

Shutting down gracefully: after main's SHUTDOWN, the Boss finishes the
queue, tells each worker SHUTDOWN (they run their exit handler and leave),
reaps them, sends BYE and leaves once main's socket has taken every byte.
A SIGTERM, or main's death (its pidfd, end-of-file on main's socket, or a
new parent process), makes the Boss kill its workers and leave at once.

Each worker leads its own process group; whenever a worker goes (killed,
dead, or exited cleanly after recycling or shutdown), the Boss SIGKILLs
its group before reaping it, so what its handlers started goes with it.
"""

from __future__ import annotations

import contextlib
import enum
import gc
import json
import logging
import math
import multiprocessing
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Any

from .errors import (
    INIT_TIMEOUT_ERROR,
    MEMORY_AT_START_ERROR,
    MEMORY_LIMIT_ERROR,
    PROTOCOL_VIOLATION_ERROR,
    START_FAILED_ERROR,
)
from .memory import CHECK_INTERVAL, RssProbe, mib, shown_over
from .portable import make_selector, send_chunks
from .process import (
    Closable,
    OwnedFd,
    close_inherited,
    exit_now,
    ignore_interrupts,
    kill_group,
    open_pidfd,
    preload_parent_death_signal,
    signal_description,
)
from .protocol import (
    Decoder,
    Flag,
    Frame,
    InitFailure,
    Kind,
    ProtocolError,
    RetryOn,
    SendQueue,
    answer_header,
    encode,
    job_retry,
)
from .worker import PickledAtSpawn, SpecError, WorkerSpec, describe_exception, run_worker, unpickle_spec

__all__ = ["BossConfig", "run_boss"]

log = logging.getLogger("bossworker")

# How long after a job's deadline the worker's own SIGALRM gets to answer
# before the Boss kills the worker.
TIMEOUT_GRACE = 0.25
# How long a worker may take to exit after its socket closed before it is killed.
EXIT_GRACE = 1.0
# How long a worker told to leave (shutdown, recycling) may take to finish its
# init_handler and exit_handler before it is killed: a handler that never
# returns must not hold a graceful shutdown forever.
HANDLER_EXIT_LIMIT = 30.0
# How often the Boss checks that main is still its parent.
PARENT_CHECK_INTERVAL = 0.5
# Back-off for workers that die before they are ready: 0.1 s, 0.2 s, ... 5 s.
RESPAWN_BACKOFF_FIRST = 0.1
RESPAWN_BACKOFF_MAX = 5.0
# Start-up failures in a row (no worker became ready in between) after which,
# while no worker is alive, queued jobs are answered with an ERROR instead of
# waiting.  A worker that reports an init_handler failure, or exits with a
# code before it is ready (an import error under spawn), counts towards the
# first number; one killed by a signal while starting (an operator, the OOM
# killer, a test's random killer) is not proof of a broken pool, so only many
# of those in a row count.
PERSISTENT_FAILURES = 3
PERSISTENT_KILLS = 10
# Pipelining: keep about this much work queued in each busy worker, and
# never more than MAX_DEPTH jobs.  Enough to hide the Boss<->worker round
# trip (~0.1 ms here) for tiny jobs; small, because a job sent ahead waits
# behind its worker's running job even if that one turns out to be slow.
PIPELINE_SECONDS = 0.001
MAX_DEPTH = 32


@dataclass(frozen=True, slots=True)
class BossConfig:
    """Everything the Boss needs. Picklable when the worker spec is."""

    worker: WorkerSpec
    worker_count: int
    start_method: str
    main_pid: int
    # The memory cap in bytes (max_worker_memory=), or None: no watching at
    # all.  A worker whose resident size passes it mid-job is killed and
    # its job answered with MEMORY_LIMIT_ERROR; one past it after an answer
    # is retired (see Boss._check_memory, Boss._recycle_if_over_memory).
    max_worker_memory: int | None = None


class WorkerState(enum.Enum):
    """Where a worker is in its life. Jobs go only to SERVING workers."""

    STARTING = "starting"  # started; its READY (or INIT_FAILED) has not come
    SERVING = "serving"  # ready; takes jobs (idle when ``inflight`` is empty)
    STOPPING = "stopping"  # told to leave (shutdown or recycling); takes no jobs
    DEAD = "dead"  # its socket is closed; waiting to reap the process


@dataclass(eq=False, slots=True)
class WorkerRecord:
    """One worker process as the Boss sees it."""

    process: BaseProcess
    sock: socket.socket
    pid: int
    state: WorkerState = WorkerState.STARTING
    decoder: Decoder = field(default_factory=Decoder)
    out: SendQueue = field(default_factory=SendQueue)
    # Jobs sent and not answered, oldest first.  The head is running; it
    # started at ``started_at`` (the arrival of the previous answer).
    inflight: deque[Frame] = field(default_factory=deque)
    started_at: float = 0.0
    jobs_done: int = 0
    jobs_sent: int = 0
    # A moving average of one job's run time, as the worker measured it.
    service_time: float = 0.0
    dead_since: float = 0.0
    ever_ready: bool = False
    retiring: bool = False  # told to leave, or leaving after max_jobs: exit 0 is expected
    leave_by: float = math.inf  # when a retiring worker is killed if it is still there
    init_error: str | None = None
    init_failure: int = InitFailure.WORKERS  # what its INIT_FAILED said failed
    start_by: float = math.inf  # when a worker still STARTING is killed (init_timeout)
    answered_head: bool = False  # the head was already answered (timeout kill)
    pidfd: OwnedFd | None = None  # readable once the process exited (None: its sentinel is watched)
    timed_out_head: bool = False  # killed for its head's deadline, answered (or retried) at its exit
    # With a memory cap only: reads the worker's resident size; when it was
    # last read; and whether it was found past the cap after an answer (it
    # then takes no more jobs and is retired once its jobs in flight are done).
    rss_probe: RssProbe | None = None
    memory_checked_at: float = 0.0
    over_memory: bool = False
    # The memory cap killed it mid-job: the ERROR text, answered (or retried) at its exit.
    memory_kill_text: str | None = None

    def deadline(self) -> float:
        """When the running job's time is up, grace included (inf if none)."""
        if self.state is not WorkerState.SERVING or not self.inflight:
            return math.inf
        timeout = self.inflight[0].timeout
        if timeout <= 0:
            return math.inf
        return self.started_at + timeout + TIMEOUT_GRACE

    def memory_check_due(self) -> float:
        """When the running job's worker is next measured against the memory
        cap (inf if no job runs).  A job is first measured CHECK_INTERVAL
        after it started, so jobs shorter than that are only ever measured
        after they answer."""
        if self.state is not WorkerState.SERVING or not self.inflight or self.answered_head:
            return math.inf
        return max(self.started_at, self.memory_checked_at) + CHECK_INTERVAL


class _ForcedStop(BaseException):
    """Raised by the SIGTERM handler: kill everything and leave now."""


class Boss:
    """The event loop. See the module docstring for the whole story."""

    def __init__(self, main_sock: socket.socket, config: BossConfig) -> None:
        self.config = config
        # typeshed's BaseContext lacks Process; every concrete context has it.
        self.ctx: Any = multiprocessing.get_context(config.start_method)
        self.main = main_sock
        self.main.setblocking(False)
        self.main_in = Decoder(config.worker.read_size)
        self.main_out = SendQueue()
        self.main_open = True  # main has not closed its side
        self.selector = make_selector()
        self.selector.register(self.main, selectors.EVENT_READ, self._on_main)
        # Jobs waiting for a worker, as raw frames: a bytes object each and
        # nothing more, so a million queued tiny jobs stay small.
        self.queue: deque[bytes | bytearray] = deque()
        self.workers: list[WorkerRecord] = []
        self.respawn_at: list[float] = []  # one entry per slot waiting for a new worker
        self.init_failures = 0  # start-up deaths in a row, since a worker last became ready
        self.init_errors = 0  # of those, the ones that were not kills by a signal
        self.last_init_error = ""
        self.last_init_failure: int = InitFailure.WORKERS
        # What a worker process gets: the spec itself when forked; else
        # pickled as it starts and unpickled by the worker itself, which can
        # then report a handler it cannot import (see PickledAtSpawn).
        self.worker_spec: WorkerSpec | PickledAtSpawn = config.worker
        if config.start_method != "fork":
            self.worker_spec = PickledAtSpawn(config.worker)
        self.draining = False  # main asked for a graceful shutdown
        self.bye_sent = False
        self.announced = False  # main has been told READY or INIT_FAILED
        self.next_parent_check = 0.0
        self.main_pidfd = self._watch_main()
        # Counters for STATS.
        self.added = 0
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0  # dropped from the queue by a CANCEL: never answered
        self.retried = 0  # failed attempts queued again (retries=), not answered
        # Failed attempts so far of the jobs being retried (retries=), by id.
        self.attempts: dict[int, int] = {}
        self.workers_started = 0
        self.memory_kills = 0  # workers killed mid-job past the memory cap
        self.memory_recycles = 0  # workers retired between jobs past the memory cap

    # -- the loop ------------------------------------------------------------

    def run(self) -> None:
        """Serve until main shut the pool down and has every answer."""
        for _ in range(self.config.worker_count):
            self._start_worker()
        while True:
            self._announce()
            self._dispatch()
            self._finish_draining()
            self._flush_main()
            if self._finished():
                break
            for key, mask in self.selector.select(self._next_timeout()):
                key.data(mask)
            now = time.monotonic()
            self._expire_deadlines(now)
            if self.config.max_worker_memory is not None:
                self._check_memory(now)
            self._kill_overdue(now)
            self._expire_starts(now)
            self._respawn_due(now)
            self._check_parent(now)
        self.selector.close()

    def _announce(self) -> None:
        """Tell main, once, that the pool serves (a worker is ready) or
        cannot (every initial worker failed to start)."""
        if self.announced:
            return
        if any(w.ever_ready for w in self.workers):
            self._send_to_main(encode(Kind.READY))
            self.announced = True
        elif self.init_failures >= self.config.worker_count:
            text = self.last_init_error.encode("utf-8", "replace")
            self._send_to_main(encode(Kind.INIT_FAILED, self.last_init_failure, text))
            self.announced = True

    def _finished(self) -> bool:
        if not self.main_open:
            return True  # nobody is left to answer
        return self.bye_sent and not self.main_out

    def _next_timeout(self) -> float:
        now = time.monotonic()
        soonest = self.next_parent_check
        watch_memory = self.config.max_worker_memory is not None
        for w in self.workers:
            soonest = min(soonest, w.deadline())
            if watch_memory:
                soonest = min(soonest, w.memory_check_due())
            if w.state is WorkerState.STARTING:
                soonest = min(soonest, w.start_by)
            if w.state is WorkerState.DEAD:
                soonest = min(soonest, w.dead_since + EXIT_GRACE)
            elif w.state is WorkerState.STOPPING:
                soonest = min(soonest, w.leave_by)
        if self.respawn_at:
            soonest = min(soonest, min(self.respawn_at))
        return max(0.0, soonest - now)

    # -- main's side ---------------------------------------------------------

    def _on_main(self, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            self._read_main()
        if mask & selectors.EVENT_WRITE:
            self._flush_main()

    def _read_main(self) -> None:
        decoder = self.main_in
        try:
            n = self.main.recv_into(decoder.get_buffer())
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            n = 0
        if not n:
            log.debug("main closed its socket; stopping")
            self.main_open = False
            return
        decoder.buffer_updated(n)
        cancels: list[int] = []
        for frame in decoder.take():
            kind = frame.kind
            if kind == Kind.JOB:
                self.queue.append(frame.raw)
                self.added += 1
            elif kind == Kind.SHUTDOWN:
                self.draining = True
            elif kind == Kind.STATS_REQUEST:
                self._send_to_main(encode(Kind.STATS, 0, self._stats_json()))
            elif kind == Kind.CANCEL:
                cancels.append(frame.job_id)
            else:
                log.error("unexpected %s frame from main; ignored", Kind(kind).name)
        if cancels:
            self._cancel(cancels)

    def _cancel(self, job_ids: list[int]) -> None:
        """Drop the jobs in ``job_ids`` that still wait in the queue, and
        answer each CANCEL.  A job sent ahead to a worker counts as started:
        taking it back would race with the worker starting it.

        All the CANCELs of one read are handled in one pass over the queue,
        so cancelling many queued jobs at once stays linear."""
        wanted = set(job_ids)
        dropped: set[int] = set()
        kept: deque[bytes | bytearray] = deque()
        for raw in self.queue:
            job_id = Frame.parse(raw).job_id
            if job_id in wanted:
                dropped.add(job_id)
                self.config.worker.segments.discard(job_id)
            else:
                kept.append(raw)
        if dropped:
            self.queue = kept
            self.cancelled += len(dropped)
        for job_id in job_ids:
            self._send_to_main(encode(Kind.CANCEL_REPLY, job_id, b"\x01" if job_id in dropped else b"\x00"))

    def _send_to_main(self, data: bytes | bytearray) -> None:
        self.main_out.append(data)

    def _flush_main(self) -> None:
        if self.main_out and self.main_open:
            try:
                self.main_out.consume(send_chunks(self.main, self.main_out.chunks()))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self.main_open = False
                return
        self._watch(self.main, self._on_main, writing=bool(self.main_out))

    def _watch(self, sock: socket.socket, callback: Callable[[int], None], writing: bool) -> None:
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
        if self.selector.get_key(sock).events != events:
            self.selector.modify(sock, events, callback)

    def _answer(
        self, job_id: int, kind: Kind, text: str = "", flags: int = 0, pid: int = 0, ran: float = 0.0
    ) -> None:
        """Answer a job on the Boss's own account (timeout, death, init
        failure): ``pid`` is the worker that ran it (0: none), ``ran`` how
        long it ran, ``flags`` why (Flag.DIED: its worker died)."""
        self.completed += 1
        self.failed += 1
        if self.attempts:
            self.attempts.pop(job_id, None)
        if kind is Kind.TIMED_OUT:
            self.timed_out += 1
        self._send_to_main(self._answer_frame(job_id, kind, text, flags, pid, ran))

    @staticmethod
    def _answer_frame(job_id: int, kind: Kind, text: str, flags: int, pid: int, ran: float) -> bytes:
        payload = b"" if kind is Kind.TIMED_OUT else text.encode("utf-8", "replace")
        return answer_header(kind, flags, len(payload), job_id, ran, pid) + payload

    def _may_retry(self, job: Frame, cause: RetryOn) -> bool:
        """Whether ``job``'s retry settings (set by main, in its header) allow
        one more attempt after a failure of this ``cause``.  A job whose
        payload travelled in a shared-memory segment is never retried: the
        first attempt consumed it (main sends the jobs it lets be retried
        inline whenever a frame can hold them)."""
        retries, retry_on = job_retry(job.raw)
        if not retries or not retry_on & cause or job.flags & Flag.SEGMENT:
            return False
        return self.attempts.get(job.job_id, 0) < retries

    def _requeue(self, job: Frame, answer: bytes | bytearray) -> None:
        """Retry ``job`` instead of answering it with ``answer``: tell main
        (a RETRYING frame wrapping that answer, so the final outcome can list
        every attempt) and put the job at the front of the queue, where any
        live worker (the failed one is dead, or was stopped) takes it."""
        self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
        self.retried += 1
        log.warning("retrying job %d (attempt %d)", job.job_id, self.attempts[job.job_id] + 1)
        self._send_to_main(encode(Kind.RETRYING, job.job_id, answer))
        self.queue.appendleft(job.raw)

    def _fail_head(
        self, w: WorkerRecord, job: Frame, cause: RetryOn, kind: Kind, text: str, flags: int
    ) -> None:
        """``job``, the one ``w`` was running, failed for ``cause`` with
        ``w`` gone (dead, or killed at its deadline): retry it if its
        settings allow, else answer it.  (The memory cap's kill answers
        through here with RetryOn.MEMORY and Flag.MEMORY.)"""
        ran = max(0.0, time.monotonic() - w.started_at)
        if self._may_retry(job, cause):
            self._requeue(job, self._answer_frame(job.job_id, kind, text, flags, w.pid, ran))
        else:
            self._answer(job.job_id, kind, text, flags, w.pid, ran)

    def _stats_json(self) -> bytes:
        alive = [w for w in self.workers if w.state is not WorkerState.DEAD]
        return json.dumps(
            {
                "added": self.added,
                "completed": self.completed,
                "failed": self.failed,
                "timed_out": self.timed_out,
                "cancelled": self.cancelled,
                "retried": self.retried,
                "queued": len(self.queue) + sum(max(0, len(w.inflight) - 1) for w in alive),
                "running": sum(1 for w in alive if w.inflight and w.state is WorkerState.SERVING),
                "workers_alive": len(alive),
                "workers_started": self.workers_started,
                "jobs_per_worker": {str(w.pid): w.jobs_done for w in alive},
                "memory_kills": self.memory_kills,
                "memory_recycles": self.memory_recycles,
            }
        ).encode()

    # -- workers: start, dispatch, answers -------------------------------------

    def _start_worker(self) -> None:
        """Start a worker for one slot.  A failure to create it (a process or
        file limit: EAGAIN, EMFILE) is an init failure, retried with the
        back-off, never the Boss's death."""
        try:
            boss_end, worker_end = socket.socketpair()
        except OSError as exc:
            self._start_failed(exc)
            return
        inherited: list[Closable] = []
        if self.config.start_method == "fork":
            # A forked worker inherits every descriptor the Boss has; it must
            # drop the ones that are not its own (see process.close_inherited).
            inherited = [self.main, self.selector, boss_end]
            inherited += [w.sock for w in self.workers]
            inherited += [fd for fd in (self.main_pidfd, *(w.pidfd for w in self.workers)) if fd is not None]
            inherited += [w.rss_probe for w in self.workers if w.rss_probe is not None]
        process = self.ctx.Process(
            target=run_worker,
            args=(worker_end, self.worker_spec, os.getpid(), inherited),
            name="bossworker-worker",
            daemon=False,
        )
        fds_before = _open_fds() if self.config.start_method == "fork" else None
        try:
            process.start()
        except OSError as exc:
            boss_end.close()
            # multiprocessing's fork start leaks the two pipes it made when
            # os.fork() fails: close what the failed start left open.
            _close_new_fds(fds_before)
            self._start_failed(exc)
            return
        finally:
            worker_end.close()
        boss_end.setblocking(False)
        w = WorkerRecord(process, boss_end, process.pid or 0, decoder=Decoder(self.config.worker.read_size))
        if self.config.worker.init_timeout > 0:
            w.start_by = time.monotonic() + self.config.worker.init_timeout
        if self.config.max_worker_memory is not None:
            try:
                # Opened now, while the new process is our unreaped child:
                # the descriptor can only ever describe this process.
                w.rss_probe = RssProbe(w.pid)
            except OSError as exc:
                log.warning("worker %d: cannot watch its memory (%s); its cap is not enforced", w.pid, exc)
        self.workers.append(w)
        self.workers_started += 1
        self.selector.register(boss_end, selectors.EVENT_READ, lambda mask: self._on_worker(w, mask))
        self._watch_exit(w)
        log.info("worker %d started", w.pid)

    def _start_failed(self, exc: OSError) -> None:
        text = START_FAILED_ERROR.format(error=f"{type(exc).__name__}: {exc}")
        log.warning("%s", text)
        self._note_start_failure(text, InitFailure.WORKERS, killed=False)

    def _note_start_failure(self, text: str, failure: int, killed: bool) -> None:
        """A slot failed to get a serving worker: retry it after a back-off
        that doubles with each failure in a row; when failures persist and no
        worker is left, answer the queue instead of letting it wait."""
        self.init_failures += 1
        self.last_init_error = text
        self.last_init_failure = failure
        delay = min(RESPAWN_BACKOFF_MAX, RESPAWN_BACKOFF_FIRST * 2 ** (self.init_failures - 1))
        log.warning("retrying a worker start in %.1f s", delay)
        self.respawn_at.append(time.monotonic() + delay)
        self.init_errors += not killed
        if (
            self.init_errors >= max(PERSISTENT_FAILURES, self.config.worker_count)
            or self.init_failures >= PERSISTENT_KILLS
        ):
            self._fail_if_no_worker_can_serve()

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

    def _budget(self, w: WorkerRecord) -> int:
        """How many more jobs ``w`` may be sent (recycling after max_jobs,
        or because it is past the memory cap)."""
        if w.over_memory:
            return 0
        limit = self.config.worker.max_jobs
        return MAX_DEPTH if limit is None else limit - w.jobs_sent

    def _depth(self, w: WorkerRecord) -> int:
        """How many jobs to keep in flight on a busy worker (at least 1)."""
        # Until a job has been timed, assume it is long: a second job queued
        # behind a long one would wait while another worker may sit idle.
        if w.jobs_done == 0 or w.service_time >= PIPELINE_SECONDS:
            return 1
        return min(MAX_DEPTH, 1 + int(PIPELINE_SECONDS / max(w.service_time, 1e-6)))

    def _dispatch(self) -> None:
        queue = self.queue
        if not queue:
            return
        serving = [w for w in self.workers if w.state is WorkerState.SERVING]
        # Idle workers first, one job each, so work spreads before it deepens.
        for w in serving:
            if not queue:
                return
            if not w.inflight and self._budget(w) > 0:
                self._send_jobs(w, 1)
        if not queue or any(not w.inflight for w in serving):
            return
        # Every worker is busy and jobs still wait: send some ahead, but no
        # worker more than its fair share of the queue (counting workers
        # still starting), so the tail of a batch stays spread out.
        starting = sum(1 for w in self.workers if w.state is WorkerState.STARTING)
        for w in serving:
            share = len(queue) // (len(serving) + starting)
            room = min(self._depth(w), self._budget(w) + len(w.inflight)) - len(w.inflight)
            if min(room, share) > 0:
                self._send_jobs(w, min(room, share))

    def _send_jobs(self, w: WorkerRecord, count: int) -> None:
        queue = self.queue
        if not w.inflight:
            w.started_at = time.monotonic()
        for _ in range(min(count, len(queue))):
            raw = queue.popleft()
            w.inflight.append(Frame.parse(raw))
            w.out.append(raw)
            w.jobs_sent += 1
        self._flush_worker(w)

    def _flush_worker(self, w: WorkerRecord) -> None:
        if w.state is WorkerState.DEAD:
            return
        if w.out:
            try:
                w.out.consume(send_chunks(w.sock, w.out.chunks()))
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                return  # it died; its sentinel will tell
        self._watch(w.sock, lambda mask: self._on_worker(w, mask), writing=bool(w.out))

    def _on_worker(self, w: WorkerRecord, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._flush_worker(w)
        if mask & selectors.EVENT_READ:
            self._read_worker(w)

    def _read_worker(self, w: WorkerRecord) -> bool:
        """Read what ``w`` sent. True if bytes came (there may be more)."""
        if w.state is WorkerState.DEAD:
            return False
        try:
            n = w.sock.recv_into(w.decoder.get_buffer())
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            n = 0
        if not n:
            self._lose_socket(w)
            return False
        violation: Exception | None = None
        try:
            w.decoder.buffer_updated(n)
        except (ProtocolError, MemoryError) as exc:
            violation = exc  # the frames before it are good: handle them first
        for frame in w.decoder.take():
            self._on_worker_frame(w, frame)
        if violation is not None:
            self._protocol_violation(w, f"{type(violation).__name__}: {violation}")
            return False
        return True

    def _on_worker_frame(self, w: WorkerRecord, frame: Frame) -> None:
        if w.state is WorkerState.DEAD:
            return  # killed for a frame before this one: the rest is not trusted
        kind = frame.kind
        if kind in (Kind.RESULT, Kind.ERROR, Kind.TIMED_OUT):
            if not w.inflight or w.inflight[0].job_id != frame.job_id:
                self._protocol_violation(w, f"an answer to job {frame.job_id} came out of turn")
                return
            job = w.inflight.popleft()
            now = time.monotonic()
            # The worker says how long the job took; the time since the last
            # answer would also count time the worker spent waiting for work.
            ran = frame.timeout if frame.timeout > 0 else now - w.started_at
            w.service_time = ran if w.jobs_done == 0 else 0.8 * w.service_time + 0.2 * ran
            w.started_at = now  # the next job in flight starts now
            w.jobs_done += 1
            if kind == Kind.TIMED_OUT and self._may_retry(job, RetryOn.TIMED_OUT):
                log.warning("job %d timed out in worker %d", frame.job_id, w.pid)
                self._requeue(job, frame.raw)
            else:
                self.completed += 1
                if self.attempts:
                    self.attempts.pop(frame.job_id, None)
                if kind != Kind.RESULT:
                    self.failed += 1
                    if kind == Kind.TIMED_OUT:
                        self.timed_out += 1
                        log.warning("job %d timed out in worker %d", frame.job_id, w.pid)
                self._send_to_main(frame.raw)
            if self.config.worker.max_jobs is not None and w.jobs_done >= self.config.worker.max_jobs:
                w.state = WorkerState.STOPPING  # it exits by itself now
                self._retire(w)
            elif self.config.max_worker_memory is not None:
                self._recycle_if_over_memory(w, now)
        elif kind == Kind.READY:
            if self.config.max_worker_memory is not None and self._over_memory_at_start(w):
                return
            w.ever_ready = True
            self.init_failures = self.init_errors = 0
            if w.state is WorkerState.STARTING:
                w.state = WorkerState.SERVING
        elif kind == Kind.INIT_FAILED:
            w.init_error = bytes(frame.payload).decode("utf-8", "replace")
            w.init_failure = frame.job_id
        else:
            self._protocol_violation(w, f"a {Kind(kind).name} frame came from a worker")

    def _protocol_violation(self, w: WorkerRecord, detail: str) -> None:
        """Bytes from ``w`` that are not a valid answer (a handler wrote to the
        socket, say): this costs that worker and its running job only.  The
        job gets an ERROR; the worker is killed, and replaced as after any
        death (jobs sent ahead go back to the queue)."""
        if w.state is WorkerState.DEAD:
            return
        text = PROTOCOL_VIOLATION_ERROR.format(detail=detail)
        log.error("worker %d: %s; killing it", w.pid, detail)
        if w.state is WorkerState.SERVING and w.inflight and not w.answered_head and not w.timed_out_head:
            self._answer(
                w.inflight[0].job_id, Kind.ERROR, text, pid=w.pid, ran=time.monotonic() - w.started_at
            )
            w.answered_head = True
        elif not w.ever_ready:
            w.init_error = text
        w.retiring = False  # its exit is not a clean one
        self._kill(w)

    # -- workers: death and replacement ----------------------------------------

    def _lose_socket(self, w: WorkerRecord) -> None:
        """The worker's socket is closed: stop listening; wait for its exit."""
        if w.state is WorkerState.DEAD:
            return
        self.selector.unregister(w.sock)
        w.sock.close()
        w.out.clear()
        w.state = WorkerState.DEAD
        w.dead_since = time.monotonic()

    def _kill(self, w: WorkerRecord) -> None:
        kill_group(w.pid)
        self._lose_socket(w)

    def _on_exit(self, w: WorkerRecord) -> None:
        """``w``'s process has exited: collect its last words, answer, replace."""
        # Its last answers may still sit in the socket, read them first: the
        # sentinel and the socket become ready together, in no set order.
        while self._read_worker(w):
            pass
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
        if w.retiring and exitcode == 0:
            log.info("worker %d exited", w.pid)
        else:
            log.warning("worker %d exited (%s)", w.pid, reason)
        self.workers.remove(w)
        w.process.close()
        if w.rss_probe is not None:
            w.rss_probe.close()
        inflight = w.inflight
        if inflight:
            # Now that the process is gone, nothing can still write its segments.
            self.config.worker.segments.discard(inflight[0].job_id)
        head: Frame | None = None
        if inflight:
            head = inflight.popleft()
        # Jobs sent ahead that never started go back to the front, in order
        # (behind the head, if it is retried: _fail_head queues it first).
        self.queue.extendleft(reversed([frame.raw for frame in inflight]))
        inflight.clear()
        if head is not None and w.timed_out_head:
            self._fail_head(w, head, RetryOn.TIMED_OUT, Kind.TIMED_OUT, "", 0)
        elif head is not None and w.memory_kill_text is not None:
            self._fail_head(w, head, RetryOn.MEMORY, Kind.ERROR, w.memory_kill_text, Flag.MEMORY)
        elif head is not None and not w.answered_head:
            log.warning("worker %d died (%s) while running job %d", w.pid, reason, head.job_id)
            text = f"BossWorkerAsync: worker died ({reason}) while running this job"
            self._fail_head(w, head, RetryOn.DIED, Kind.ERROR, text, Flag.DIED)
        if self.draining and not self.queue:
            return  # no replacement needed to finish
        if not w.ever_ready:
            killed = w.init_error is None and (exitcode or 0) < 0
            log.warning("worker %d failed to start (%s)", w.pid, reason)
            text = w.init_error or f"worker exited ({reason}) before it was ready"
            self._note_start_failure(text, w.init_failure, killed)
        else:
            self._start_worker()

    def _fail_if_no_worker_can_serve(self) -> None:
        """With every slot failing at start-up, answer the queue instead of
        letting it wait forever."""
        if any(w.state is not WorkerState.DEAD for w in self.workers):
            return
        text = f"BossWorkerAsync: no worker could start: {self.last_init_error}"
        while self.queue:
            job_id = Frame.parse(self.queue.popleft()).job_id
            self.config.worker.segments.discard(job_id)
            self._answer(job_id, Kind.ERROR, text)

    def _respawn_due(self, now: float) -> None:
        due = [t for t in self.respawn_at if t <= now]
        if not due:
            return
        self.respawn_at = [t for t in self.respawn_at if t > now]
        if self.draining and not self.queue:
            return  # nothing left to do for them
        for _ in due:
            self._start_worker()

    def _expire_starts(self, now: float) -> None:
        """Kill a worker whose start-up (its init_handler) overran
        init_timeout: an init failure, with a text that says so."""
        for w in list(self.workers):
            if w.state is WorkerState.STARTING and w.start_by <= now:
                seconds = self.config.worker.init_timeout
                w.init_error = INIT_TIMEOUT_ERROR.format(seconds=seconds)
                log.warning("worker %d: init_handler did not return within %g s; killing it", w.pid, seconds)
                w.start_by = math.inf  # killed once is enough
                self._kill(w)

    def _expire_deadlines(self, now: float) -> None:
        for w in list(self.workers):
            if w.deadline() <= now:
                head = w.inflight[0]
                log.warning("job %d overran its deadline in worker %d; killing it", head.job_id, w.pid)
                if self._may_retry(head, RetryOn.TIMED_OUT):
                    # Decided at its exit: the job must not run again while
                    # this process may still write its result segment.
                    w.timed_out_head = True
                else:
                    self._answer(head.job_id, Kind.TIMED_OUT, pid=w.pid, ran=now - w.started_at)
                    w.answered_head = True
                self._kill(w)

    # -- workers: the memory cap ----------------------------------------------

    def _check_memory(self, now: float) -> None:
        """Measure each worker whose running job is due a look; kill one past
        the cap (SIGKILL: it may be deep in C code) and answer its job with
        MEMORY_LIMIT_ERROR and Flag.MEMORY.  Its replacement, and the return
        of the jobs sent ahead to it, happen as after any death (_on_exit)."""
        cap = self.config.max_worker_memory
        assert cap is not None
        for w in list(self.workers):
            if w.memory_check_due() > now or w.rss_probe is None:
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
            if self._may_retry(head, RetryOn.MEMORY):
                # Decided at its exit, as for a deadline (see _expire_deadlines).
                w.memory_kill_text = text
            else:
                self._answer(
                    head.job_id, Kind.ERROR, text, flags=Flag.MEMORY, pid=w.pid, ran=now - w.started_at
                )
                w.answered_head = True
            w.retiring = False  # its death is not a clean exit
            self._kill(w)

    def _recycle_if_over_memory(self, w: WorkerRecord, now: float) -> None:
        """After ``w`` answered: if it is past the cap (a leaky handler), it
        takes no more jobs and, once the jobs sent ahead to it are done, is
        told to leave (its exit_handler runs) and replaced, before a job of
        its has to be killed for memory it leaked in earlier jobs.  Measured
        after every answer that leaves it idle, else every CHECK_INTERVAL."""
        cap = self.config.max_worker_memory
        if w.rss_probe is None or cap is None or w.state is not WorkerState.SERVING:
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
            w.state = WorkerState.STOPPING
            self._retire(w)
            w.out.append(encode(Kind.SHUTDOWN))
            self._flush_worker(w)

    def _over_memory_at_start(self, w: WorkerRecord) -> bool:
        """A worker past the cap as soon as it is ready would see every job
        killed: refuse it as an init failure that names both sizes."""
        cap = self.config.max_worker_memory
        rss = w.rss_probe.rss() if w.rss_probe is not None else None
        if cap is None or rss is None or rss <= cap:
            return False
        w.init_error = MEMORY_AT_START_ERROR.format(**shown_over(rss, cap))
        w.init_failure = InitFailure.WORKERS
        log.warning("worker %d: %s", w.pid, w.init_error)
        self._kill(w)
        return True

    def _retire(self, w: WorkerRecord) -> None:
        w.retiring = True
        w.leave_by = time.monotonic() + HANDLER_EXIT_LIMIT

    def _kill_overdue(self, now: float) -> None:
        """Kill a worker whose socket closed but which has not exited, and a
        retiring worker whose handlers did not let it leave in time."""
        for w in self.workers:
            if w.state is WorkerState.DEAD and now - w.dead_since >= EXIT_GRACE:
                kill_group(w.pid)
                w.dead_since = math.inf  # killed once is enough
            elif w.state is WorkerState.STOPPING and now >= w.leave_by:
                log.warning(
                    "worker %d did not exit within %.0f s of being told to; killing it",
                    w.pid,
                    HANDLER_EXIT_LIMIT,
                )
                w.retiring = False  # its death is not a clean exit
                self._kill(w)

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
        self.main_open = False

    def _check_parent(self, now: float) -> None:
        if now < self.next_parent_check:
            return
        self.next_parent_check = now + PARENT_CHECK_INTERVAL
        # Under forkserver our parent is the fork server, not main; main's
        # pidfd is then the sign of main's death (without pidfds, the
        # closed socket).
        if self.config.start_method != "forkserver" and os.getppid() != self.config.main_pid:
            log.debug("main process is gone; stopping")
            self.main_open = False

    # -- shutting down ---------------------------------------------------------

    def _finish_draining(self) -> None:
        """After SHUTDOWN: once every job is answered, retire the workers,
        then say BYE."""
        if not self.draining or self.bye_sent or self.queue:
            return
        if any(w.inflight for w in self.workers):
            return
        self.respawn_at.clear()
        for w in self.workers:
            if w.state in (WorkerState.STARTING, WorkerState.SERVING):
                w.state = WorkerState.STOPPING
                self._retire(w)
                w.out.append(encode(Kind.SHUTDOWN))
                self._flush_worker(w)
        if not self.workers:
            self._send_to_main(encode(Kind.BYE))
            self.bye_sent = True

    def kill_all(self) -> None:
        """Kill and reap every worker, with its process group, at once
        (forced stop, main gone)."""
        for w in self.workers:
            kill_group(w.pid)
        for w in self.workers:
            with contextlib.suppress(Exception):
                w.process.join()
            if w.pidfd is not None:
                w.pidfd.close()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _ForcedStop


def _open_fds() -> set[int] | None:
    """This process's open descriptors (None where /proc cannot tell)."""
    try:
        listed = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        return None
    fds = set()
    for fd in listed:
        # Skip the descriptor the listing itself used (closed by now): a
        # new one may get its number.
        with contextlib.suppress(OSError):
            os.fstat(fd)
            fds.add(fd)
    return fds


def _close_new_fds(before: set[int] | None) -> None:
    """Close the descriptors opened since ``before`` was taken.  The Boss is
    single-threaded, so they can only be those of the call in between."""
    after = _open_fds()
    if before is None or after is None:
        return
    for fd in after - before:
        with contextlib.suppress(OSError):
            os.close(fd)


def _tell_main_start_failed(main_sock: socket.socket, failure: InitFailure, text: str) -> None:
    """Before the Boss leaves without having served: give main the cause, so
    that the constructor raises with it instead of "the Boss died"."""
    with contextlib.suppress(OSError):
        main_sock.settimeout(5.0)  # main waits for this; never hang on it
        main_sock.sendall(encode(Kind.INIT_FAILED, failure, text.encode("utf-8", "replace")))


def run_boss(
    main_sock: socket.socket, config: BossConfig | bytes, inherited: Iterable[Closable] = ()
) -> None:
    """The body of the Boss process. Never returns: it ends in ``os._exit``.

    ``config`` comes pickled (bytes) unless the Boss was forked: unpickling
    it here lets a handler this process cannot import be reported to main,
    with the error, rather than kill the process in multiprocessing's
    bootstrap.  Any failure before the Boss has told main READY is reported
    the same way (INIT_FAILED naming what failed)."""
    close_inherited(inherited)
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
        boss = Boss(main_sock, config)
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
        if boss is None or not boss.announced:
            _tell_main_start_failed(main_sock, InitFailure.BOSS, describe_exception(exc))
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if boss is not None:
            boss.kill_all()
            if not boss.bye_sent:
                # Main is gone or stopped us by force: nobody will read the
                # segments still waiting.
                boss.config.worker.segments.discard_all()
    exit_now(code)

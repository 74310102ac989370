"""One worker link, sans-IO: what a supervisor says to ONE worker and hears back.

A link knows, for one worker process, everything that does not need a
socket or a clock of its own (times are passed in)::

    supervisor                                   worker
       | ------------------------------------->  |  starts; runs init_handler
       | <------------- READY | INIT_FAILED ---  |  handshake: ready() / init_failed()
       | --- JOB, JOB, JOB (sent ahead) ------>  |  take_jobs(): the head runs, the rest wait
       | <------ RESULT | ERROR | TIMED_OUT ---  |  answered(): must match the head
       |           ...                           |
       | --- SHUTDOWN ------------------------>  |  retire(): it runs exit_handler and leaves
       x  (EOF, exit)                            |  lost(); at its exit: exit_failure()

Its state (:class:`LinkState`) changes only through the methods below, and
what happened to the running job when the supervisor had to kill the worker
(:attr:`WorkerLink.fate`) is one value, not a set of flags.  The local Boss's
``WorkerRecord`` is a link plus its process and socket; the rules of a
deadline, its grace, pipelining depth and a death's answer live here.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from ..errors import exited_before_ready_text, worker_died_error
from ..jobs import Facts
from ..protocol import Flag, Frame, InitFailure, Kind, RetryOn

__all__ = [
    "ANSWERED",
    "DEAD",
    "MAX_DEPTH",
    "PIPELINE_SECONDS",
    "SEND_AHEAD_BELOW",
    "SERVING",
    "STARTING",
    "STOPPING",
    "TIMEOUT_GRACE",
    "HeadFate",
    "LinkState",
    "OutOfTurn",
    "WorkerLink",
]

# How long after a job's deadline the worker's own SIGALRM gets to answer
# before the supervisor kills the worker.
TIMEOUT_GRACE = 0.25
# Pipelining: keep about this much work queued in each busy worker, and
# never more than MAX_DEPTH jobs.  Enough to hide the Boss<->worker round
# trip (~0.1 ms here) for tiny jobs; small, because a job sent ahead waits
# behind its worker's running job even if that one turns out to be slow.
PIPELINE_SECONDS = 0.001
MAX_DEPTH = 32
# A worker whose jobs take from PIPELINE_SECONDS up to this long keeps one
# job sent ahead: it finds its next job in its socket instead of waiting a
# round trip through the Boss for it (~0.1 ms: 10 % of a 1 ms job).  Above,
# that wait costs under 1 %, less than a job stuck behind a long one would.
SEND_AHEAD_BELOW = 0.01


class LinkState(enum.Enum):
    """Where a worker is in its life. Jobs go only to SERVING workers."""

    STARTING = "starting"  # started; its READY (or INIT_FAILED) has not come
    SERVING = "serving"  # ready; takes jobs (idle when ``inflight`` is empty)
    STOPPING = "stopping"  # told to leave (shutdown or recycling); takes no jobs
    DEAD = "dead"  # its socket is closed; waiting to reap the process


# The states bound to plain names, for the per-turn paths here and in the
# fleet: on Python 3.11 every ``LinkState.X`` goes through
# EnumType.__getattr__ (~0.3 µs, ten times a plain name), and a Boss turn
# asks each worker's state several times.
STARTING = LinkState.STARTING
SERVING = LinkState.SERVING
STOPPING = LinkState.STOPPING
DEAD = LinkState.DEAD


@dataclass(frozen=True, slots=True)
class HeadFate:
    """How the running job of a worker the supervisor killed is to end.

    ``cause`` None (:data:`ANSWERED`): the supervisor has answered it
    already.  Otherwise the answer is given (or the job retried, if its
    settings allow a retry for ``cause``) once the process has exited: the
    job must not run again while this process may still write its result.
    """

    cause: RetryOn | None
    kind: Kind = Kind.ERROR
    text: str = ""
    flags: int = 0
    facts: Facts | None = None  # what the supervisor measured (exit code, memory)


#: The fate of a head the supervisor answered itself (a deadline without a
#: retry, a protocol violation, a memory kill without a retry).
ANSWERED = HeadFate(None)
#: The fate of a head killed at its deadline that may be retried.
TIMED_OUT = HeadFate(RetryOn.TIMED_OUT, Kind.TIMED_OUT)


class OutOfTurn(Exception):
    """A worker answered a job that is not its running one."""


class WorkerLink:
    """The supervisor's side of one worker, without its process or socket."""

    __slots__ = (
        "dead_since",
        "ever_ready",
        "fate",
        "inflight",
        "init_error",
        "init_failure",
        "jobs_done",
        "jobs_sent",
        "leave_by",
        "memory_checked_at",
        "over_memory",
        "pid",
        "service_time",
        "start_by",
        "started_at",
        "state",
        "told_to_leave",
    )

    def __init__(self, pid: int, now: float, init_timeout: float = 0.0) -> None:
        self.pid = pid
        self.state = STARTING
        # Jobs sent and not answered, oldest first.  The head is running; it
        # started at ``started_at`` (the arrival of the previous answer).
        self.inflight: deque[Frame] = deque()
        self.started_at = 0.0
        self.jobs_done = 0
        self.jobs_sent = 0
        # A moving average of one job's run time, as the worker measured it.
        self.service_time = 0.0
        # When a worker still STARTING is killed (init_timeout).
        self.start_by = now + init_timeout if init_timeout > 0 else math.inf
        self.ever_ready = False
        self.init_error: str | None = None
        self.init_failure: int = InitFailure.WORKERS  # what its INIT_FAILED said failed
        # Told to leave (shutdown, recycling): an exit code 0 is then expected.
        self.told_to_leave = False
        self.leave_by = math.inf  # when a worker told to leave is killed if still there
        self.dead_since = 0.0
        self.fate: HeadFate | None = None  # set when the supervisor kills it mid-job
        # With a memory cap only: when it was last measured, and whether it
        # was found past the cap after an answer (it then takes no more jobs
        # and is retired once its jobs in flight are done).
        self.memory_checked_at = 0.0
        self.over_memory = False

    # -- the handshake ----------------------------------------------------------

    def ready(self) -> None:
        """Its READY came: it takes jobs (unless it was told to leave first)."""
        self.ever_ready = True
        if self.state is STARTING:
            self.state = SERVING

    def init_failed(self, text: str, failure: int = InitFailure.WORKERS) -> None:
        """It reported (or was found in) a failure to start; it is going."""
        self.init_error = text
        self.init_failure = failure

    def start_deadline(self) -> float:
        """When it is killed if its start-up (init_handler) has not ended
        (inf: no limit, or it is over).  Told to leave before it was ready
        (a shutdown while a replacement starts), it is still starting: the
        limit holds, or a stuck init_handler would hold the shutdown for the
        whole leave limit."""
        if self.ever_ready or self.state is SERVING or self.state is DEAD:
            return math.inf
        return self.start_by

    def start_overdue(self, now: float) -> bool:
        """True, once, when a worker still starting has overrun its limit."""
        if self.start_deadline() <= now:
            self.start_by = math.inf  # killed once is enough
            return True
        return False

    # -- jobs -------------------------------------------------------------------

    def budget(self, max_jobs: int | None) -> int:
        """How many more jobs it may be sent (recycling after ``max_jobs``,
        or because it is past the memory cap)."""
        if self.over_memory:
            return 0
        return MAX_DEPTH if max_jobs is None else max_jobs - self.jobs_sent

    def depth(self) -> int:
        """How many jobs to keep in flight on it while it is busy (at least 1)."""
        # Until a job has been timed, assume it is long: a second job queued
        # behind a long one would wait while another worker may sit idle.
        if self.jobs_done == 0 or self.service_time >= SEND_AHEAD_BELOW:
            return 1
        if self.service_time >= PIPELINE_SECONDS:
            return 2
        return min(MAX_DEPTH, 1 + int(PIPELINE_SECONDS / max(self.service_time, 1e-6)))

    def take_jobs(self, queue: deque[bytes | bytearray], count: int, now: float) -> list[bytes | bytearray]:
        """Move up to ``count`` raw JOB frames from the front of ``queue`` to
        this worker's jobs in flight; return them, to be sent in order."""
        if not self.inflight:
            self.started_at = now
        taken = [queue.popleft() for _ in range(min(count, len(queue)))]
        self.inflight.extend(map(Frame.parse, taken))
        self.jobs_sent += len(taken)
        return taken

    def answered(self, frame: Frame, now: float) -> Frame:
        """An answer (RESULT, ERROR, TIMED_OUT) came: return the job it
        answers, its head.  Raises :class:`OutOfTurn` if it answers another."""
        inflight = self.inflight
        if not inflight or inflight[0].job_id != frame.job_id:
            raise OutOfTurn(f"an answer to job {frame.job_id} came out of turn")
        job = inflight.popleft()
        # The worker says how long the job took; the time since the last
        # answer would also count time the worker spent waiting for work.
        ran = frame.ran if frame.ran > 0 else now - self.started_at
        self.service_time = ran if self.jobs_done == 0 else 0.8 * self.service_time + 0.2 * ran
        self.started_at = now  # the next job in flight starts now
        self.jobs_done += 1
        return job

    def deadline(self) -> float:
        """When the running job's time is up, grace included (inf if none)."""
        if self.state is not SERVING or not self.inflight:
            return math.inf
        timeout = self.inflight[0].limit
        if timeout <= 0:
            return math.inf
        return self.started_at + timeout + TIMEOUT_GRACE

    def memory_check_due(self, interval: float) -> float:
        """When the running job's worker is next measured against the memory
        cap (inf if no job runs).  A job is first measured ``interval`` after
        it started, so shorter jobs are only ever measured after they answer."""
        if self.state is not SERVING or not self.inflight or self.fate is not None:
            return math.inf
        return max(self.started_at, self.memory_checked_at) + interval

    # -- leaving ------------------------------------------------------------------

    def retire(self, now: float, limit: float) -> None:
        """It is to leave (shutdown, max_jobs, memory recycling): it takes no
        more jobs, and is killed if it is still there ``limit`` s from now."""
        self.state = STOPPING
        self.told_to_leave = True
        self.leave_by = now + limit

    def leave_overdue(self, now: float) -> bool:
        """True if it was told to leave and has not left in time."""
        return self.state is STOPPING and now >= self.leave_by

    def lost(self, now: float) -> None:
        """Its socket closed (or was closed): it is as good as dead."""
        self.state = DEAD
        self.dead_since = now

    def exit_overdue(self, now: float, grace: float) -> bool:
        """True, once, when its socket closed ``grace`` s ago and its process
        has still not exited."""
        if self.state is DEAD and now - self.dead_since >= grace:
            self.dead_since = math.inf  # killed once is enough
            return True
        return False

    def head_killed(self, fate: HeadFate) -> None:
        """The supervisor kills it mid-job: ``fate`` says how the job ends."""
        self.fate = fate

    def take_violation(self, text: str) -> Frame | None:
        """It broke the protocol and is to be killed: the running job to
        answer with ``text`` now (None: none, or already dealt with)."""
        if self.state is SERVING and self.inflight and self.fate is None:
            self.fate = ANSWERED
            return self.inflight[0]
        if not self.ever_ready:
            self.init_failed(text)
        return None

    def exited_cleanly(self, exitcode: int | None) -> bool:
        """Whether an exit with ``exitcode`` was the one it was asked for."""
        return self.told_to_leave and exitcode == 0

    def exit_failure(self, reason: str, exitcode: int | None = None) -> HeadFate | None:
        """How its head ends now that it exited for ``reason`` (its
        ``exitcode`` in words; None: unknown).  None: it had no head, or the
        head was answered."""
        if not self.inflight or self.fate is ANSWERED:
            return None
        if self.fate is not None:
            return self.fate
        facts = Facts(exitcode=exitcode, reason=reason)
        return HeadFate(RetryOn.DIED, Kind.ERROR, worker_died_error(reason), Flag.DIED, facts)

    def take_jobs_back(
        self, reason: str, exitcode: int | None = None
    ) -> tuple[Frame | None, HeadFate | None, list[bytes | bytearray]]:
        """It exited for ``reason`` (``exitcode``, see exit_failure): empty
        its jobs in flight.  Returns its head (None if it had none), how the
        head ends (see exit_failure), and the raw frames of the jobs sent
        ahead that it never started, in order: they go back to the front of
        the queue, and cost nothing."""
        if not self.inflight:
            return None, None, []
        fate = self.exit_failure(reason, exitcode)
        head = self.inflight.popleft()
        unstarted = [frame.raw for frame in self.inflight]
        self.inflight.clear()
        return head, fate, unstarted

    def start_failure(self, reason: str, exitcode: int | None) -> tuple[str, int, bool]:
        """Why a worker that never became ready is gone: the text, the
        InitFailure, and whether it was merely killed by a signal (which
        alone is no proof of a broken pool)."""
        killed = self.init_error is None and (exitcode or 0) < 0
        return self.init_error or exited_before_ready_text(reason), self.init_failure, killed

"""The Boss's core, sans-IO: everything a Boss says to main, whatever its fleet.

::

       main                         BossCore                          Fleet
    JOB, SHUTDOWN,   receive()   +-------------------+  submit(jobs)   (where the workers
    STATS_REQUEST,  -----------> | phase (Phase)     | --------------> live: local
    CANCEL                       | counters, retries | cancel(ids)     processes, a Dask
                                 | start-up failures | retire_all()    cluster, a fake
    READY, INIT_FAILED, answers, | STATS body        | kill_all()      in the tests)
    RETRYING, STATS,  <--------- | out: SendQueue    | <-------------- deliver(), answer(),
    CANCEL_REPLY, BYE    out     +-------------------+  worker_ready(), worker_start_failed()

The core never touches a socket, a process, a selector or a clock: a driver
feeds it main's frames (:meth:`BossCore.receive`), sends what it puts in
:attr:`BossCore.out`, calls :meth:`BossCore.step` once per turn, and passes
times in where a rule needs one.  The fleet reports what its workers did
through the methods under "from the fleet".  Like ``protocol.Decoder``, it
serves a blocking, a selectors or an asyncio driver alike, and its tests
need no process (``tests/test_boss_core.py``).

Everything that changes the Boss's phase lives in :meth:`BossCore._enter`:

    STARTING --READY--> SERVING --SHUTDOWN--> DRAINING --nothing left--> RETIRING
        |                                                                   |
        +--INIT_FAILED--> FAILED (main stops us)        every worker gone --+--> CLOSED (BYE)
    any phase but CLOSED --forced stop, main gone--> STOPPED

Rules with their one home here: the frames from main and what they mean;
answer accounting (``completed`` / ``failed`` / ``timed_out`` / ``cancelled``
/ ``retried``) and retry decisions; the STATS body; the start-up back-off
and when failures are persistent (:class:`StartFailures`); the check that
tells main's death from our parent's pid (:func:`main_gone`).
"""

from __future__ import annotations

import enum
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from ..errors import no_worker_could_start_error
from ..jobs import Facts, answer_frame, encode_error, text_frame
from ..protocol import Flag, Frame, InitFailure, Kind, RetryOn, SendQueue, encode, job_retry

__all__ = [
    "PARENT_CHECK_INTERVAL",
    "BossCore",
    "Fleet",
    "FleetNumbers",
    "Phase",
    "StartFailures",
    "main_gone",
]

log = logging.getLogger("bossworker")

# How often a Boss checks that main is still its parent (see main_gone).
PARENT_CHECK_INTERVAL = 0.5


class Phase(enum.Enum):
    """Where the Boss is in its life, as main sees it."""

    STARTING = "starting"  # no worker ready yet; main waits for READY or INIT_FAILED
    FAILED = "failed"  # main was told INIT_FAILED; it will stop us
    SERVING = "serving"  # main was told READY; jobs come and go
    DRAINING = "draining"  # main sent SHUTDOWN: finish every job, take no new worker for nothing
    RETIRING = "retiring"  # every job answered; the workers were told to leave
    CLOSED = "closed"  # every worker gone; BYE is queued, sent, or main has it
    STOPPED = "stopped"  # forced stop, or main is gone: kill everything, say nothing


_MOVES: dict[Phase, frozenset[Phase]] = {
    Phase.STARTING: frozenset({Phase.SERVING, Phase.FAILED, Phase.DRAINING, Phase.STOPPED}),
    Phase.FAILED: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.SERVING: frozenset({Phase.DRAINING, Phase.STOPPED}),
    Phase.DRAINING: frozenset({Phase.RETIRING, Phase.STOPPED}),
    Phase.RETIRING: frozenset({Phase.CLOSED, Phase.STOPPED}),
    Phase.CLOSED: frozenset(),
    Phase.STOPPED: frozenset(),
}


# The members the per-turn paths compare with, bound once: on Python 3.11
# every ``Phase.X`` / ``Kind.X`` goes through EnumType.__getattr__ (~0.3 µs,
# ten times a plain name), and a Boss turn makes dozens of such comparisons.
_STARTING, _DRAINING, _RETIRING, _CLOSED, _STOPPED = (
    Phase.STARTING,
    Phase.DRAINING,
    Phase.RETIRING,
    Phase.CLOSED,
    Phase.STOPPED,
)
_JOB, _RESULT, _TIMED_OUT = Kind.JOB, Kind.RESULT, Kind.TIMED_OUT


@dataclass(slots=True)
class FleetNumbers:
    """What a fleet reports for STATS."""

    running: int  # jobs a worker is running now
    workers_alive: int
    workers_started: int
    jobs_per_worker: dict[int, int] = field(default_factory=dict)  # by pid, live workers only
    memory_kills: int = 0  # workers killed mid-job past the memory cap
    memory_recycles: int = 0  # workers retired between jobs past the memory cap


class Fleet(Protocol):
    """Where the workers live, as the core sees it.

    A fleet queues what it is given, runs it, and reports every answer,
    failure and start-up to the core; it owns its workers' lives entirely
    (dispatch, pipelining, deadlines, deaths, respawns).
    """

    def submit(self, jobs: list[bytes | bytearray]) -> None:
        """Queue these raw JOB frames, in order (one call per read from main)."""

    def cancel(self, job_ids: set[int]) -> set[int]:
        """Drop the jobs of ``job_ids`` that have not been handed to a
        worker yet; return the ids dropped."""

    def busy(self) -> bool:
        """Whether any job is queued or in flight."""

    def has_workers(self) -> bool:
        """Whether any worker (or a slot waiting to start one) is still there."""

    def can_serve(self) -> bool:
        """Whether any worker is alive or starting (so queued jobs may yet run)."""

    def take_queued(self) -> list[int]:
        """Remove every queued job, not yet handed to a worker; return their ids."""

    def retire_all(self) -> None:
        """Every job is answered: tell every worker to leave gracefully."""

    def kill_all(self) -> None:
        """Kill every worker now (forced stop, main gone)."""

    def request_numbers(self, reply: Callable[[FleetNumbers], None]) -> None:
        """Call ``reply`` with the fleet's numbers, now or later."""


def main_gone(start_method: str, parent_pid: int, main_pid: int) -> bool:
    """Whether a Boss whose parent is now ``parent_pid`` has lost main.

    A Boss is main's child unless it was started by a fork server; main's
    pidfd (where there are pidfds) and end-of-file on main's socket are the
    other signs, watched by the driver."""
    return start_method != "forkserver" and parent_pid != main_pid


# Back-off for workers that die before they are ready: 0.1 s, 0.2 s, ... 5 s,
# each slot by its own failures in a row, less a random part of up to
# RESPAWN_JITTER of it: slots that failed together (a process limit reached
# by a big pool) then come due spread out, not all in one turn.
RESPAWN_BACKOFF_FIRST = 0.1
RESPAWN_BACKOFF_MAX = 5.0
RESPAWN_JITTER = 0.5
# Start-up failures in a row (no worker became ready in between) after which,
# while no worker is alive, queued jobs are answered with an ERROR instead of
# waiting.  A worker that reports an init_handler failure, or exits with a
# code before it is ready (an import error under spawn), counts towards the
# first number (or the worker count, if larger: each slot gets its try); one
# killed by a signal while starting (an operator, the OOM killer, a test's
# random killer) is not proof of a broken pool, so only many of those in a
# row count.
PERSISTENT_FAILURES = 3
PERSISTENT_KILLS = 10


class StartFailures:
    """Start-up failures in a row, and what follows from them."""

    __slots__ = ("errors", "failures", "last_failure", "last_text", "random", "slots_failed", "worker_count")

    def __init__(self, worker_count: int, rng: random.Random | None = None) -> None:
        self.worker_count = worker_count
        self.failures = 0  # start-up deaths in a row, since a worker last became ready
        self.errors = 0  # of those, the ones that were not kills by a signal
        self.slots_failed = 0  # of those, the first failure of a slot
        self.last_text = ""
        self.last_failure: int = InitFailure.WORKERS
        self.random = rng if rng is not None else random.Random()

    def failed(self, text: str, failure: int, killed: bool, attempt: int = 0) -> float:
        """Count one failure; return the back-off before the slot's next try.

        ``attempt``: the failing slot's failures in a row, this one included
        (1: its first).  0 (a fleet that does not count per slot): every
        failure is a slot's first, and the back-off follows the run of
        failures of the whole fleet."""
        self.failures += 1
        self.errors += not killed
        self.slots_failed += attempt <= 1
        self.last_text = text
        self.last_failure = failure
        n = attempt if attempt > 0 else self.failures
        # The exponent is bounded: 2.0 ** 1024 overflows, and a pool whose
        # workers never start must keep trying at the cap, not die.
        delay = min(RESPAWN_BACKOFF_MAX, RESPAWN_BACKOFF_FIRST * 2.0 ** min(n - 1, 64))
        return delay * (1.0 - RESPAWN_JITTER * self.random.random())

    def succeeded(self) -> None:
        """A worker became ready: the run of failures is over."""
        self.failures = self.errors = self.slots_failed = 0

    def every_slot_failed(self) -> bool:
        """Whether every slot failed (since a worker was last ready): a
        slot's retries do not count, so a big pool whose first slots start
        while the rest hit a process limit is not declared failed."""
        return self.slots_failed >= self.worker_count

    def persistent(self) -> bool:
        """Whether the failures look like a broken pool, not bad luck."""
        return self.errors >= max(PERSISTENT_FAILURES, self.worker_count) or self.failures >= PERSISTENT_KILLS


def boss_answer(
    job_id: int, kind: Kind, text: str, flags: int, pid: int, ran: float, facts: Facts | None = None
) -> bytes:
    """An answer the Boss writes on a job's behalf (TIMED_OUT has no text);
    an ERROR carries ``facts`` (what the Boss measured), if given."""
    if kind is Kind.TIMED_OUT:
        return answer_frame(kind, job_id, b"", flags, ran, pid)
    extra, payload = encode_error(text.encode("utf-8", "replace"), None, facts)
    return answer_frame(kind, job_id, payload, flags | extra, ran, pid)


class BossCore:
    """What a Boss says to main. See the module docstring."""

    def __init__(self, worker_count: int, rng: random.Random | None = None) -> None:
        self.phase = Phase.STARTING
        self.out = SendQueue()  # for main, in order; the driver sends it
        self.fleet: Fleet | None = None
        self.start = StartFailures(worker_count, rng)
        # Counters for STATS.
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.cancelled = 0  # dropped by a CANCEL before a worker took them: never answered
        self.retried = 0  # failed attempts queued again (retries=), not answered
        # Failed attempts so far of the jobs being retried (retries=), by id.
        self.attempts: dict[int, int] = {}

    def attach(self, fleet: Fleet) -> None:
        """Give the core its fleet (made after the core: it reports to it)."""
        self.fleet = fleet

    def _fleet(self) -> Fleet:
        assert self.fleet is not None, "attach() a fleet first"
        return self.fleet

    # -- the phase: changed here only ----------------------------------------------

    def _enter(self, phase: Phase) -> None:
        if phase is self.phase:
            return
        if phase not in _MOVES[self.phase]:
            raise AssertionError(f"the Boss cannot go from {self.phase.name} to {phase.name}")
        log.debug("Boss: %s -> %s", self.phase.name, phase.name)
        self.phase = phase

    @property
    def announced(self) -> bool:
        """Whether main has been told READY or INIT_FAILED (or needs neither)."""
        return self.phase is not Phase.STARTING

    @property
    def shutting_down(self) -> bool:
        """Main asked for a graceful shutdown: no worker is started for an
        empty queue."""
        return self.phase in (Phase.DRAINING, Phase.RETIRING, Phase.CLOSED)

    @property
    def said_bye(self) -> bool:
        """Whether BYE was queued for main: every answer went before it."""
        return self.phase is Phase.CLOSED

    def finished(self) -> bool:
        """Whether the driver may leave: nobody is left to answer, or main
        has every byte, BYE included."""
        phase = self.phase
        return phase is _STOPPED or (phase is _CLOSED and not self.out)

    def step(self) -> None:
        """Once per turn, after the fleet dispatched: tell main INIT_FAILED
        if every initial slot failed; move a graceful shutdown on (every
        job answered -> retire the workers -> BYE).

        INIT_FAILED is decided here, once every event of the turn was
        handled, not as the failure comes: a READY that came in the same
        turn wins (one worker serving is a pool that started)."""
        if self.phase is _STARTING and self.start.every_slot_failed():
            self.out.append(text_frame(Kind.INIT_FAILED, self.start.last_failure, self.start.last_text))
            self._enter(Phase.FAILED)
        if self.phase is _DRAINING and not self._fleet().busy():
            self._enter(Phase.RETIRING)
            self._fleet().retire_all()
        if self.phase is _RETIRING and not self._fleet().has_workers():
            self.out.append(encode(Kind.BYE))
            self._enter(Phase.CLOSED)

    def stop(self) -> None:
        """Forced stop (SIGTERM) or the Boss is leaving: kill every worker.
        After BYE the phase stays CLOSED (main has or may still read every
        answer); otherwise it becomes STOPPED."""
        if self.phase is not Phase.CLOSED:
            self._enter(Phase.STOPPED)
        if self.fleet is not None:
            self.fleet.kill_all()

    def main_lost(self) -> None:
        """Main closed its socket, or died: nobody is left to answer."""
        if self.phase is Phase.CLOSED:
            self.out.clear()  # nobody will read the rest: done
        else:
            self._enter(Phase.STOPPED)

    # -- from main -------------------------------------------------------------------

    def receive(self, frames: Iterable[Frame]) -> None:
        """Handle the frames of one read from main, in order (the JOBs go
        to the fleet in one batch)."""
        jobs: list[bytes | bytearray] = []
        cancels: list[int] = []
        for frame in frames:
            kind = frame.kind
            if kind == _JOB:
                jobs.append(frame.raw)
            elif kind == Kind.SHUTDOWN:
                if self.phase in (Phase.STARTING, Phase.FAILED, Phase.SERVING):
                    self._enter(Phase.DRAINING)
            elif kind == Kind.STATS_REQUEST:
                self._fleet().request_numbers(self._send_stats)
            elif kind == Kind.CANCEL:
                cancels.append(frame.job_id)
            else:
                log.error("unexpected %s frame from main; ignored", Kind(kind).name)
        if jobs:
            self._fleet().submit(jobs)
        if cancels:
            self._cancel(cancels)

    def _cancel(self, job_ids: list[int]) -> None:
        """Answer each CANCEL: whether its job was dropped before a worker
        took it.  A job sent ahead to a worker counts as started: taking it
        back would race with the worker starting it."""
        dropped = self._fleet().cancel(set(job_ids))
        self.cancelled += len(dropped)
        if self.attempts:
            for job_id in dropped:  # a retried job dropped before its next attempt
                self.attempts.pop(job_id, None)
        for job_id in job_ids:
            # Exactly once: of two CANCELs of one job in one read, only the
            # first dropped it.
            first = job_id in dropped
            dropped.discard(job_id)
            self.out.append(encode(Kind.CANCEL_REPLY, job_id, b"\x01" if first else b"\x00"))

    def _send_stats(self, numbers: FleetNumbers) -> None:
        self.out.append(encode(Kind.STATS, 0, self.stats_body(numbers)))

    def stats_body(self, numbers: FleetNumbers) -> bytes:
        """The STATS payload: the core's counters and the fleet's numbers,
        as read by ``Stats.from_boss`` (which derives ``queued`` in main)."""
        return json.dumps(
            {
                "completed": self.completed,
                "failed": self.failed,
                "timed_out": self.timed_out,
                "cancelled": self.cancelled,
                "retried": self.retried,
                "running": numbers.running,
                "workers_alive": numbers.workers_alive,
                "workers_started": numbers.workers_started,
                "jobs_per_worker": {str(pid): n for pid, n in numbers.jobs_per_worker.items()},
                "memory_kills": numbers.memory_kills,
                "memory_recycles": numbers.memory_recycles,
            }
        ).encode()

    # -- from the fleet: start-ups ------------------------------------------------------

    def slots_known(self, count: int) -> None:
        """The fleet learned how many worker slots it has (a Dask cluster's
        threads, known only once it is reached): main is told INIT_FAILED
        once that many starts failed in a row, not ``worker_count``."""
        self.start.worker_count = count

    def fleet_failed(self, text: str) -> None:
        """The fleet could not start at all (a Dask cluster out of reach):
        tell main INIT_FAILED with ``text``; main stops us."""
        if self.phase is Phase.STARTING:
            self.out.append(text_frame(Kind.INIT_FAILED, InitFailure.WORKERS, text))
            self._enter(Phase.FAILED)

    def forward(self, frame: Frame) -> None:
        """A worker's LOG frame: on to main as it came (never read here)."""
        self.out.append(bytes(frame.raw))

    def log_record(self, job_id: int, payload: bytes) -> None:
        """One of this Boss's own logging records, for main (bossworker.logfwd)."""
        self.out.append(encode(Kind.LOG, job_id, payload))

    def worker_ready(self) -> None:
        """A worker finished its start (READY): the first one makes the pool serve."""
        self.start.succeeded()
        if self.phase is Phase.STARTING:
            self.out.append(encode(Kind.READY))
            self._enter(Phase.SERVING)

    def worker_start_failed(self, text: str, failure: int, killed: bool, attempt: int = 0) -> float:
        """A slot failed to get a serving worker (``text`` says why;
        ``killed``: only a signal's kill; ``attempt``: the slot's failures
        in a row, see :meth:`StartFailures.failed`).  Returns the back-off
        before the slot's next try.  Once every initial slot failed, :meth:`step`
        tells main INIT_FAILED; when failures persist and no worker is
        left, answers the queued jobs instead of letting them wait forever."""
        delay = self.start.failed(text, failure, killed, attempt)
        # The fleet says what failed, once (a pool far bigger than the system
        # allows fails hundreds of starts a second).
        log.debug("retrying a worker start in %.2f s", delay)
        fleet = self._fleet()
        if self.start.persistent() and not fleet.can_serve():
            reason = no_worker_could_start_error(self.start.last_text)
            for job_id in fleet.take_queued():
                self.answer(job_id, Kind.ERROR, reason)
        return delay

    # -- from the fleet: answers ----------------------------------------------------------

    def deliver(self, job: Frame, answer: Frame) -> bool:
        """A worker answered ``job`` with ``answer`` (RESULT, ERROR or
        TIMED_OUT): pass it to main, or, for a TIMED_OUT its settings
        allow to retry, tell main RETRYING and return True: the fleet
        then queues the job again, first."""
        kind = answer.kind
        if kind == _TIMED_OUT and self.may_retry(job, RetryOn.TIMED_OUT):
            self._retry(job, answer.raw)
            return True
        self.completed += 1
        if self.attempts:
            self.attempts.pop(job.job_id, None)
        if kind != _RESULT:
            self.failed += 1
            if kind == _TIMED_OUT:
                self.timed_out += 1
        self.out.append(answer.raw)
        return False

    def answer(
        self,
        job_id: int,
        kind: Kind,
        text: str = "",
        flags: int = 0,
        pid: int = 0,
        ran: float = 0.0,
        facts: Facts | None = None,
    ) -> None:
        """Answer a job on the Boss's own account (timeout, death, memory,
        protocol violation, no worker): ``pid`` is the worker that ran it
        (0: none), ``ran`` how long it ran, ``flags`` why (Flag.DIED: its
        worker died), ``facts`` what was measured (an exit code, memory)."""
        self.completed += 1
        self.failed += 1
        if self.attempts:
            self.attempts.pop(job_id, None)
        if kind is Kind.TIMED_OUT:
            self.timed_out += 1
        self.out.append(boss_answer(job_id, kind, text, flags, pid, ran, facts))

    def fail(
        self,
        job: Frame,
        cause: RetryOn,
        kind: Kind,
        text: str,
        flags: int,
        pid: int,
        ran: float,
        facts: Facts | None = None,
    ) -> bool:
        """``job`` failed for ``cause`` with its worker gone: retry it if its
        settings allow (True: the fleet queues it again, first), else
        answer it."""
        if self.may_retry(job, cause):
            self._retry(job, boss_answer(job.job_id, kind, text, flags, pid, ran, facts))
            return True
        self.answer(job.job_id, kind, text, flags, pid, ran, facts)
        return False

    def may_retry(self, job: Frame, cause: RetryOn) -> bool:
        """Whether ``job``'s retry settings (set by main, in its header) allow
        one more attempt after a failure of this ``cause``.  A job whose
        payload travelled in a shared-memory segment is never retried: the
        first attempt consumed it (main sends the jobs it lets be retried
        inline whenever a frame can hold them)."""
        retries, retry_on = job_retry(job.raw)
        if not retries or not retry_on & cause or job.flags & Flag.SEGMENT:
            return False
        return self.attempts.get(job.job_id, 0) < retries

    def _retry(self, job: Frame, answer: bytes | bytearray) -> None:
        """Count a retry of ``job`` and tell main (a RETRYING frame wrapping
        the ``answer`` it replaces, so the final outcome lists every attempt)."""
        self.attempts[job.job_id] = self.attempts.get(job.job_id, 0) + 1
        self.retried += 1
        log.warning("retrying job %d (attempt %d)", job.job_id, self.attempts[job.job_id] + 1)
        self.out.append(encode(Kind.RETRYING, job.job_id, answer))

"""The Boss's sans-IO parts without processes: BossCore with a fake fleet, and
one WorkerLink.  Milliseconds each; the real-process tests stay the contract."""

from __future__ import annotations

import json
import math
import random
from collections import deque
from collections.abc import Callable

import pytest

from bossworker.boss.core import (
    PERSISTENT_FAILURES,
    PERSISTENT_KILLS,
    RESPAWN_JITTER,
    BossCore,
    FleetNumbers,
    Phase,
    main_gone,
)
from bossworker.boss.link import (
    ANSWERED,
    MAX_DEPTH,
    TIMED_OUT,
    TIMEOUT_GRACE,
    LinkState,
    OutOfTurn,
    WorkerLink,
)
from bossworker.errors import NO_WORKER_COULD_START_PREFIX, WORKER_DIED_PREFIX
from bossworker.protocol import (
    Decoder,
    Flag,
    Frame,
    InitFailure,
    Kind,
    RetryOn,
    answer_header,
    encode,
    job_header,
)

pytestmark = pytest.mark.timeout(10)


class FakeFleet:
    """A fleet that only remembers: what a test tells it, it reports."""

    def __init__(self) -> None:
        self.queue: list[bytes | bytearray] = []
        self.running: list[int] = []  # job ids a worker has taken
        self.workers = 2  # processes not yet reaped
        self.alive = True  # some worker is alive or starting
        self.retired = 0  # retire_all() calls
        self.killed = 0  # kill_all() calls

    def submit(self, jobs: list[bytes | bytearray]) -> None:
        self.queue.extend(jobs)

    def cancel(self, job_ids: set[int]) -> set[int]:
        dropped = {Frame.parse(raw).job_id for raw in self.queue} & job_ids
        self.queue = [raw for raw in self.queue if Frame.parse(raw).job_id not in dropped]
        return dropped

    def busy(self) -> bool:
        return bool(self.queue or self.running)

    def has_workers(self) -> bool:
        return self.workers > 0

    def can_serve(self) -> bool:
        return self.alive

    def take_queued(self) -> list[int]:
        ids = [Frame.parse(raw).job_id for raw in self.queue]
        self.queue.clear()
        return ids

    def retire_all(self) -> None:
        self.retired += 1

    def kill_all(self) -> None:
        self.killed += 1

    def request_numbers(self, reply: Callable[[FleetNumbers], None]) -> None:
        reply(FleetNumbers(len(self.running), self.workers, 5, {101: 3, 102: 4}, memory_kills=1))

    def start(self, job_id: int) -> Frame:
        """A worker takes queued job ``job_id``."""
        (raw,) = [raw for raw in self.queue if Frame.parse(raw).job_id == job_id]
        self.queue.remove(raw)
        self.running.append(job_id)
        return Frame.parse(raw)

    def finish(self, job_id: int) -> None:
        self.running.remove(job_id)


def job(job_id: int, retries: int = 0, retry_on: int = 0, timeout: float = 0.0) -> bytes:
    payload = b"pickled job"
    return job_header(Kind.JOB, 0, len(payload), job_id, timeout, retries, retry_on) + payload


def answer(kind: Kind, job_id: int, payload: bytes = b"", pid: int = 7) -> Frame:
    return Frame.parse(answer_header(kind, 0, len(payload), job_id, 0.01, pid) + payload)


def frames(*raws: bytes) -> list[Frame]:
    decoder = Decoder()
    decoder.feed(b"".join(raws))
    return decoder.take()


def sent(core: BossCore) -> list[Frame]:
    """What the core has for main, taken (as a driver would send it)."""
    data = b"".join(bytes(chunk) for chunk in core.out.chunks())
    core.out.clear()
    return frames(data)


def kinds(got: list[Frame]) -> list[Kind]:
    return [Kind(f.kind) for f in got]


class FixedJitter(random.Random):
    """A random source whose every draw is ``value``: back-offs become exact."""

    def __init__(self, value: float = 0.0) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def new_core(worker_count: int = 2, jitter: float = 0.0) -> tuple[BossCore, FakeFleet]:
    core = BossCore(worker_count, FixedJitter(jitter))
    fleet = FakeFleet()
    core.attach(fleet)
    return core, fleet


def serving_core() -> tuple[BossCore, FakeFleet]:
    core, fleet = new_core()
    core.worker_ready()
    assert kinds(sent(core)) == [Kind.READY]
    return core, fleet


# -- BossCore ---------------------------------------------------------------------------


def test_ready_is_said_once_when_the_first_worker_is_ready() -> None:
    core, _ = new_core()
    assert core.phase is Phase.STARTING and not core.announced
    core.worker_ready()
    core.worker_ready()
    assert kinds(sent(core)) == [Kind.READY]
    assert core.phase is Phase.SERVING and core.announced


def test_init_failed_once_every_initial_slot_failed_naming_the_last_failure() -> None:
    core, _ = new_core(worker_count=2)
    assert core.worker_start_failed("first", InitFailure.WORKERS, killed=False) == pytest.approx(0.1)
    core.step()
    assert sent(core) == [] and core.phase is Phase.STARTING
    assert core.worker_start_failed("ImportError: nope", InitFailure.NOT_IMPORTABLE, killed=False) == (
        pytest.approx(0.2)
    )
    assert sent(core) == []  # decided at the end of the turn
    core.step()
    (report,) = sent(core)
    assert (report.kind, report.job_id) == (Kind.INIT_FAILED, InitFailure.NOT_IMPORTABLE)
    assert bytes(report.payload) == b"ImportError: nope"
    assert core.phase is Phase.FAILED
    core.worker_ready()  # too late: main has its answer
    assert sent(core) == [] and core.phase is Phase.FAILED


def test_init_failed_waits_for_as_many_failures_as_the_fleet_has_slots() -> None:
    # A Dask cluster's slots are its threads, known only once it is reached.
    core, _ = new_core(worker_count=2)
    core.slots_known(3)
    for text in ("a", "b"):
        core.worker_start_failed(text, InitFailure.WORKERS, killed=False)
    core.step()
    assert sent(core) == [] and core.phase is Phase.STARTING
    core.worker_start_failed("c", InitFailure.WORKERS, killed=False)
    core.step()
    (report,) = sent(core)
    assert (report.kind, bytes(report.payload)) == (Kind.INIT_FAILED, b"c")
    assert core.phase is Phase.FAILED


def test_a_ready_in_the_same_turn_as_the_last_slots_failure_wins() -> None:
    """The failure that makes every slot failed and another worker's READY
    handled in one turn (either order): the pool started, as it always did."""
    for ready_first in (False, True):
        core, _ = new_core(worker_count=2)
        core.worker_start_failed("a", InitFailure.WORKERS, killed=False)
        core.step()
        if ready_first:
            core.worker_ready()
        core.worker_start_failed("b", InitFailure.WORKERS, killed=False)
        if not ready_first:
            core.worker_ready()
        core.step()
        assert kinds(sent(core)) == [Kind.READY] and core.phase is Phase.SERVING


def test_the_back_off_stays_at_its_cap_however_long_workers_fail() -> None:
    """2.0 ** 1024 overflows: 1,025 start failures in a row killed the Boss."""
    core, _ = serving_core()
    delays = [core.worker_start_failed("x", InitFailure.WORKERS, killed=True) for _ in range(2000)]
    assert delays[-1] == pytest.approx(5.0) and max(delays) == pytest.approx(5.0)


def test_a_fleet_that_cannot_start_at_all_is_init_failed_once_and_only_while_starting() -> None:
    core, fleet = new_core()
    core.fleet_failed("no cluster there")
    core.fleet_failed("again")
    (report,) = sent(core)
    assert (report.kind, report.job_id) == (Kind.INIT_FAILED, InitFailure.WORKERS)
    assert bytes(report.payload) == b"no cluster there"
    assert core.phase is Phase.FAILED and fleet.killed == 0  # main stops us
    core, _ = serving_core()
    core.fleet_failed("too late")
    assert sent(core) == [] and core.phase is Phase.SERVING


def test_start_back_off_doubles_up_to_five_seconds_and_a_ready_worker_resets_it() -> None:
    core, _ = serving_core()
    delays = [core.worker_start_failed("x", InitFailure.WORKERS, killed=True) for _ in range(8)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    core.worker_ready()
    assert core.worker_start_failed("x", InitFailure.WORKERS, killed=True) == pytest.approx(0.1)


def test_each_slot_backs_off_by_its_own_failures_with_jitter() -> None:
    """The back-off was global, so every slot that failed
    came due in the same turn.  Now a slot's first failure waits 0.1 s
    whatever the others did, and a random part spreads slots apart."""
    core, _ = new_core(worker_count=500)
    for _ in range(50):  # other slots failing many times
        core.worker_start_failed("x", InitFailure.WORKERS, killed=False, attempt=7)
    assert core.worker_start_failed("x", InitFailure.WORKERS, killed=False, attempt=1) == pytest.approx(0.1)
    assert core.worker_start_failed("x", InitFailure.WORKERS, killed=False, attempt=3) == pytest.approx(0.4)
    core, _ = new_core(worker_count=500, jitter=1.0)  # the largest draw
    assert core.worker_start_failed("x", InitFailure.WORKERS, killed=False, attempt=9) == pytest.approx(
        5.0 * (1 - RESPAWN_JITTER)
    )
    # The real source: spread within [cap * (1 - jitter), cap].
    real = BossCore(500)
    real.attach(FakeFleet())
    delays = {real.worker_start_failed("x", InitFailure.WORKERS, False, attempt=20) for _ in range(200)}
    assert all(5.0 * (1 - RESPAWN_JITTER) <= d <= 5.0 for d in delays)
    assert max(delays) - min(delays) > 1.0, "no spread"


def test_a_slots_retries_do_not_count_as_other_slots_failing() -> None:
    """Three of four slots cannot start and retry many times while the
    fourth is still starting: the pool is not INIT_FAILED for that."""
    core, _ = new_core(worker_count=4)
    for attempt in range(1, 30):
        for _ in range(3):
            core.worker_start_failed("EAGAIN", InitFailure.WORKERS, killed=False, attempt=attempt)
        core.step()
    assert sent(core) == [] and core.phase is Phase.STARTING
    core.worker_start_failed("EAGAIN", InitFailure.WORKERS, killed=False, attempt=1)
    core.step()
    assert kinds(sent(core)) == [Kind.INIT_FAILED]


def test_persistent_start_failures_answer_the_queue_only_when_no_worker_can_serve() -> None:
    core, fleet = new_core(worker_count=2)
    core.worker_ready()
    sent(core)
    core.receive(frames(job(1), job(2)))
    fleet.alive = True
    for _ in range(PERSISTENT_FAILURES):
        core.worker_start_failed("boom", InitFailure.WORKERS, killed=False)
    assert len(fleet.queue) == 2  # a worker is still alive: the jobs wait
    fleet.alive = False
    core.worker_start_failed("boom again", InitFailure.WORKERS, killed=False)
    got = sent(core)
    assert kinds(got) == [Kind.ERROR, Kind.ERROR] and [f.job_id for f in got] == [1, 2]
    assert bytes(got[0].payload).decode() == f"{NO_WORKER_COULD_START_PREFIX}: boom again"
    assert fleet.queue == [] and (core.completed, core.failed) == (2, 2)


def test_kills_at_start_up_need_many_more_in_a_row() -> None:
    core, fleet = serving_core()
    fleet.alive = False
    core.receive(frames(job(1)))
    for _ in range(PERSISTENT_KILLS - 1):
        core.worker_start_failed("killed", InitFailure.WORKERS, killed=True)
    assert sent(core) == [] and len(fleet.queue) == 1
    core.worker_start_failed("killed", InitFailure.WORKERS, killed=True)
    assert kinds(sent(core)) == [Kind.ERROR]


def test_jobs_go_to_the_fleet_in_one_batch_per_read_untouched() -> None:
    core, fleet = serving_core()
    batches: list[list[bytes | bytearray]] = []
    fleet.submit = batches.append  # type: ignore[method-assign]
    core.receive(frames(job(1), job(2), job(3)))
    assert len(batches) == 1
    assert [bytes(raw) for raw in batches[0]] == [job(1), job(2), job(3)]


def test_answers_are_counted_and_forwarded_byte_for_byte() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1), job(2), job(3)))
    results = []
    for job_id, kind in ((1, Kind.RESULT), (2, Kind.ERROR), (3, Kind.TIMED_OUT)):
        taken = fleet.start(job_id)
        reply = answer(kind, job_id, b"payload" if kind is not Kind.TIMED_OUT else b"")
        assert core.deliver(taken, reply) is False
        results.append(reply.raw)
    assert [f.raw for f in sent(core)] == results
    assert (core.completed, core.failed, core.timed_out, core.retried) == (3, 2, 1, 0)


def test_a_timed_out_job_with_retries_left_comes_back_as_retrying() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1, retries=1, retry_on=RetryOn.TIMED_OUT)))
    taken = fleet.start(1)
    first = answer(Kind.TIMED_OUT, 1)
    assert core.deliver(taken, first) is True  # the fleet queues it again
    (retrying,) = sent(core)
    assert (retrying.kind, retrying.job_id) == (Kind.RETRYING, 1)
    assert bytes(retrying.payload) == bytes(first.raw)  # the answer it replaces
    assert core.deliver(taken, answer(Kind.TIMED_OUT, 1)) is False  # no retry left
    assert kinds(sent(core)) == [Kind.TIMED_OUT]
    assert (core.retried, core.completed, core.timed_out) == (1, 1, 1)


def test_a_death_is_retried_only_for_the_causes_the_job_allows() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1, retries=2, retry_on=RetryOn.DIED), job(2, retries=2, retry_on=RetryOn.MEMORY)))
    one, two = fleet.start(1), fleet.start(2)
    assert core.fail(one, RetryOn.DIED, Kind.ERROR, "died", Flag.DIED, pid=7, ran=0.5) is True
    assert core.fail(two, RetryOn.DIED, Kind.ERROR, "died", Flag.DIED, pid=8, ran=0.5) is False
    got = sent(core)
    assert kinds(got) == [Kind.RETRYING, Kind.ERROR]
    assert got[1].flags == Flag.DIED and bytes(got[1].payload) == b"died"
    assert (core.retried, core.completed, core.failed) == (1, 1, 1)


def test_stats_body_has_what_main_reads_and_nothing_it_does_not() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1), job(2), job(3)))
    core.deliver(fleet.start(1), answer(Kind.ERROR, 1, b"x"))
    fleet.finish(1)
    fleet.start(2)
    core.receive(frames(encode(Kind.CANCEL, 3)))
    core.receive(frames(encode(Kind.STATS_REQUEST)))
    got = sent(core)
    assert kinds(got) == [Kind.ERROR, Kind.CANCEL_REPLY, Kind.STATS]
    body = json.loads(bytes(got[2].payload))
    assert body == {
        "completed": 1,
        "failed": 1,
        "timed_out": 0,
        "cancelled": 1,
        "retried": 0,
        "running": 1,
        "workers_alive": 2,
        "workers_started": 5,
        "jobs_per_worker": {"101": 3, "102": 4},
        "memory_kills": 1,
        "memory_recycles": 0,
    }


def test_cancel_replies_say_which_jobs_were_dropped() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1), job(2), job(3)))
    fleet.start(1)
    core.receive(frames(encode(Kind.CANCEL, 1), encode(Kind.CANCEL, 3), encode(Kind.CANCEL, 99)))
    replies = {f.job_id: bytes(f.payload) for f in sent(core)}
    assert replies == {1: b"\x00", 3: b"\x01", 99: b"\x00"}
    assert core.cancelled == 1 and [Frame.parse(raw).job_id for raw in fleet.queue] == [2]


def test_two_cancels_of_one_job_in_one_read_drop_it_once() -> None:
    core, _fleet = serving_core()
    core.receive(frames(job(1), job(2)))
    core.receive(frames(encode(Kind.CANCEL, 1), encode(Kind.CANCEL, 1), encode(Kind.CANCEL, 2)))
    replies = [(f.job_id, bytes(f.payload)) for f in sent(core)]
    assert replies == [(1, b"\x01"), (1, b"\x00"), (2, b"\x01")]
    assert core.cancelled == 2


def test_a_retried_job_cancelled_before_its_next_attempt_leaves_no_count() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1, retries=3, retry_on=RetryOn.TIMED_OUT)))
    taken = fleet.start(1)
    assert core.deliver(taken, answer(Kind.TIMED_OUT, 1)) is True
    fleet.finish(1)
    fleet.queue.insert(0, taken.raw)  # what a fleet does with a retried job
    core.receive(frames(encode(Kind.CANCEL, 1)))
    assert kinds(sent(core)) == [Kind.RETRYING, Kind.CANCEL_REPLY]
    assert core.cancelled == 1 and core.attempts == {}


def test_graceful_shutdown_drains_then_retires_then_says_bye_last() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1), encode(Kind.SHUTDOWN)))
    taken = fleet.start(1)
    core.step()
    assert core.phase is Phase.DRAINING and fleet.retired == 0  # a job is still running
    core.deliver(taken, answer(Kind.RESULT, 1, b"r"))
    fleet.finish(1)
    core.step()
    assert core.phase is Phase.RETIRING and fleet.retired == 1
    core.step()
    assert fleet.retired == 1 and kinds(sent(core)) == [Kind.RESULT]  # no BYE while workers remain
    fleet.workers = 0
    core.step()
    assert kinds(sent(core)) == [Kind.BYE] and core.said_bye
    assert core.finished()  # BYE sent: the driver may leave
    core.stop()  # what run_boss does on its way out
    assert core.phase is Phase.CLOSED and fleet.killed == 1


def test_the_driver_waits_until_main_has_the_bye() -> None:
    core, fleet = serving_core()
    fleet.workers = 0
    core.receive(frames(encode(Kind.SHUTDOWN)))
    core.step()
    assert core.said_bye and not core.finished()  # BYE still in core.out
    core.main_lost()  # main closed after all: nothing more to send
    assert core.finished() and core.said_bye


def test_forced_stop_kills_the_fleet_and_says_nothing_more() -> None:
    core, fleet = serving_core()
    core.receive(frames(job(1), job(2)))
    core.stop()
    assert core.phase is Phase.STOPPED and core.finished() and not core.said_bye
    assert fleet.killed == 1
    core.receive(frames(encode(Kind.SHUTDOWN)))  # late frames change nothing
    assert core.phase is Phase.STOPPED


def test_main_lost_while_serving_stops() -> None:
    core, _ = serving_core()
    core.main_lost()
    assert core.phase is Phase.STOPPED and core.finished()


def test_an_impossible_phase_change_is_a_loud_bug() -> None:
    core, _ = new_core()
    with pytest.raises(AssertionError, match="STARTING to CLOSED"):
        core._enter(Phase.CLOSED)


def test_main_gone_by_parent_pid() -> None:
    assert not main_gone("fork", parent_pid=10, main_pid=10)
    assert main_gone("spawn", parent_pid=1, main_pid=10)
    assert not main_gone("forkserver", parent_pid=1, main_pid=10)  # the fork server is our parent


# -- WorkerLink ---------------------------------------------------------------------------


def test_handshake_ready_makes_a_starting_worker_serve() -> None:
    link = WorkerLink(pid=7, now=100.0, init_timeout=5.0)
    assert link.state is LinkState.STARTING and link.start_by == 105.0
    assert not link.start_overdue(104.9)
    link.ready()
    assert link.state is LinkState.SERVING and link.ever_ready
    assert not link.start_overdue(200.0)


def test_init_timeout_fires_once() -> None:
    link = WorkerLink(pid=7, now=0.0, init_timeout=1.0)
    assert link.start_overdue(1.0)
    assert not link.start_overdue(2.0)
    assert math.isinf(WorkerLink(pid=8, now=0.0).start_by)  # 0: no limit


def test_a_starting_worker_told_to_leave_keeps_its_init_limit() -> None:
    """A shutdown while a replacement is in init_handler
    made it STOPPING and dropped its init limit (the shutdown then waited the
    whole leave limit, 30 s)."""
    link = WorkerLink(pid=7, now=0.0, init_timeout=0.5)
    link.retire(now=0.1, limit=30.0)
    assert link.state is LinkState.STOPPING and link.start_deadline() == 0.5
    assert not link.start_overdue(0.4) and link.start_overdue(0.5)
    assert not link.start_overdue(0.6)  # once
    # Ready before the limit: only the leave limit is left.
    ready = WorkerLink(pid=8, now=0.0, init_timeout=0.5)
    ready.retire(now=0.1, limit=30.0)
    ready.ready()
    assert math.isinf(ready.start_deadline()) and not ready.start_overdue(1.0)
    assert ready.leave_overdue(30.1)
    # A dead one is not killed again for its start.
    lost = WorkerLink(pid=9, now=0.0, init_timeout=0.5)
    lost.lost(now=0.2)
    assert math.isinf(lost.start_deadline())


def test_init_failed_names_its_cause_at_exit() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.init_failed("ValueError: bad init", InitFailure.WORKERS)
    assert link.start_failure("exit code 3", 3) == ("ValueError: bad init", InitFailure.WORKERS, False)
    mute = WorkerLink(pid=8, now=0.0)
    assert mute.start_failure("SIGKILL", -9) == ("worker exited (SIGKILL) before it was ready", 0, True)


def test_answers_match_the_head_in_order_and_time_the_job() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    queue: deque[bytes | bytearray] = deque([job(1), job(2), job(3)])
    assert link.take_jobs(queue, 2, now=10.0) == [job(1), job(2)]
    assert list(queue) == [job(3)] and link.jobs_sent == 2 and link.started_at == 10.0
    with pytest.raises(OutOfTurn, match="job 2"):
        link.answered(answer(Kind.RESULT, 2), now=10.5)
    assert link.answered(answer(Kind.RESULT, 1), now=10.5).job_id == 1
    assert link.started_at == 10.5  # the next job in flight started with that answer
    assert link.jobs_done == 1 and link.service_time == pytest.approx(0.01)  # as the worker measured


def test_pipelining_depth_follows_the_measured_job_time() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    assert link.depth() == 1  # not timed yet: assume a long job
    link.take_jobs(deque([job(1)]), 1, now=0.0)
    link.answered(answer(Kind.RESULT, 1), now=0.0)  # 10 ms: long
    assert link.depth() == 1
    link.service_time = 2e-3  # a few ms: one job waits in its socket
    assert link.depth() == 2
    link.service_time = 1e-5
    assert link.depth() == MAX_DEPTH
    assert link.budget(max_jobs=3) == 2  # one sent of three
    link.over_memory = True
    assert link.budget(max_jobs=None) == 0


def test_deadline_includes_the_grace_and_only_while_serving_a_job() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    assert math.isinf(link.deadline())
    link.take_jobs(deque([job(1, timeout=2.0)]), 1, now=50.0)
    assert link.deadline() == pytest.approx(52.0 + TIMEOUT_GRACE)
    link.retire(now=51.0, limit=30.0)
    assert math.isinf(link.deadline())  # stopping: its own SIGALRM has done or will do


def test_a_death_mid_job_answers_worker_died_and_sent_ahead_jobs_stay_for_the_queue() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.take_jobs(deque([job(1), job(2), job(3)]), 3, now=0.0)
    link.lost(now=1.0)
    fate = link.exit_failure("SIGSEGV")
    assert fate is not None and fate.cause is RetryOn.DIED and fate.flags == Flag.DIED
    assert fate.text == f"{WORKER_DIED_PREFIX}SIGSEGV) while running this job"
    assert not link.exited_cleanly(-11)
    head, same_fate, unstarted = link.take_jobs_back("SIGSEGV")
    assert head is not None and head.job_id == 1 and same_fate == fate
    assert unstarted == [job(2), job(3)]  # sent ahead, never started: back to the queue, in order
    assert not link.inflight
    assert link.take_jobs_back("SIGSEGV") == (None, None, [])


def test_sent_ahead_jobs_come_back_even_when_the_head_was_answered() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.take_jobs(deque([job(1), job(2)]), 2, now=0.0)
    link.head_killed(ANSWERED)  # e.g. its deadline passed and no retry was allowed
    head, fate, unstarted = link.take_jobs_back("SIGKILL")
    assert head is not None and head.job_id == 1 and fate is None  # nothing more to say for it
    assert unstarted == [job(2)]


def test_a_killed_head_ends_as_decided_at_the_kill() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.take_jobs(deque([job(1)]), 1, now=0.0)
    link.head_killed(TIMED_OUT)
    assert link.exit_failure("SIGKILL") is TIMED_OUT
    link.head_killed(ANSWERED)
    assert link.exit_failure("SIGKILL") is None
    idle = WorkerLink(pid=8, now=0.0)
    assert idle.exit_failure("SIGKILL") is None  # nothing was running


def test_a_protocol_violation_answers_the_head_once_or_fails_the_start() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.take_jobs(deque([job(1)]), 1, now=0.0)
    head = link.take_violation("garbage")
    assert head is not None and head.job_id == 1
    assert link.take_violation("more garbage") is None and link.fate is ANSWERED
    starting = WorkerLink(pid=8, now=0.0)
    assert starting.take_violation("garbage") is None and starting.init_error == "garbage"


def test_retiring_sets_state_and_limit_together_and_a_clean_exit_is_expected() -> None:
    link = WorkerLink(pid=7, now=0.0)
    link.ready()
    link.retire(now=10.0, limit=30.0)
    assert link.state is LinkState.STOPPING and link.leave_by == 40.0
    assert not link.leave_overdue(39.9) and link.leave_overdue(40.0)
    link.ready()  # a late READY does not put it back to work
    assert link.state is LinkState.STOPPING
    assert link.exited_cleanly(0) and not link.exited_cleanly(-9)
    link.lost(now=41.0)
    assert not link.exit_overdue(41.5, grace=1.0)
    assert link.exit_overdue(42.0, grace=1.0) and not link.exit_overdue(50.0, grace=1.0)

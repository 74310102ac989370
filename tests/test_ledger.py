"""Main's sans-IO ledger without a process: frames in, verdicts out.
Milliseconds each; the real-process tests stay the contract."""

from __future__ import annotations

import pytest

from bossworker.errors import (
    BossDiedError,
    InputClosedError,
    InvalidArgumentError,
    NoPendingResultsError,
    ShutDownError,
)
from bossworker.ledger import MAX_JOB_ID, Intake, Lane, MainLedger, Phase, Wake
from bossworker.protocol import Decoder, Frame, InitFailure, Kind, answer_header, encode

pytestmark = pytest.mark.timeout(10)


def answer(kind: Kind, job_id: int, payload: bytes = b"", pid: int = 7) -> Frame:
    return Frame.parse(answer_header(kind, 0, len(payload), job_id, 0.01, pid) + payload)


def reply(job_id: int, dropped: bool) -> Frame:
    return Frame.parse(encode(Kind.CANCEL_REPLY, job_id, b"\x01" if dropped else b"\x00"))


def retrying(job_id: int) -> Frame:
    return Frame.parse(encode(Kind.RETRYING, job_id, answer_header(Kind.ERROR, 0, 0, job_id, 0.5, 42)))


def sent_ids(data: bytes) -> list[int]:
    decoder = Decoder()
    decoder.feed(data)
    return [frame.job_id for frame in decoder.take()]


def serving(keep_records: bool = True) -> MainLedger:
    ledger = MainLedger(keep_records)
    ledger.receive([Frame.parse(encode(Kind.READY))], 0.0)
    assert ledger.phase is Phase.SERVING
    return ledger


# -- start-up ---------------------------------------------------------------------


def test_ready_and_init_failed_set_the_phase_once() -> None:
    ledger = MainLedger()
    assert not ledger.started
    ledger.receive([Frame.parse(encode(Kind.INIT_FAILED, InitFailure.NOT_IMPORTABLE, b"no module x"))], 0.0)
    assert ledger.phase is Phase.FAILED and ledger.ready_verdict() == (
        "no module x",
        InitFailure.NOT_IMPORTABLE,
    )
    ledger.receive([Frame.parse(encode(Kind.READY))], 0.0)  # too late: FAILED stays
    assert ledger.phase is Phase.FAILED


def test_a_boss_dying_before_ready_is_told_apart_from_init_failed() -> None:
    ledger = MainLedger()
    ledger.end_of_file()
    assert ledger.started and ledger.phase is Phase.DIED
    assert ledger.ready_verdict() == (None, 0)


# -- a forced stop versus a dead Boss -------------------------------------------------


def test_end_of_file_without_bye_is_a_dead_boss() -> None:
    ledger = serving()
    ledger.register_jobs(2, 0.0, 0.0)
    ledger.end_of_file()
    assert ledger.boss_died and ledger.ended
    with pytest.raises(BossDiedError, match="2 result"):
        ledger.result_or_verdict(must_be_pending=True)
    with pytest.raises(BossDiedError):
        ledger.check_can_add()


def test_end_of_file_after_a_forced_stop_is_no_death() -> None:
    ledger = serving()
    ledger.register_jobs(2, 0.0, 0.0)
    ledger.begin_forced_stop()
    ledger.end_of_file()  # the Boss was killed by main
    assert not ledger.boss_died and ledger.phase is Phase.CLOSED
    with pytest.raises(ShutDownError, match="force=True"):
        ledger.result_or_verdict(must_be_pending=True)
    with pytest.raises(ShutDownError):
        ledger.check_can_add()


def test_a_forced_stop_after_the_boss_died_says_shut_down() -> None:
    ledger = serving()
    ledger.register_jobs(1, 0.0, 0.0)
    ledger.end_of_file()
    ledger.begin_forced_stop()
    with pytest.raises(ShutDownError):
        ledger.result_or_verdict(must_be_pending=False)
    assert ledger.boss_died  # the fact stays: the phase is final


def test_bye_ends_reading_and_later_news_changes_nothing() -> None:
    ledger = serving()
    ledger.stop_accepting()
    wake = ledger.receive([Frame.parse(encode(Kind.BYE))], 0.0)
    assert Wake.INPUT in wake and ledger.phase is Phase.DONE and ledger.ended
    ledger.end_of_file()
    ledger.closed()
    assert ledger.phase is Phase.DONE and not ledger.boss_died


def test_results_read_before_the_death_stay_retrievable() -> None:
    ledger = serving()
    ids = ledger.register_jobs(2, 0.0, 0.0)
    ledger.lost()
    assert ledger.phase is Phase.LOST and not ledger.sending
    ledger.receive([answer(Kind.RESULT, ids[0])], 1.0)
    ledger.end_of_file()
    frame, final, _ = ledger.result_or_verdict(must_be_pending=True)
    assert frame is not None and frame.job_id == ids[0] and final
    with pytest.raises(BossDiedError, match="1 result"):
        ledger.result_or_verdict(must_be_pending=True)


def test_nothing_pending_is_an_error_for_a_wait_without_limit() -> None:
    ledger = serving()
    with pytest.raises(NoPendingResultsError):
        ledger.result_or_verdict(must_be_pending=True)
    assert ledger.result_or_verdict(must_be_pending=False) == (None, False, Wake.NONE)


def test_intake_moves_on_only() -> None:
    ledger = serving()
    assert ledger.close_input() and not ledger.close_input()
    with pytest.raises(InputClosedError):
        ledger.check_can_add()
    assert ledger.stop_accepting() and ledger.intake is Intake.STOPPING
    ledger.close_input()
    assert ledger.intake is Intake.STOPPING
    with pytest.raises(ShutDownError):
        ledger.check_can_add()


# -- lanes versus get_result ------------------------------------------------------


def test_lane_answers_never_reach_get_result() -> None:
    ledger = serving()
    lane = Lane()
    mapped = ledger.register_jobs(2, 0.0, 0.0, lane)
    plain = ledger.register_jobs(1, 0.0, 0.0)
    assert ledger.pending == 1 and lane.outstanding == 2
    ledger.receive([answer(Kind.RESULT, mapped[1]), answer(Kind.RESULT, plain[0])], 1.0)
    frame, _final, _ = ledger.result_or_verdict(must_be_pending=True)
    assert frame is not None and frame.job_id == plain[0]
    lane_frame, _ = ledger.lane_frame_or_verdict(lane)
    assert lane_frame is not None and lane_frame.job_id == mapped[1]
    assert ledger.lane_frame_or_verdict(lane) == (None, False)
    assert ledger.pending == 0 and lane.outstanding == 1


def test_a_map_job_is_never_cancelled_from_outside() -> None:
    ledger = serving()
    lane = Lane()
    (mapped,) = ledger.register_jobs(1, 0.0, 0.0, lane)
    ticket, data = ledger.ask_cancel([mapped], outcomes=False)
    assert data == b"" and ticket.result() == [False]


def test_a_lane_told_a_forced_stop_says_shut_down_not_died() -> None:
    ledger = serving()
    lane = Lane()
    ledger.register_jobs(3, 0.0, 0.0, lane)
    ledger.begin_forced_stop()
    with pytest.raises(ShutDownError, match="force=True"):
        ledger.lane_frame_or_verdict(lane)
    ledger.end_of_file()  # the killed Boss's socket ends: still no death
    with pytest.raises(ShutDownError, match="force=True"):
        ledger.lane_frame_or_verdict(lane)


def test_a_lane_told_a_dead_boss_says_died() -> None:
    ledger = serving()
    lane = Lane()
    ledger.register_jobs(3, 0.0, 0.0, lane)
    ledger.end_of_file()
    with pytest.raises(BossDiedError, match="3 result"):
        ledger.lane_frame_or_verdict(lane)


def test_an_abandoned_lane_asks_the_boss_and_leaves_no_claim_behind() -> None:
    ledger = serving()
    for _round in range(50):
        lane = Lane()
        ids = ledger.register_jobs(3, 0.0, 0.0, lane)
        ledger.receive([answer(Kind.RESULT, ids[0])], 1.0)
        held, data = ledger.abandon_lane(lane)
        assert [f.job_id for f in held] == [ids[0]]
        assert sent_ids(data) == [ids[1], ids[2]]
        # The answer of one races the CANCEL; the other is dropped.
        ledger.receive([answer(Kind.RESULT, ids[1]), reply(ids[1], False), reply(ids[2], True)], 2.0)
        assert lane.outstanding == 0 and not lane.frames
        assert ledger.claims() == (0, 0, 0)
        assert not ledger.routes


def test_an_abandoned_lane_frees_the_segments_of_answers_to_come() -> None:
    ledger = serving()
    lane = Lane()
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0, lane)
    ledger.abandon_lane(lane)
    segment = Frame.parse(answer_header(Kind.RESULT, 0x01, 0, job_id, 0.0, 7))  # Flag.SEGMENT
    ledger.receive([segment, reply(job_id, False)], 1.0)
    assert ledger.take_orphans() == [job_id] and ledger.take_orphans() == []


# -- cancel replies: numbering and exactly-once ---------------------------------------------


def test_cancel_replies_go_to_their_tickets_in_order() -> None:
    ledger = serving()
    ids = list(ledger.register_jobs(4, 0.0, 0.0))
    first, data1 = ledger.ask_cancel([ids[0], ids[1]], outcomes=False)
    second, data2 = ledger.ask_cancel([ids[2]], outcomes=False)
    assert sent_ids(data1 + data2) == ids[:3]
    assert ledger.cancel_result(first) is None
    ledger.receive([reply(ids[0], True), reply(ids[1], False)], 1.0)
    assert ledger.cancel_result(first) == [True, False] and ledger.cancel_result(second) is None
    ledger.receive([reply(ids[2], True)], 1.0)
    assert ledger.cancel_result(second) == [True]
    assert ledger.pending == 2 and ledger.claims() == (0, 0, 0)


def test_bad_ids_are_refused_before_anything_is_counted() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0)
    for bad in (-1, 0, 2**64, True, "1"):
        with pytest.raises(InvalidArgumentError, match="job_id must be an int"):
            ledger.ask_cancel([job_id, bad], outcomes=False)  # type: ignore[list-item]
    assert ledger.claims() == (0, 0, 0)
    ticket, data = ledger.ask_cancel([job_id], outcomes=False)
    assert sent_ids(data) == [job_id]
    ledger.receive([reply(job_id, True)], 1.0)
    assert ledger.cancel_result(ticket) == [True]


def test_ids_never_issued_are_answered_false_without_asking() -> None:
    ledger = serving()
    ledger.register_jobs(2, 0.0, 0.0)
    ticket, data = ledger.ask_cancel([3, MAX_JOB_ID], outcomes=False)
    assert data == b"" and ticket.result() == [False, False]


def test_two_cancels_of_one_job_drop_it_once() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0)
    a, _ = ledger.ask_cancel([job_id], outcomes=True)
    b, _ = ledger.ask_cancel([job_id], outcomes=True)
    # An older Boss said "dropped" to both CANCELs of one read.
    ledger.receive([reply(job_id, True), reply(job_id, True)], 1.0)
    assert ledger.cancel_result(a) == [True] and ledger.cancel_result(b) == [False]
    assert ledger.pending == 0 and len(ledger.cancelled) == 1
    assert ledger.claims() == (0, 0, 0)


def test_pending_never_goes_negative_after_a_forced_stop() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0)
    ledger.ask_cancel([job_id], outcomes=False)
    ledger.begin_forced_stop()
    ledger.discard()
    ledger.receive([reply(job_id, True)], 1.0)
    assert ledger.pending == 0


def test_cancel_after_the_end_is_answered_none() -> None:
    ledger = serving()
    ids = ledger.register_jobs(2, 0.0, 0.0)
    ticket, _ = ledger.ask_cancel([ids[0]], outcomes=False)
    ledger.end_of_file()
    assert ledger.cancel_result(ticket) == [None]
    late, data = ledger.ask_cancel([ids[1]], outcomes=False)
    assert data == b"" and late.result() == [None]


def test_a_cancelled_job_yields_one_marker_with_its_time() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 5.0, 2.0)
    ledger.ask_cancel([job_id], outcomes=True)
    wake = ledger.receive([reply(job_id, True)], 9.0)
    assert Wake.INPUT in wake and ledger.pending == 0
    frame, _final, _ = ledger.result_or_verdict(must_be_pending=False, cancelled=True)
    assert frame is not None and frame.kind == Kind.CANCEL_REPLY
    assert ledger.take_record(job_id) == (5.0, 2.0, 9.0, [])


# -- RETRYING records -------------------------------------------------------------


def test_retrying_frames_become_the_jobs_attempts() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 1.0, 0.0)
    ledger.receive([retrying(job_id), retrying(job_id)], 2.0)
    ledger.receive([answer(Kind.RESULT, job_id)], 3.0)
    queued, _limit, received, retried = ledger.take_record(job_id)
    assert (queued, received) == (1.0, 3.0)
    assert [(t, f.kind, f.job_id) for t, f in retried] == [(2.0, Kind.ERROR, job_id)] * 2
    assert ledger.take_record(job_id) == (0.0, 0.0, 0.0, [])  # forgotten once taken


def test_a_retried_job_cancelled_before_its_next_attempt_keeps_its_attempts() -> None:
    ledger = serving()
    (job_id,) = ledger.register_jobs(1, 1.0, 0.0)
    ledger.receive([retrying(job_id)], 2.0)
    ledger.ask_cancel([job_id], outcomes=True)
    ledger.receive([reply(job_id, True)], 3.0)
    _queued, _limit, received, retried = ledger.take_record(job_id)
    assert received == 3.0 and len(retried) == 1


def test_retrying_frames_of_an_abandoned_lane_are_not_kept() -> None:
    ledger = serving()
    lane = Lane(records=True)
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0, lane)
    ledger.receive([retrying(job_id)], 1.0)
    assert len(lane.retried[job_id]) == 1
    ledger.abandon_lane(lane)
    ledger.receive([retrying(job_id)], 2.0)
    assert len(lane.retried[job_id]) == 1 and not ledger.retried


def test_no_records_without_keep_records() -> None:
    ledger = serving(keep_records=False)
    (job_id,) = ledger.register_jobs(1, 1.0, 0.0)
    ledger.receive([answer(Kind.RESULT, job_id)], 2.0)
    assert not ledger.queued and not ledger.received


# -- stats, until_closed --------------------------------------------------------------


def test_stats_replies_go_to_their_askers_in_order() -> None:
    ledger = serving()
    a, b = ledger.ask_stats(), ledger.ask_stats()
    ledger.receive([Frame.parse(encode(Kind.STATS, 0, b'{"completed": 1}'))], 0.0)
    assert ledger.stats_result(a) == {"completed": 1} and ledger.stats_result(b) is None
    ledger.begin_forced_stop()
    with pytest.raises(ShutDownError):
        ledger.stats_result(b)


def test_stats_after_a_death_says_died() -> None:
    ledger = serving()
    ticket = ledger.ask_stats()
    ledger.end_of_file()
    with pytest.raises(BossDiedError):
        ledger.stats_result(ticket)
    with pytest.raises(BossDiedError):
        ledger.ask_stats()


def test_until_closed_steps() -> None:
    ledger = serving()
    assert ledger.until_closed_step()[1] == "input"
    (job_id,) = ledger.register_jobs(1, 0.0, 0.0)
    assert ledger.until_closed_step()[1] == "read"
    ledger.receive([answer(Kind.RESULT, job_id)], 1.0)
    frame, step, _ = ledger.until_closed_step()
    assert step == "frame" and frame is not None and frame.job_id == job_id
    ledger.close_input()
    assert ledger.until_closed_step()[1] == "end"


def test_until_closed_waiting_for_input_is_told_of_a_death() -> None:
    ledger = serving()
    assert ledger.until_closed_step()[1] == "input"
    ledger.end_of_file()
    with pytest.raises(BossDiedError, match="no more work"):
        ledger.until_closed_step()

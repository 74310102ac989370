"""The long-run parts of the command line, in process and fast: --halt
specs, the resume scan and its done-set, the job log, --timeout P%, the
records made from outcomes, the ETA text, the line-atomic sink."""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

from bossworker.cli.console import Console
from bossworker.cli.errors import UsageError
from bossworker.cli.halt import MIN_JOBS_FOR_RATE, HaltSpec, HaltWhen, parse_halt
from bossworker.cli.joblog import HEADER, joblog_line, open_joblog
from bossworker.cli.options import RunOptions, TimeLimit, build_parser
from bossworker.cli.progress import eta_text
from bossworker.cli.records import Facts, RunOutcome, error_record, outcome_record, result_record, summary
from bossworker.cli.resume import DoneSet, parse_head, repair_tail, scan_output
from bossworker.cli.runner import _read_back
from bossworker.cli.state import Writer
from bossworker.cli.stdio import LineSink, open_output
from bossworker.errors import (
    TIMED_OUT_ERROR,
    MemoryLimitError,
    RemoteTraceback,
    TaskTimeoutError,
    WorkerDiedError,
)
from bossworker.outcome import Attempt, Outcome

pytestmark = pytest.mark.timeout(30)


# -- --halt ------------------------------------------------------------------------------------


def test_halt_specs_parse() -> None:
    assert parse_halt("now,fail=1") == HaltSpec(HaltWhen.NOW, count=1)
    assert parse_halt("soon,fail=3") == HaltSpec(HaltWhen.SOON, count=3)
    assert parse_halt(" soon,fail=12.5% ") == HaltSpec(HaltWhen.SOON, percent=12.5)
    assert str(parse_halt("soon,fail=10%")) == "soon,fail=10%"
    for bad in ("", "now", "fail=1", "later,fail=1", "now,fail=", "now,fail=0", "now,fail=1.5",
                "now,fail=0%", "now,fail=101%", "now,success=1", "now,fail=-1"):  # fmt: skip
        with pytest.raises(ValueError, match="--halt"):
            parse_halt(bad)


def test_halt_trips_on_a_count_or_a_rate() -> None:
    three = HaltSpec(HaltWhen.SOON, count=3)
    assert not three.tripped(2, 100) and three.tripped(3, 3)
    rate = HaltSpec(HaltWhen.NOW, percent=20)
    assert not rate.tripped(MIN_JOBS_FOR_RATE - 1, MIN_JOBS_FOR_RATE - 1)  # too few to judge
    assert rate.tripped(2, 10) and not rate.tripped(1, 10)
    assert rate.tripped(200, 1000) and not rate.tripped(199, 1000)


def test_writer_calls_on_halt_once_the_spec_trips() -> None:
    calls: list[int] = []
    writer = Writer(
        io.StringIO(), False, 100, None, HaltSpec(HaltWhen.SOON, count=2), lambda: calls.append(1)
    )
    writer.take_slots(4, wait=False)
    writer.finish(1, error_record(1, "bad"))
    writer.finish(2, result_record(2, 2))
    writer.finish(3, None)  # blank: neither a job nor a failure
    assert calls == []
    writer.finish(4, error_record(4, "bad"))
    assert calls == [1]


# -- the resume scan ---------------------------------------------------------------------------


def test_done_set_against_a_plain_set() -> None:
    rng = random.Random(5)
    done, plain = DoneSet(), set()
    for _ in range(20000):
        n = rng.randint(1, 300000)
        assert done.add(n) == (n not in plain)
        plain.add(n)
    assert len(done) == len(plain)
    for n in range(1, 300001, 7):
        assert (n in done) == (n in plain)
    assert 0 not in done and -3 not in done and "1" not in done


def test_done_set_memory_stays_bounded() -> None:
    """Full blocks of 65,536 lines collapse to markers; the reader frees
    blocks it has passed."""
    done = DoneSet()
    for n in range(1, 2_000_001):
        done.add(n)
    assert len(done) == 2_000_000 and 1_999_999 in done and 2_000_001 not in done
    assert done.memory_blocks() == 1  # only the last, partly filled block has a bitmap
    done.forget_below(1_000_000)
    assert 5 not in done and 1_500_000 in done


def test_parse_head() -> None:
    assert parse_head(b'{"line":12,"result":{"a":1}}') == (12, False)
    assert parse_head(b'{"line":7,"error":"x","detail":"y"}') == (7, True)
    for bad in (b'{"line":0,"result":1}', b'{"line":1,"result":1', b'{"lines":1,"result":1}',
                b'{"line":x,"result":1}', b'{"line":1,"other":1}', b"", b"\x00\x00"):  # fmt: skip
        assert parse_head(bad) is None


def test_scan_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    assert len(scan_output(str(out), False).done) == 0  # no file yet: nothing done
    lines = [error_record(2, "bad").text, result_record(1, {"x": [1, 2]}).text, result_record(5, "s").text]
    out.write_text("".join(lines) + '{"line":9,"res')
    scan = scan_output(str(out), False)
    assert sorted(n for n in range(1, 10) if n in scan.done) == [1, 2, 5]
    assert scan.torn_bytes == len('{"line":9,"res') and scan.records == 3
    assert out.read_text() == "".join(lines)
    again = scan_output(str(out), True)  # --resume-failed: the error record goes
    assert sorted(n for n in range(1, 10) if n in again.done) == [1, 5] and again.failed_removed == 1
    assert out.read_text() == lines[1] + lines[2]
    assert not list(tmp_path.glob("*.resume-*"))


def test_scan_output_cuts_a_tail_of_zero_bytes(tmp_path: Path) -> None:
    """What a machine crash can leave: the end of the file as zero bytes."""
    out = tmp_path / "out.jsonl"
    good = result_record(1, 1).text
    out.write_bytes(good.encode() + b"\x00" * 100 + b"\n" + b"\x00" * 50)
    scan = scan_output(str(out), False)
    assert 1 in scan.done and scan.torn_bytes == 151
    assert out.read_text() == good


def test_scan_output_refuses_foreign_lines_and_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("hello\n" + result_record(1, 1).text)
    with pytest.raises(UsageError, match=r"line 1 of .* is not a record"):
        scan_output(str(out), False)
    out.write_text(result_record(3, 1).text * 2)
    with pytest.raises(UsageError, match="two records for input line 3"):
        scan_output(str(out), False)


def test_repair_tail(tmp_path: Path) -> None:
    path = tmp_path / "log"
    assert repair_tail(str(path)) == 0 and not path.exists()
    path.write_bytes(b"a\nb\nhalf")
    assert repair_tail(str(path)) == 4 and path.read_bytes() == b"a\nb\n"
    assert repair_tail(str(path)) == 0
    path.write_bytes(b"x" * 200000)  # no newline at all: all of it is torn
    assert repair_tail(str(path)) == 200000 and path.read_bytes() == b""


# -- the job log and the sink ------------------------------------------------------------------


def test_joblog_lines(tmp_path: Path) -> None:
    assert (
        joblog_line(3, Facts("ok", 42, 1700000000.5, 0.25, 1))
        == "3\t42\t1700000000.500000\t0.250000\t1\tok\n"
    )
    assert joblog_line(4, Facts("invalid_json")) == "4\t-\t-\t0.000000\t0\tinvalid_json\n"
    path = tmp_path / "jobs.log"
    with open_joblog(str(path), append=False) as log:
        assert log is not None
        log.write(1, Facts("ok", 1, 2.0, 3.0, 1))
    assert path.read_text() == HEADER + "1\t1\t2.000000\t3.000000\t1\tok\n"
    with open(path, "a") as f:
        f.write("2\t1\t2.0")  # torn by a kill
    with open_joblog(str(path), append=True) as log:  # a resumed run: no second header
        assert log is not None
        log.write(2, Facts("died", 5, 2.0, 3.0, 2))
    expected = ["1\t1\t2.000000\t3.000000\t1\tok", "2\t5\t2.000000\t3.000000\t2\tdied"]
    assert path.read_text().splitlines() == [*HEADER.splitlines(), *expected]


def test_the_job_log_follows_the_output(tmp_path: Path) -> None:
    """The log's lines reach the file only after their records (a kill can
    leave a record without its log line, never a log line without its record)."""
    out_path, log_path = tmp_path / "out", tmp_path / "log"
    with open_output(str(out_path), None) as out, open_joblog(str(log_path), append=False) as log:
        assert log is not None
        out.follower = log.sink
        writer = Writer(out, False, 10_000, log)
        writer.take_slots(5000, wait=False)
        for k in range(1, 3001):
            writer.finish(k, outcome_record(k, _outcome(value="")))  # log lines longer than records
            if k % 10 == 0:  # the sinks write every ~64 KiB; look often enough to catch each
                logged = log_path.read_bytes().count(b"\n") - 1
                assert logged <= out_path.read_bytes().count(b"\n")
        assert log_path.read_bytes().count(b"\n") - 1 < 3000  # the log waited for a flush
    assert len(log_path.read_text().splitlines()) == 3001


def test_resume_mends_a_job_log_behind_its_output(tmp_path: Path) -> None:
    out, log = tmp_path / "out.jsonl", tmp_path / "jobs.log"
    out.write_text(result_record(1, 1).text + error_record(2, "bad").text + result_record(3, 3).text)
    log.write_text(HEADER + "1\t7\t1.0\t0.1\t1\tok\n3\t7\t1.")  # line 3's was torn by the kill
    args = build_parser().parse_args(["run", "m:f", "-o", str(out), "--joblog", str(log), "--resume"])
    done = _read_back(RunOptions.from_args(args), Console())
    assert [n for n in range(1, 5) if n in done] == [1, 2, 3]
    assert log.read_text().splitlines()[1:] == [
        "1\t7\t1.0\t0.1\t1\tok",
        "2\t-\t-\t-\t-\terror",
        "3\t-\t-\t-\t-\tok",
    ]


def test_line_sink_writes_whole_lines(tmp_path: Path) -> None:
    """The file never holds part of a line, however the lines fall against
    the sink's write size (a kill between two writes tears nothing)."""
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sink = LineSink(fd)
        rng = random.Random(3)
        total = b""
        for _ in range(300):
            line = "y" * rng.randint(0, 3000) + "\n"
            sink.write(line)
            total += line.encode()
            assert path.read_bytes() == total[: path.stat().st_size]
            assert path.stat().st_size == 0 or path.read_bytes().endswith(b"\n")
        sink.flush()
        assert path.read_bytes() == total
    finally:
        os.close(fd)


# -- --timeout -----------------------------------------------------------------------------------


def test_time_limits() -> None:
    parser = build_parser()
    fixed = parser.parse_args(["run", "m:f", "--timeout", "2.5"]).timeout
    assert fixed == TimeLimit(2.5) and fixed.for_median(10.0) == 2.5
    assert parser.parse_args(["run", "m:f"]).timeout.for_median(None) is None  # 0: none
    percent = parser.parse_args(["run", "m:f", "--timeout", "200%"]).timeout
    assert percent.percent == 200 and percent.for_median(None) is None
    assert percent.for_median(0.01) == 1.0  # the floor
    assert percent.for_median(3.0) == 6.0


# -- records from outcomes ---------------------------------------------------------------------


def _outcome(**fields: object) -> Outcome[object]:
    base: dict[str, object] = {"job_id": 1, "ok": True, "worker_pid": 9, "run_time": 0.5, "started_at": 100.0}
    base.update(fields)
    if "attempts" not in base:
        base["attempts"] = (Attempt(9, 0.5, base.get("error"), 100.5),)  # type: ignore[arg-type]
    return Outcome(**base)  # type: ignore[arg-type]


def test_records_from_outcomes() -> None:
    ok = outcome_record(3, _outcome(value={"a": 1}), details=True)
    assert json.loads(ok.text) == {
        "line": 3, "result": {"a": 1},
        "details": {"worker_pid": 9, "start_time": 100.0, "run_time": 0.5, "attempts": 1, "outcome": "ok"},
    }  # fmt: skip
    assert outcome_record(3, _outcome(value={"a": 1})).text == result_record(3, {"a": 1}).text
    raised = ValueError("rattle")
    raised.__cause__ = RemoteTraceback(
        '\n"""\nTraceback (most recent call last):\n  ...\nValueError: rattle"""'
    )
    record = outcome_record(4, _outcome(ok=False, error=raised))
    assert json.loads(record.text)["error"] == "ValueError: rattle"
    assert json.loads(record.text)["detail"].startswith("Traceback")
    assert record.facts is not None and record.facts.kind == "error:ValueError"
    timed = outcome_record(5, _outcome(ok=False, error=TaskTimeoutError("late", 1.0)))
    assert json.loads(timed.text) == {"line": 5, "error": TIMED_OUT_ERROR} and timed.timed_out
    died = WorkerDiedError("x", "SIGKILL", -9)
    died.__cause__ = RemoteTraceback('\n"""\nBossWorkerAsync: worker died (SIGKILL)\n"""')
    record = outcome_record(6, _outcome(ok=False, error=died))
    assert json.loads(record.text)["error"] == "BossWorkerAsync: worker died (SIGKILL)"
    assert record.facts is not None and record.facts.kind == "died"
    memory = MemoryLimitError("over", 2, 1)
    retried = _outcome(
        ok=False, error=memory, attempts=(Attempt(8, 0.1, memory, 1.0), Attempt(9, 0.1, memory, 2.0))
    )
    record = outcome_record(7, retried, details=True)
    facts = record.facts
    assert facts is not None and (facts.kind, facts.attempts, facts.memory_kills) == ("memory", 2, 2)
    assert json.loads(record.text)["details"]["outcome"] == "memory"
    unwritable = outcome_record(8, _outcome(value={1, 2}))
    assert unwritable.facts is not None and unwritable.facts.kind == "unwritable" and unwritable.failed


def test_summary_counts_retries_memory_kills_and_resumed_lines() -> None:
    text = summary(
        jobs=10, errors=1, timeouts=0, elapsed=2.0, outcome=RunOutcome.HALTED, unfinished=3, retries=1,
        memory_kills=2, resumed=5, halt="soon,fail=1", left="about 3 s left at 5.0 lines/s",
    )  # fmt: skip
    assert text == (
        "bossworker: 10 jobs, 1 error, 0 timeouts, 1 retry, 2 memory kills, 5 lines skipped (done before, "
        "--resume), 2.00 s (5.0 jobs/s); halted (--halt soon,fail=1), 3 lines read but not finished; "
        "about 3 s left at 5.0 lines/s"
    )


def test_eta_text() -> None:
    assert eta_text(100, 10.0, 50) == "about 5 s left at 10.0 lines/s"
    assert eta_text(100, 1.0, 100 * 3700) == "about 1 h 1 min left at 100.0 lines/s"
    assert eta_text(10, 1.0, 1200) == "about 2 min 0 s left at 10.0 lines/s"
    assert eta_text(0, 1.0, 5) == "" and eta_text(5, 1.0, None) == ""

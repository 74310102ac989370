"""The command line's parts, in process and fast: records, the writer, line
reading and counting, target loading, warnings' job ids, the summary's line."""

from __future__ import annotations

import io
import json
import math
import os
import pty
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bossworker.cli import records
from bossworker.cli.console import Console, start_own_line
from bossworker.cli.errors import OutputError, UsageError
from bossworker.cli.logs import LogPump, translate
from bossworker.cli.options import RunOptions, build_parser, version
from bossworker.cli.progress import same_terminal
from bossworker.cli.records import Outcome, RunOutcome, error_record, parse_job, result_record, summary
from bossworker.cli.state import RunState, Writer
from bossworker.cli.stdio import count_lines, read_line_batches
from bossworker.cli.targets import load_callable
from bossworker.errors import TIMED_OUT_ERROR

pytestmark = pytest.mark.timeout(20)

HANDLERS = Path(__file__).resolve().parent / "cli_handlers.py"


@pytest.fixture(autouse=True)
def restore_import_state() -> Iterator[None]:
    """load_callable puts directories first on sys.path and imports modules:
    undo both, or a later test's spawned processes would import from here
    (a test directory holds a json.py)."""
    path = list(sys.path)
    modules = set(sys.modules)
    yield
    added = [entry for entry in sys.path if entry not in path]
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        file = getattr(sys.modules[name], "__file__", None) or ""
        if any(file.startswith(directory + os.sep) for directory in added):
            del sys.modules[name]  # imported from a directory the test put on the path


# -- records ---------------------------------------------------------------------------


def test_result_record_is_compact_json() -> None:
    record = result_record(3, {"product": 12, "s": "é"})
    assert record.text == '{"line":3,"result":{"product":12,"s":"\\u00e9"}}\n'
    assert record.outcome is Outcome.RESULT and not record.failed and not record.timed_out


def test_error_dict_results_are_failures() -> None:
    record = result_record(4, {"ERROR": "I said so"})
    assert json.loads(record.text) == {"line": 4, "error": "I said so"}
    assert record.outcome is Outcome.ERROR and record.failed and not record.timed_out
    timed_out = result_record(5, {"ERROR": TIMED_OUT_ERROR})
    assert timed_out.outcome is Outcome.TIMED_OUT and timed_out.failed and timed_out.timed_out


@pytest.mark.parametrize("value", [{1, 2}, math.nan, math.inf, object()])
def test_results_that_are_not_strict_json_are_errors(value: Any) -> None:
    record = result_record(1, value)
    assert record.outcome is Outcome.ERROR
    assert json.loads(record.text)["error"].startswith("the result cannot be written as JSON: ")


def test_error_record_splits_the_first_line_from_the_detail() -> None:
    assert json.loads(error_record(2, "boom").text) == {"line": 2, "error": "boom"}
    multi = json.loads(error_record(2, "ValueError: x\nTraceback ...\n  line 1\n").text)
    assert multi == {"line": 2, "error": "ValueError: x", "detail": "Traceback ...\n  line 1"}
    assert error_record(2, "x", timed_out=True).outcome is Outcome.TIMED_OUT


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a": 1,', "invalid JSON: Expecting property name enclosed in double quotes (column 9)"),
        (b'"\xff"', "invalid JSON: not UTF-8 text"),
        (b"[" * 100_000 + b"]" * 100_000, "invalid JSON: RecursionError"),
        (b"NaN-ish", "invalid JSON: "),
    ],
)
def test_parse_job_errors_are_short(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid JSON") as info:
        parse_job(raw)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_parse_job_and_blank_lines() -> None:
    assert parse_job(b' {"a": [1, 2]} ') == {"a": [1, 2]}
    assert records.is_blank(b"") and records.is_blank(b" \t\r") and not records.is_blank(b" 0")


def test_summary_text() -> None:
    done = summary(jobs=1, errors=0, timeouts=2, elapsed=0.5, outcome=RunOutcome.DONE, unfinished=0)
    assert done == "bossworker: 1 job, 0 errors, 2 timeouts, 0.50 s (2.0 jobs/s)"
    cut = summary(jobs=0, errors=1, timeouts=1, elapsed=0.0, outcome=RunOutcome.INTERRUPTED, unfinished=1)
    assert cut == "bossworker: 0 jobs, 1 error, 1 timeout, 0.00 s; interrupted, 1 line read but not finished"


# -- the writer ---------------------------------------------------------------------------


def rec(n: int, failed: bool = False) -> records.Record:
    return error_record(n, "bad") if failed else result_record(n, n)


def lines_of(out: io.StringIO) -> list[int]:
    return [json.loads(line)["line"] for line in out.getvalue().splitlines()]


def test_unordered_writer_writes_in_finish_order_and_counts() -> None:
    out = io.StringIO()
    writer = Writer(out, ordered=False, slots=10)
    assert writer.take_slots(4, wait=False) == 4
    writer.finish(3, rec(3))
    writer.finish(1, error_record(1, TIMED_OUT_ERROR, timed_out=True))
    writer.finish(2, None)  # a blank line: no record
    writer.finish(4, rec(4, failed=True))
    assert lines_of(out) == [3, 1, 4]
    assert (writer.lines_done, writer.tally.jobs, writer.tally.errors, writer.tally.timeouts) == (4, 3, 2, 1)
    assert writer.take_slots(100, wait=False) == 10  # every slot is back


def test_ordered_writer_holds_lines_back_in_their_slots() -> None:
    out = io.StringIO()
    writer = Writer(out, ordered=True, slots=5)
    assert writer.take_slots(5, wait=False) == 5
    for n in (5, 3, 2):
        writer.finish(n, rec(n))
    assert out.getvalue() == ""
    assert writer.take_slots(1, wait=False) == 0  # held lines keep their slots
    writer.finish(1, None)
    assert lines_of(out) == [2, 3]
    assert writer.take_slots(5, wait=False) == 3  # lines 1 (blank), 2 and 3 gave theirs back
    writer.finish(4, rec(4))
    assert lines_of(out) == [2, 3, 4, 5]
    assert writer.lines_done == 5 and writer.tally.jobs == 4


def test_ordered_writer_random_completion_order() -> None:
    import random

    rng = random.Random(7)
    for _ in range(50):
        n = rng.randint(1, 40)
        order = list(range(1, n + 1))
        rng.shuffle(order)
        out = io.StringIO()
        writer = Writer(out, ordered=True, slots=n)
        writer.take_slots(n, wait=False)
        blank = {k for k in order if k % 7 == 0}
        for k in order:
            writer.finish(k, None if k in blank else rec(k))
        assert lines_of(out) == [k for k in range(1, n + 1) if k not in blank]


def test_a_reader_at_the_limit_waits_for_a_quarter_of_the_slots() -> None:
    writer = Writer(io.StringIO(), ordered=False, slots=8)
    assert writer.take_slots(8, wait=False) == 8
    taken: list[int] = []
    waiter = threading.Thread(target=lambda: taken.append(writer.take_slots(8, wait=True)))
    waiter.start()
    writer.finish(1, rec(1))  # one free: fewer than a quarter (2), the reader sleeps on
    waiter.join(0.2)
    assert waiter.is_alive() and not taken
    writer.finish(2, rec(2))
    waiter.join(10)
    assert taken == [2]


def test_open_all_slots_releases_a_waiting_reader() -> None:
    writer = Writer(io.StringIO(), ordered=True, slots=1)
    writer.take_slots(1, wait=False)
    waiter = threading.Thread(target=writer.take_slots, args=(1, True))
    waiter.start()
    writer.open_all_slots()
    waiter.join(10)
    assert not waiter.is_alive()


class BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self) -> None:
        raise OSError(28, "No space left on device")


def test_write_failures_are_output_errors() -> None:
    writer = Writer(BrokenStream(), ordered=False, slots=2)
    with pytest.raises(OutputError) as info:
        writer.finish(1, rec(1))
    assert isinstance(info.value.__cause__, BrokenPipeError)
    with pytest.raises(OutputError):
        writer.flush()


class CountingPool:
    """Stands in for the pool's add_work (ids from 100 on)."""

    def __init__(self) -> None:
        self.next_id = 100

    def add_work(self, *jobs: Any, timeout: float | None = None) -> list[int]:
        ids = list(range(self.next_id, self.next_id + len(jobs)))
        self.next_id += len(jobs)
        return ids


def test_run_state_maps_job_ids_to_lines() -> None:
    state = RunState()
    state.submit(CountingPool(), [(1, "a"), (4, "b")])
    assert state.line_for(100) == 1 and state.line_for(101) == 4 and state.line_for(102) is None
    assert state.submitted == 2 and state.work_or_end()


# -- reading and counting lines ----------------------------------------------------------------


CONTENTS = [
    b"",
    b"\n",
    b"a",
    b"a\n",
    b"a\n\n b\n",
    b"a\nb",
    b"\n\n\n",
    b"x" * 70_000 + b"\n" + b"y" * 10,
    (b'{"n": 1}\n' * 150_000) + b"\n  \n" + b"last",  # several 1 MiB count chunks
]


@pytest.mark.parametrize("content", CONTENTS, ids=range(len(CONTENTS)))
def test_count_lines_matches_what_the_reader_yields(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with open(path, "rb", buffering=0) as source:
        counted = count_lines(source.fileno())
        assert source.tell() == 0  # pread: the reader's position did not move
        lines = [line for batch in read_line_batches(source) for line in batch]
    assert counted == len(lines)
    expected = content.split(b"\n")
    if expected[-1] == b"":
        expected.pop()
    assert lines == expected


def test_count_lines_gives_up_when_told() -> None:
    stop = threading.Event()
    stop.set()
    r, w = os.pipe()
    try:
        assert count_lines(r, stop) is None
    finally:
        os.close(r)
        os.close(w)


def test_reader_hands_on_a_pipe_line_as_soon_as_it_is_complete() -> None:
    r, w = os.pipe()
    with open(r, "rb", buffering=0) as source:
        batches = read_line_batches(source)
        os.write(w, b'{"a":')
        os.write(w, b" 1}\nnext")
        assert next(batches) == [b'{"a": 1}']  # no need to wait for "next" to end
        os.write(w, b" line\n\nend")
        assert next(batches) == [b"next line", b""]
        os.close(w)
        assert list(batches) == [[b"end"]]


# -- target loading ----------------------------------------------------------------------------


def test_load_a_module_and_a_file_target() -> None:
    assert load_callable("json:dumps") is json.dumps
    assert load_callable("json:JSONDecoder.decode") is json.JSONDecoder.decode
    echo = load_callable(f"{HANDLERS}:echo")
    assert echo("x") == "x" and echo.__module__ == "cli_handlers"
    assert load_callable(f"{HANDLERS}:echo") is echo  # the same module, once


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nocolon", "must look like module:function"),
        ("json:", "must look like module:function"),
        (":f", "must look like module:function"),
        (
            "no_such_module_for_sure:f",
            "module 'no_such_module_for_sure': ModuleNotFound",
        ),
        ("json:no_such", "'json' has no attribute 'no_such'"),
        (f"{HANDLERS}:not_callable", "is not callable (it is a int)"),
        ("tests/nope/missing.py:f", "TARGET file not found: tests/nope/missing.py"),
    ],
)
def test_target_errors_are_one_line(spec: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        load_callable(spec)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_file_targets_that_fail_or_clash(tmp_path: Path) -> None:
    (tmp_path / "cli_unit_broken.py").write_text("raise RuntimeError('nope')\n")
    with pytest.raises(UsageError, match="cannot import --init module 'cli_unit_broken': RuntimeError: nope"):
        load_callable(f"{tmp_path / 'cli_unit_broken.py'}:f", "--init")
    (tmp_path / "json.py").write_text("def f(x):\n    return x\n")
    with pytest.raises(UsageError, match="rename the file"):
        load_callable(f"{tmp_path / 'json.py'}:f")


# -- options -------------------------------------------------------------------------------------


def test_version_and_dask_options() -> None:
    import importlib.metadata

    assert version() == importlib.metadata.version("bossworker")
    args = build_parser().parse_args(["run", "json:dumps", "--dask", "local", "--start-method", "spawn"])
    with pytest.raises(UsageError, match="--start-method has no effect with --dask"):
        RunOptions.from_args(args)
    args = build_parser().parse_args(["run", "json:dumps", "--dask", "tcp://127.0.0.1:1", "-o", "x"])
    options = RunOptions.from_args(args)
    assert options.dask == "tcp://127.0.0.1:1" and options.output == "x" and options.start_method is None


# -- warnings: job ids become lines -----------------------------------------------------------


def test_translate_job_ids() -> None:
    lines = {3: 7, 12: 40}
    assert translate(b"job 3 timed out in worker 99", lines.get) == b"line 7 timed out in worker 99"
    assert translate(b"worker 5 died (SIGKILL) while running job 12", lines.get).endswith(b"running line 40")
    assert translate(b"job 4 overran", lines.get) == b"job 4 overran"  # unknown: left alone
    assert translate(b"jobs 3, job 30, myjob 3", lines.get) == b"jobs 3, job 30, myjob 3"


@pytest.mark.timeout(30)
def test_log_pump_brings_a_forked_childs_records_translated(capsys: pytest.CaptureFixture[str]) -> None:
    """A forked child's records come through the pipe, named by line, with
    newlines kept; the child does not keep the pipe's read end."""
    pump = LogPump(Console())
    pump.map_jobs({5: 9}.get)
    with warnings.catch_warnings():  # 3.12+: "multi-threaded, use of fork()": not here
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: no pytest here, leave with os._exit
        code = 0
        try:
            try:
                os.fstat(pump._read_fd)
                code = 3  # the read end should be gone (-1)
            except OSError:
                pass
            for _ in range(50):
                pump.accept(b"bossworker: WARNING: job 5 timed out\nsecond line")
        finally:
            os._exit(code)
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0
    pump.accept(b"main: job 5 in main")  # this process: printed at once
    pump.stop()
    pump.close()
    err = capsys.readouterr().err
    assert err.count("bossworker: WARNING: line 9 timed out\nsecond line\n") == 50
    assert "main: line 9 in main\n" in err
    assert "job 5" not in err


# -- the summary's own line --------------------------------------------------------------------


def test_start_own_line_on_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "stderr.txt"
    with open(path, "wb", buffering=0) as f:
        assert start_own_line(f.fileno()) == ""  # empty
        f.write(b"a whole line\n")
        assert start_own_line(f.fileno()) == ""
        f.write(b"partial")
        assert start_own_line(f.fileno()) == "\n"
    with open(path, "ab", buffering=0) as f:  # 2>> appends
        assert start_own_line(f.fileno()) == "\n"


def test_start_own_line_on_a_terminal_and_a_pipe() -> None:
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 33, 0, 0))
        assert start_own_line(slave) == " " * 33 + "\r"
        with open(slave, "w", closefd=False) as a, open(slave, "w", closefd=False) as b:
            assert same_terminal(a, b)
    finally:
        os.close(master)
        os.close(slave)
    r, w = os.pipe()
    try:
        assert start_own_line(w) == ""
        with open(w, "w", closefd=False) as a:
            assert not same_terminal(a, sys.__stderr__ or a)
    finally:
        os.close(r)
        os.close(w)

"""The command line, end to end: ``python -m bossworker ...`` in a subprocess."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import queue
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
HANDLERS = "tests/cli_handlers.py"
JOBS = "examples/jobs.jsonl"
SUMMARY_FIELDS = ("jobs", "errors", "timeouts")


def run_cli(
    *args: str, stdin: str | bytes | None = None, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m bossworker ARGS`` from the repository's root."""
    data = stdin.encode() if isinstance(stdin, str) else stdin
    proc = subprocess.run(
        [sys.executable, "-m", "bossworker", *args],
        input=data if data is not None else b"",
        capture_output=True,
        cwd=REPO,
        timeout=timeout,
        env=env,
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode("utf-8", "replace")
    )


def records(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def by_line(stdout: str) -> dict[int, dict[str, Any]]:
    out = {}
    for record in records(stdout):
        assert record["line"] not in out, f"line {record['line']} answered twice"
        out[record["line"]] = record
    return out


def summary_counts(stderr: str) -> dict[str, int]:
    """{'jobs': 5, 'errors': 1, 'timeouts': 0} from the summary line (the last one)."""
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("bossworker: "), stderr
    counts = {}
    for part in last.removeprefix("bossworker: ").split(";")[0].split(", "):
        number, _, noun = part.partition(" ")
        for field in SUMMARY_FIELDS:
            if noun.rstrip("s") == field.rstrip("s"):
                counts[field] = int(number)
    assert set(counts) == set(SUMMARY_FIELDS), last
    return counts


def jsonl(*values: Any) -> str:
    return "".join(json.dumps(v) + "\n" for v in values)


# -- the happy path ---------------------------------------------------------------


def test_run_over_the_shipped_example() -> None:
    proc = run_cli("run", "examples/synopsis.py:work", "--input", JOBS, "--workers", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    jobs = [json.loads(line) for line in (REPO / JOBS).read_text().splitlines()]
    got = by_line(proc.stdout)
    assert sorted(got) == list(range(1, len(jobs) + 1))
    for number, job in enumerate(jobs, start=1):
        assert got[number] == {"line": number, "result": {"product": job["a"] * job["b"]}}
    assert summary_counts(proc.stderr) == {"jobs": len(jobs), "errors": 0, "timeouts": 0}
    assert proc.stderr.count("\n") == 1  # the summary, nothing else


def test_stdin_and_module_target() -> None:
    proc = run_cli("run", "bossworker.cli:demo_work", "--workers", "2", stdin=jsonl({"a": 3, "b": 4}))
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"line": 1, "result": {"product": 12}}]


def test_output_file(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    proc = run_cli("run", "examples/synopsis.py:work", "-i", JOBS, "-o", str(out), "-w", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert len(records(out.read_text())) == len((REPO / JOBS).read_text().splitlines())


def test_blank_lines_are_skipped_but_counted() -> None:
    proc = run_cli("run", f"{HANDLERS}:echo", "-w", "1", "--ordered", stdin='"a"\n\n   \n"b"\n')
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout) == [{"line": 1, "result": "a"}, {"line": 4, "result": "b"}]


def test_ordered_writes_in_input_order() -> None:
    # Line 1 is slow, the rest are instant: completion order puts it last.
    jobs = [{"seconds": 1.0}] + [{"seconds": 0} for _ in range(7)]
    ordered = run_cli("run", f"{HANDLERS}:sleep_then_echo", "-w", "2", "--ordered", stdin=jsonl(*jobs))
    assert ordered.returncode == 0, ordered.stderr
    assert [r["line"] for r in records(ordered.stdout)] == list(range(1, 9))
    unordered = run_cli("run", f"{HANDLERS}:sleep_then_echo", "-w", "2", stdin=jsonl(*jobs))
    assert unordered.returncode == 0, unordered.stderr
    lines = [r["line"] for r in records(unordered.stdout)]
    assert sorted(lines) == list(range(1, 9))
    assert lines[0] != 1


def test_ordered_with_a_small_window_and_errors() -> None:
    """--ordered holds lines back within --max-in-flight without deadlock,
    bad lines included."""
    lines = []
    for n in range(1, 201):
        lines.append(
            "{oops" if n % 17 == 0 else "" if n % 13 == 0 else json.dumps({"n": n, "fail": n % 5 == 0})
        )
    proc = run_cli(
        "run",
        f"{HANDLERS}:fail_when_asked",
        "-w",
        "2",
        "--ordered",
        "--max-in-flight",
        "3",
        stdin="\n".join(lines) + "\n",
    )
    assert proc.returncode == 1
    got = records(proc.stdout)
    expected_lines = [n for n in range(1, 201) if n % 13 != 0 or n % 17 == 0]
    assert [r["line"] for r in got] == expected_lines
    for record in got:
        n = record["line"]
        if n % 17 == 0:
            assert record["error"].startswith("invalid JSON")
        elif n % 5 == 0:
            assert record["error"] == "ValueError: rattle"
        else:
            assert record["result"] == {"ok": n}
    errors = sum("error" in r for r in got)
    assert summary_counts(proc.stderr) == {"jobs": len(expected_lines), "errors": errors, "timeouts": 0}


def test_file_target_under_each_start_method(start_method: str) -> None:
    proc = run_cli(
        "run", f"{HANDLERS}:echo", "--start-method", start_method, "-w", "2", stdin=jsonl([1], {"x": None})
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(records(proc.stdout), key=lambda r: r["line"]) == [
        {"line": 1, "result": [1]},
        {"line": 2, "result": {"x": None}},
    ]


def test_module_in_the_current_directory_under_spawn(tmp_path: Path) -> None:
    (tmp_path / "my_local_handlers.py").write_text("def double(x):\n    return 2 * x\n")
    proc = subprocess.run(
        [sys.executable, "-m", "bossworker", "run", "my_local_handlers:double", "--start-method", "spawn"],
        input=b"21\n",
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert records(proc.stdout.decode()) == [{"line": 1, "result": 42}]


def test_init_and_max_jobs_per_worker() -> None:
    init = run_cli("run", f"{HANDLERS}:was_initialised", "--init", f"{HANDLERS}:initialise", stdin="1\n2\n")
    assert init.returncode == 0, init.stderr
    assert all(r["result"].startswith("yes in ") for r in records(init.stdout))
    recycled = run_cli(
        "run", f"{HANDLERS}:worker_pid", "-w", "1", "--max-jobs-per-worker", "2", stdin="0\n" * 6
    )
    assert recycled.returncode == 0, recycled.stderr
    assert len({r["result"] for r in records(recycled.stdout)}) == 3


def test_demo() -> None:
    proc = run_cli("demo")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "12\nthe answer is: 12\n"


def test_the_example_script() -> None:
    proc = subprocess.run(
        [sys.executable, "examples/synopsis.py"], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "12\nthe answer is: 12\n"


# -- failures that are records -------------------------------------------------------


def test_bad_json_line_is_an_error_record_and_the_run_goes_on() -> None:
    stdin = b'{"a": 1, "b": 2}\n{"a": 1,\n\xff\xfe\n[1, 2\n{"a": 2, "b": 5}\n'
    proc = run_cli("run", "examples/synopsis.py:work", "-w", "2", stdin=stdin)
    assert proc.returncode == 1
    got = by_line(proc.stdout)
    assert got[1] == {"line": 1, "result": {"product": 2}}
    assert got[5] == {"line": 5, "result": {"product": 10}}
    for n in (2, 3, 4):
        assert set(got[n]) == {"line", "error"}
        assert got[n]["error"].startswith("invalid JSON: ")
    assert summary_counts(proc.stderr) == {"jobs": 5, "errors": 3, "timeouts": 0}


def test_handler_exception_is_an_error_record() -> None:
    proc = run_cli(
        "run",
        f"{HANDLERS}:fail_when_asked",
        "-w",
        "2",
        stdin=jsonl({"n": 1}, {"n": 2, "fail": True}, {"n": 3}),
    )
    assert proc.returncode == 1
    got = by_line(proc.stdout)
    assert got[1]["result"] == {"ok": 1}
    assert got[3]["result"] == {"ok": 3}
    assert got[2]["error"] == "ValueError: rattle"
    assert "Traceback" in got[2]["detail"] and "fail_when_asked" in got[2]["detail"]
    assert summary_counts(proc.stderr) == {"jobs": 3, "errors": 1, "timeouts": 0}


def test_timeout_is_an_error_record() -> None:
    stdin = jsonl({"seconds": 30}, {"seconds": 0})
    started = time.monotonic()
    proc = run_cli("run", f"{HANDLERS}:sleep_then_echo", "-w", "2", "--timeout", "0.5", stdin=stdin)
    assert time.monotonic() - started < 20
    assert proc.returncode == 1
    got = by_line(proc.stdout)
    assert got[1] == {"line": 1, "error": "BossWorkerAsync: timed out"}
    assert got[2] == {"line": 2, "result": {"seconds": 0}}
    assert summary_counts(proc.stderr) == {"jobs": 2, "errors": 1, "timeouts": 1}


def test_worker_death_is_an_error_record() -> None:
    jobs = [{"n": n, "die": n == 3} for n in range(1, 7)]
    proc = run_cli("run", f"{HANDLERS}:die_when_asked", "-w", "2", "--ordered", stdin=jsonl(*jobs))
    assert proc.returncode == 1
    got = records(proc.stdout)
    assert [r["line"] for r in got] == list(range(1, 7))
    assert got[2]["error"].startswith("BossWorkerAsync: worker died")
    assert [r["result"]["ok"] for r in got if "result" in r] == [1, 2, 4, 5, 6]
    assert summary_counts(proc.stderr) == {"jobs": 6, "errors": 1, "timeouts": 0}


def test_result_that_is_not_json_is_an_error_record() -> None:
    proc = run_cli("run", f"{HANDLERS}:return_a_set", "-w", "1", stdin="1\n")
    assert proc.returncode == 1
    [record] = records(proc.stdout)
    assert record["line"] == 1
    assert record["error"].startswith("the result cannot be written as JSON: TypeError")


def test_error_dict_result_is_a_failure() -> None:
    proc = run_cli("run", f"{HANDLERS}:return_error_dict", "-w", "1", stdin="1\n")
    assert proc.returncode == 1
    assert records(proc.stdout) == [{"line": 1, "error": "I said so"}]


# -- failures that stop the run at once ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("no_such_module_anywhere:f", "No module named 'no_such_module_anywhere'"),
        ("tests/no_such_file.py:f", "file not found"),
        (f"{HANDLERS}:no_such_function", "has no attribute 'no_such_function'"),
        ("no colon at all", "must look like module:function"),
    ],
)
def test_unimportable_target(target: str, message: str) -> None:
    proc = run_cli("run", target, stdin="1\n")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("bossworker: error: ")
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("target", [f"{HANDLERS}:not_callable", "--init=tests/cli_handlers.py:not_callable"])
def test_not_callable_target(target: str) -> None:
    args = ["run", target] if not target.startswith("--") else ["run", f"{HANDLERS}:echo", target]
    proc = run_cli(*args, stdin="1\n")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "is not callable (it is a int)" in proc.stderr


def test_target_that_fails_on_import(tmp_path: Path) -> None:
    bad = tmp_path / "broken_on_import.py"
    bad.write_text("raise RuntimeError('nope')\n")
    proc = run_cli("run", f"{bad}:f", stdin="1\n")
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "bossworker: error: cannot import TARGET module 'broken_on_import': RuntimeError: nope"
    )


def test_file_target_named_like_an_imported_module(tmp_path: Path) -> None:
    (tmp_path / "json.py").write_text("def f(x):\n    return x\n")
    proc = run_cli("run", f"{tmp_path / 'json.py'}:f", stdin="1\n")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "rename the file" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["run"],
        ["run", f"{HANDLERS}:echo", "--workers", "0"],
        ["run", f"{HANDLERS}:echo", "--timeout", "-1"],
        ["run", f"{HANDLERS}:echo", "--start-method", "teleport"],
        ["run", f"{HANDLERS}:echo", "--no-such-option"],
    ],
)
def test_bad_options(args: list[str]) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert "usage: bossworker" in proc.stderr


def test_missing_input_file() -> None:
    proc = run_cli("run", f"{HANDLERS}:echo", "--input", "no/such/file.jsonl")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip() == "bossworker: error: cannot read no/such/file.jsonl: No such file or directory"
    )


# -- streaming and Ctrl-C ---------------------------------------------------------------


class LiveCLI:
    """The CLI in its own session, fed through a pipe, its output read by a thread."""

    def __init__(self, *args: str, read_output: bool = True) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bossworker", "run", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            start_new_session=True,
            # SIGABRT then dumps every thread's stack: see wait_for_exit().
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        if read_output:
            self._reader.start()

    def _read(self, stream: IO[bytes]) -> None:
        for line in stream:
            self.lines.put(line)

    def send(self, *jobs: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(jsonl(*jobs).encode())
        self.proc.stdin.flush()

    def next_record(self, timeout: float = 30) -> dict[str, Any]:
        record: dict[str, Any] = json.loads(self.lines.get(timeout=timeout))
        return record

    def wait_for_exit(self, timeout: float) -> int:
        """The exit code; on a hang, fail with the stacks of its threads."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            family = self.family_report()
            self.proc.send_signal(signal.SIGABRT)
            self.proc.wait(10)
            assert self.proc.stderr is not None
            pytest.fail(f"no exit after {timeout} s; family: {family}\n{self.proc.stderr.read().decode()}")

    def family_report(self) -> str:
        """The CLI's descendants and their states, for failure messages."""
        report = []
        for p in self.descendants():
            with contextlib.suppress(psutil.Error):
                report.append(f"{p.pid} {p.status()} {p.cpu_times().user:.2f}s")
        return "; ".join(report)

    def descendants(self) -> list[psutil.Process]:
        return psutil.Process(self.proc.pid).children(recursive=True)

    def close(self) -> None:
        """Kill what is left of it (if anything) and close its pipes."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        if self._reader.ident is not None:
            self._reader.join(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


@pytest.fixture
def live() -> Iterator[list[LiveCLI]]:
    """Started LiveCLIs go here; they are closed after the test."""
    started: list[LiveCLI] = []
    yield started
    for cli in started:
        cli.close()


def session_members(sid: int) -> list[psutil.Process]:
    members = []
    for p in psutil.process_iter():
        with contextlib.suppress(ProcessLookupError, psutil.Error):
            if os.getsid(p.pid) == sid:
                members.append(p)
    return members


def test_results_stream_out_while_the_input_is_still_open(live: list[LiveCLI]) -> None:
    cli = LiveCLI(f"{HANDLERS}:echo", "-w", "2", "--no-progress")
    live.append(cli)
    for n in range(1, 4):
        cli.send({"n": n})
        assert cli.next_record() == {"line": n, "result": {"n": n}}
    assert cli.proc.stdin is not None
    cli.proc.stdin.close()
    assert cli.wait_for_exit(30) == 0


@pytest.mark.parametrize(
    ("where", "method"),
    [
        ("waiting for input", "fork"),
        ("waiting for busy workers", "fork"),
        ("waiting for busy workers", "spawn"),
    ],
)
def test_ctrl_c_stops_cleanly(live: list[LiveCLI], tmp_path: Path, where: str, method: str) -> None:
    cli = LiveCLI(
        f"{HANDLERS}:sleep_then_echo",
        "-w",
        "2",
        "--max-in-flight",
        "3",
        "--start-method",
        method,
        "--no-progress",
    )
    live.append(cli)
    cli.send({"seconds": 0})
    assert cli.next_record()["line"] == 1
    if where == "waiting for busy workers":
        markers = [tmp_path / f"started-{n}" for n in range(6)]
        cli.send(*({"seconds": 60, "marker": str(m)} for m in markers))
        # At least one job is running and the reader is held at --max-in-flight.
        # (Not necessarily both workers: the pool may send jobs ahead to the
        # first ready worker while the second is still starting.)
        wait_until(
            lambda: any(m.exists() for m in markers),
            what=lambda: f"a job to start: {cli.family_report()}",
        )
    family = cli.descendants()
    assert len(family) >= 3  # the Boss and two workers

    os.killpg(cli.proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    assert cli.wait_for_exit(30) == 130
    _gone, alive = psutil.wait_procs(family, timeout=10)
    assert not alive, f"left behind: {alive}"
    wait_until(lambda: session_members(cli.proc.pid) == [], timeout=10, what="the session to empty")
    assert cli.proc.stderr is not None
    stderr = cli.proc.stderr.read().decode()
    assert "Traceback" not in stderr
    assert "interrupted" in stderr.splitlines()[-1]
    assert summary_counts(stderr)["jobs"] == 1


def test_closed_output_pipe_ends_the_run_quietly(live: list[LiveCLI], tmp_path: Path) -> None:
    """``bossworker run ... | head -1``."""
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(jsonl(*({"seconds": 0.001} for _ in range(3000))))
    cli = LiveCLI(
        f"{HANDLERS}:sleep_then_echo", "-w", "2", "-i", str(jobs), "--no-progress", read_output=False
    )
    live.append(cli)
    assert cli.proc.stdout is not None
    assert json.loads(cli.proc.stdout.readline())["result"] == {"seconds": 0.001}
    cli.proc.stdout.close()  # like head after its first line
    assert cli.wait_for_exit(60) == 1
    assert cli.proc.stderr is not None
    stderr = cli.proc.stderr.read().decode()
    assert stderr.count("\n") == 1, stderr  # the summary alone: no traceback, no "Exception ignored"
    assert "output closed" in stderr


def test_handler_output_and_input_are_kept_apart() -> None:
    """A handler's print() goes to standard error, and it reads nothing from standard input."""
    proc = run_cli("run", f"{HANDLERS}:chatty", "-w", "2", stdin=jsonl(*range(20)))
    assert proc.returncode == 0, proc.stderr
    got = by_line(proc.stdout)  # every line is JSON
    assert sorted(got) == list(range(1, 21))
    assert all(r["result"]["stdin"] == "" for r in got.values())
    assert proc.stderr.count("must not end up in the JSON Lines output") == 20


def test_what_the_target_module_prints_on_import_stays_out_of_the_records() -> None:
    """Standard output is taken over before TARGET is imported: a module
    printing as it loads writes to standard error, not into the JSON Lines."""
    proc = run_cli("run", "tests/cli_loud_import.py:echo", "-w", "1", stdin=jsonl(1, 2))
    assert proc.returncode == 0, proc.stderr
    assert sorted(by_line(proc.stdout)) == [1, 2]  # every stdout line is a record
    assert "a TARGET module printing as it is imported" in proc.stderr


def test_timeout_past_the_pools_limit_is_a_usage_error() -> None:
    proc = run_cli("run", f"{HANDLERS}:echo", "--timeout", "1e12", stdin="1\n")
    assert proc.returncode == 2, proc.stderr
    assert "--timeout: must be a number of seconds from 0 (no limit) to 1e+09" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- the progress bar -------------------------------------------------------------------


def run_with_terminal_stderr(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI with standard error on a pseudo-terminal: (exit code, stdout, terminal output)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # rows, columns
    proc = subprocess.Popen(
        [sys.executable, "-m", "bossworker", *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=slave,
        cwd=REPO,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        stdout, _ = proc.communicate(timeout=60)
    finally:
        reader.join(10)
        os.close(master)
    return proc.returncode, stdout.decode(), b"".join(chunks).decode("utf-8", "replace")


def test_progress_bar_on_a_terminal() -> None:
    code, stdout, terminal = run_with_terminal_stderr(
        "run", "examples/synopsis.py:work", "-i", JOBS, "-w", "2"
    )
    assert code == 0, terminal
    assert len(records(stdout)) == 5
    assert "5/5" in terminal and "errors=0" in terminal, terminal
    assert "bossworker: 5 jobs, 0 errors, 0 timeouts" in terminal


def test_eta_on_the_progress_bar(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(jsonl(*[{"seconds": 0.15} for _ in range(12)]))
    code, stdout, terminal = run_with_terminal_stderr(
        "run", f"{HANDLERS}:sleep_then_echo", "-i", str(source), "-w", "1", "--eta"
    )
    assert code == 0, terminal
    assert len(records(stdout)) == 12
    assert re.search(r"eta=about \d+ s left at [\d.]+ lines/s", terminal), terminal


def test_no_progress_flag_and_missing_tqdm(tmp_path: Path) -> None:
    code, _, terminal = run_with_terminal_stderr(
        "run", "examples/synopsis.py:work", "-i", JOBS, "-w", "1", "--no-progress"
    )
    assert code == 0
    assert "errors=" not in terminal and "pip install" not in terminal
    # Shadow tqdm with a package that cannot be imported.
    (tmp_path / "tqdm").mkdir()
    (tmp_path / "tqdm" / "__init__.py").write_text("raise ImportError('not installed, for this test')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    code, stdout, terminal = run_with_terminal_stderr("run", "examples/synopsis.py:work", "-i", JOBS, env=env)
    assert code == 0, terminal
    assert len(records(stdout)) == 5
    assert terminal.count("pip install 'bossworker[cli]'") == 1, terminal


# -- what a new user tripped on ---------------------------------------------------------


def test_version() -> None:
    import importlib.metadata

    proc = run_cli("--version")
    assert proc.returncode == 0
    assert proc.stdout == f"bossworker {importlib.metadata.version('bossworker')}\n"


def test_warnings_name_input_lines_not_job_ids() -> None:
    """Every worker death and timeout warning names its input line.  Many
    deaths in one run: the warning is printed by a thread of its own, and
    must still find the line that the collector is about to forget."""
    lines = ['"blank lines and bad lines shift the numbering"', "", "{oops"]
    dying = set()
    for n in range(4, 124):
        lines.append(json.dumps({"n": n, "die": n % 2 == 0}))
        if n % 2 == 0:
            dying.add(n)
    proc = run_cli("run", f"{HANDLERS}:die_when_asked", "-w", "2", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 1
    died = [line for line in proc.stderr.splitlines() if "while running" in line]
    assert sorted(int(line.rsplit(" ", 1)[1]) for line in died) == sorted(dying), proc.stderr
    assert all(" while running line " in line for line in died), died
    assert " job " not in proc.stderr, proc.stderr
    timed = run_cli(
        "run",
        f"{HANDLERS}:sleep_then_echo",
        "-w",
        "1",
        "-t",
        "0.3",
        stdin='\n\n{"seconds": 0}\n{"seconds": 30}\n',
    )
    assert timed.returncode == 1
    assert "bossworker: WARNING: line 4 timed out in worker " in timed.stderr, timed.stderr


def test_progress_total_is_the_exact_line_count_of_a_file(tmp_path: Path) -> None:
    """The estimate from bytes read showed ``214/610`` for a 600-line file."""
    path = tmp_path / "jobs.jsonl"
    lines = [json.dumps({"seconds": 0.002, "pad": "x" * (n % 97)}) for n in range(1, 601)]
    lines[10] = lines[200] = "  "  # blank lines are lines of the bar too
    path.write_text("\n".join(lines))  # and the last one has no newline
    code, stdout, terminal = run_with_terminal_stderr(
        "run", f"{HANDLERS}:sleep_then_echo", "-i", str(path), "-w", "2"
    )
    assert code == 0, terminal
    assert len(records(stdout)) == 598
    totals = {int(total) for _done, total in re.findall(r"(\d+)/(\d+) \[", terminal)}
    assert totals == {600}, terminal
    assert "600/600" in terminal


def test_no_bar_when_the_records_go_to_the_same_terminal() -> None:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "bossworker", "run", "examples/synopsis.py:work", "-i", JOBS, "-w", "2"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
    )
    os.close(slave)
    chunks: list[bytes] = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    terminal = b"".join(chunks).decode()
    assert terminal.count('"result"') == 5, terminal
    assert "errors=" not in terminal and "it/s" not in terminal and "line/s" not in terminal, terminal
    assert "bossworker: 5 jobs, 0 errors" in terminal


def test_summary_on_its_own_line_after_unterminated_handler_output(tmp_path: Path) -> None:
    # Standard error a regular file: a newline is added exactly when needed.
    err = tmp_path / "stderr.txt"
    with open(err, "wb") as f:
        proc = subprocess.run(
            [sys.executable, "-m", "bossworker", "run", f"{HANDLERS}:unterminated", "-w", "1"],
            input=b"1\n",
            stdout=subprocess.PIPE,
            stderr=f,
            cwd=REPO,
            timeout=60,
        )
    assert proc.returncode == 0
    text = err.read_text()
    assert text.startswith("partial output\nbossworker: 1 job, 0 errors"), text
    clean = tmp_path / "clean.txt"
    with open(clean, "wb") as f:
        subprocess.run(
            [sys.executable, "-m", "bossworker", "run", f"{HANDLERS}:echo", "-w", "1"],
            input=b"1\n",
            stdout=subprocess.PIPE,
            stderr=f,
            cwd=REPO,
            timeout=60,
        )
    assert clean.read_text().startswith("bossworker: 1 job, 0 errors"), clean.read_text()
    # A terminal (100 columns): spaces to the margin and a carriage return, so
    # the summary starts a line whatever column the cursor was in.
    one = tmp_path / "one.jsonl"
    one.write_text("1\n")
    code, _, terminal = run_with_terminal_stderr(
        "run", f"{HANDLERS}:unterminated", "-i", str(one), "-w", "1", "--no-progress"
    )
    assert code == 0, terminal
    assert terminal.startswith("partial output" + " " * 100 + "\rbossworker: 1 job, 0 errors"), terminal


def _dask_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("distributed") is not None


@pytest.mark.skipif(not _dask_installed(), reason="the 'dask' extra is not installed")
@pytest.mark.timeout(300)  # two clusters and seven runs; slow on a loaded machine
def test_run_on_a_dask_cluster(tmp_path: Path) -> None:
    """``--dask ADDRESS`` (a real scheduler and workers on 127.0.0.1) and
    ``--dask local`` (a private local cluster)."""
    from dask_cluster import DaskCluster

    jobs = jsonl({"seconds": 0}, {"seconds": 30}, {"seconds": 0.01}) + "\n"
    cluster = DaskCluster(tmp_path, n_workers=2).start()
    try:
        proc = run_cli(
            "run",
            f"{HANDLERS}:sleep_then_echo",
            "--dask",
            cluster.address,
            "-t",
            "1",
            "--ordered",
            stdin=jobs,
        )
    finally:
        cluster.stop()
    assert proc.returncode == 1, proc.stderr
    assert records(proc.stdout) == [
        {"line": 1, "result": {"seconds": 0}},
        {"line": 2, "error": "BossWorkerAsync: timed out"},
        {"line": 3, "result": {"seconds": 0.01}},
    ]
    assert summary_counts(proc.stderr) == {"jobs": 3, "errors": 1, "timeouts": 1}
    local = run_cli(
        "run", f"{HANDLERS}:worker_pid", "--dask", "local", "-w", "2", stdin="1\n2\n3\n", timeout=120
    )
    assert local.returncode == 0, local.stderr
    assert len(records(local.stdout)) == 3
    # A TARGET the Dask workers cannot import: the real cause, not "--init failed".
    # TARGET travels by value, but what it imports travels by name: a module
    # only this machine has makes it unloadable on the Dask workers.
    elsewhere = tmp_path / "elsewhere"  # not the cluster's directory
    elsewhere.mkdir()
    alien = elsewhere / "alien_module_here.py"
    alien.write_text("import helper_only_here\n\ndef f(x):\n    return helper_only_here.g(x)\n")
    (elsewhere / "helper_only_here.py").write_text("def g(x):\n    return x\n")
    cluster = DaskCluster(tmp_path, n_workers=1).start()
    try:
        unknown = run_cli("run", f"{alien}:f", "--dask", cluster.address, stdin="1\n", timeout=120)
        # --joblog and --resume on Dask: a second run has nothing left to do.
        out, log = tmp_path / "out.jsonl", tmp_path / "jobs.log"
        args = [
            "run",
            f"{HANDLERS}:worker_pid",
            "--dask",
            cluster.address,
            "-o",
            str(out),
            "--joblog",
            str(log),
        ]
        first = run_cli(*args, "--details", stdin="1\n2\n3\n", timeout=120)
        again = run_cli(*args, "--resume", stdin="1\n2\n3\n4\n", timeout=120)
        failing = jsonl({"n": 1}, {"n": 2, "fail": True}, *({"n": k} for k in range(3, 200)))
        halted = run_cli(
            "run", f"{HANDLERS}:fail_when_asked", "--dask", cluster.address, "--halt", "soon,fail=1",
            stdin=failing, timeout=120,
        )  # fmt: skip
    finally:
        cluster.stop()
    assert halted.returncode == 3, halted.stderr
    assert "halted (--halt soon,fail=1)" in halted.stderr
    assert {"line": 2, "error": "ValueError: rattle"} in [
        {k: r[k] for k in ("line", "error")} for r in records(halted.stdout) if "error" in r
    ]
    assert unknown.returncode == 2, unknown.stderr
    assert "--init" not in unknown.stderr
    assert "no Dask worker could load TARGET" in unknown.stderr
    assert "importable on the Dask workers" in unknown.stderr
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["line"] for r in lines) == [1, 2, 3, 4]
    rows = log.read_text().splitlines()
    assert rows[0].startswith("line\tworker_pid") and len(rows) == 5
    assert all(row.split("\t")[5] == "ok" for row in rows[1:])
    assert "3 lines skipped" in again.stderr
    refused = run_cli("run", f"{HANDLERS}:echo", "--dask", "local", "--start-method", "spawn", stdin="1\n")
    assert refused.returncode == 2
    assert "--start-method has no effect with --dask" in refused.stderr

"""The command line for long runs, end to end (``python -m bossworker run``
in subprocesses): ``--resume`` after SIGKILL at random moments,
``--resume-failed``, ``--halt``, ``--joblog``, ``--retries``,
``--max-worker-memory``, ``--timeout P%``, ``--details``, ``--eta``."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
HANDLERS = "tests/cli_handlers.py"
JOBLOG_COLUMNS = ["line", "worker_pid", "start_time", "run_time", "attempts", "outcome"]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bossworker", "run", *args, "--no-progress"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=timeout,
    )


def write_jobs(path: Path, jobs: list[Any]) -> None:
    path.write_text("".join(json.dumps(job) + "\n" for job in jobs))


def complete_records(path: Path) -> list[dict[str, Any]]:
    """The records of an output file, without a torn last line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines()]


def one_per_line(path: Path) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for record in complete_records(path):
        assert record["line"] not in out, f"line {record['line']} has two records"
        out[record["line"]] = record
    return out


def side_entries(path: Path, offset: int = 0) -> list[int]:
    if not path.exists():
        return []
    with open(path, "rb") as f:
        f.seek(offset)
        return [int(n) for n in f.read().split()]


def joblog(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        assert reader.fieldnames == JOBLOG_COLUMNS
        return list(reader)


def last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


# -- resume after SIGKILL ----------------------------------------------------------------------


def _kill_at_random(proc: subprocess.Popen[bytes], out: Path, rng: random.Random, size_before: int) -> None:
    """SIGKILL the command at a random moment: mostly while records are being
    written (after its output has grown), sometimes during start-up; then
    wait until its Boss and workers are gone too."""
    if rng.random() < 0.8:
        # Wait (on the file, not a bare sleep) for the run to be writing.
        wait_until(
            lambda: proc.poll() is not None or (out.exists() and out.stat().st_size > size_before),
            timeout=60,
        )
        time.sleep(rng.uniform(0, 0.25))  # the random moment itself
    else:
        time.sleep(rng.uniform(0, 0.6))
    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Its Boss and workers follow it (parent-death signal, or the closed
    # socket); none may still run a job while the next run starts.
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, alive


@pytest.mark.timeout(240)
@pytest.mark.parametrize("ordered", [False, True], ids=["unordered", "ordered"])
def test_sigkill_at_random_moments_then_resume(tmp_path: Path, ordered: bool) -> None:
    """10 SIGKILLs per order (20 in the test), each followed by ``--resume``:
    in the end every input line has exactly one record, and no line whose
    record was in the output when a run started was run by that run (the
    handler notes each run in a side file).  Blank and invalid lines too."""
    n, kills = 1500, 10
    rng = random.Random(20 + ordered)
    side, out, log = tmp_path / "side.txt", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    jobs: list[Any] = [{"n": k, "side": str(side), "seconds": 0.003, "pad": 1500} for k in range(1, n + 1)]
    source = tmp_path / "in.jsonl"
    write_jobs(source, jobs)
    # A few lines that are no jobs: blank (no record), not JSON (an error record).
    lines = source.read_text().splitlines()
    for k in (10, 700, 1499):
        lines[k - 1] = "   "
    lines[499] = "{not json"
    source.write_text("\n".join(lines) + "\n")
    blank = {10, 700, 1499}
    args = [f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--joblog", str(log), "-w", "3"]
    args += ["--ordered"] if ordered else []
    torn_seen = 0
    finished_early = 0
    for round_ in range(kills + 1):
        before = {r["line"] for r in complete_records(out)}
        offset = side.stat().st_size if side.exists() else 0
        size_before = out.stat().st_size if out.exists() else 0
        resume = ["--resume"] if round_ else []
        if round_ == kills // 2:
            # A torn record as a kill inside a write leaves it, made for sure once.
            with open(out, "ab") as f:
                f.write(b'{"line":123456,"result":{"n":1,"pa')
        proc = subprocess.Popen(
            [sys.executable, "-m", "bossworker", "run", *args, *resume, "--no-progress"],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if round_ < kills:
            _kill_at_random(proc, out, rng, size_before)
            assert proc.stderr is not None
            stderr = proc.stderr.read().decode()
            proc.stderr.close()
            finished_early += proc.returncode == 1  # the whole input done before the kill
            # A kill inside a write tears the last record (rare: a write is
            # microseconds); round kills // 2 is torn on purpose, not counted.
            torn_seen += round_ != kills // 2 and out.exists() and not out.read_bytes().endswith(b"\n")
        else:
            _, err = proc.communicate(timeout=120)
            stderr = err.decode()
            # The exit status is this run's: 1 if it wrote the invalid line's error.
            assert proc.returncode == (500 not in before), stderr
            assert "skipped (done before, --resume)" in last_line(stderr)
        ran = side_entries(side, offset)
        again = before & set(ran)
        assert not again, (
            f"round {round_}: lines recorded before the run were run again: {sorted(again)[:10]}"
        )
    got = one_per_line(out)
    assert sorted(got) == [k for k in range(1, n + 1) if k not in blank]
    assert got[500]["error"].startswith("invalid JSON")
    assert all(got[k]["result"]["n"] == k for k in got if k != 500)
    if ordered:
        # Input order survives every kill and resume (nothing torn mid-file).
        assert [r["line"] for r in complete_records(out)] == sorted(got)
    # Every job ran at least once; more than once only if it was in flight at a kill.
    assert set(side_entries(side)) == set(got) - {500}
    # The job log has one line per record, in the same order.
    assert [int(row["line"]) for row in joblog(log)] == [r["line"] for r in complete_records(out)]
    assert finished_early == 0, "the input was done before the last kill: make the jobs slower"
    print(f"records torn by a kill (besides the one made on purpose): {torn_seen} of {kills - 1} kills")


def _kill_inside_a_write(proc: subprocess.Popen[bytes], out: Path) -> bool:
    """Watch the output's end (``stat`` and one byte, a few microseconds) and
    SIGKILL the command the moment it ends inside a record: a write is
    under way.  Returns whether it still ends torn once the command is dead
    (and its Boss and workers are gone)."""
    deadline = time.monotonic() + 60
    fd = -1
    family: list[psutil.Process] = []
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if fd < 0:
                try:
                    fd = os.open(out, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                # The output is open: the pool is up; note its processes.
                wait_until(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 3, timeout=60)
                family = psutil.Process(proc.pid).children(recursive=True)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(family, timeout=30)
        assert not alive, alive
        return proc.returncode == -signal.SIGKILL and not out.read_bytes().endswith(b"\n")
    finally:
        if fd >= 0:
            os.close(fd)


@pytest.mark.timeout(180)
def test_sigkill_inside_a_write_then_resume(tmp_path: Path) -> None:
    """Records of 2 MiB take a write of a millisecond or more: the command is
    killed while one is half on disk, three times, each followed by
    ``--resume``; the torn record is cut off and its line run again."""
    side, out = tmp_path / "side.txt", tmp_path / "out.jsonl"
    source = tmp_path / "in.jsonl"
    n = 24
    write_jobs(source, [{"n": k, "side": str(side), "pad": 2 << 20} for k in range(1, n + 1)])
    args = [f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "-w", "2", "--no-progress"]
    torn = 0
    for round_ in range(3):
        before = {r["line"] for r in complete_records(out)}
        offset = side.stat().st_size if side.exists() else 0
        proc = subprocess.Popen(
            [sys.executable, "-m", "bossworker", "run", *args, *(["--resume"] if round_ else [])],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        torn += _kill_inside_a_write(proc, out)
        assert not before & set(side_entries(side, offset))
    final = cli(*args, "--resume", timeout=180)
    assert final.returncode == 0, final.stderr
    got = one_per_line(out)
    assert sorted(got) == list(range(1, n + 1))
    assert all(len(r["result"]["pad"]) == 2 << 20 for r in got.values())
    assert torn >= 1, "no kill landed inside a write"
    print(f"kills that left a torn record: {torn} of 3")


def test_a_torn_last_record_is_cut_and_its_line_run_again(tmp_path: Path) -> None:
    side, out = tmp_path / "side.txt", tmp_path / "out.jsonl"
    source = tmp_path / "in.jsonl"
    write_jobs(source, [{"n": k, "side": str(side)} for k in range(1, 6)])
    torn = b'{"line":3,"result":{"n":3,"pa'
    out.write_bytes(b'{"line":1,"result":{"n":1,"pad":""}}\n' + torn)
    proc = cli(f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--resume", "-w", "1")
    assert proc.returncode == 0, proc.stderr
    assert "cut a torn last record" in proc.stderr and f"({len(torn)} bytes)" in proc.stderr
    assert sorted(side_entries(side)) == [2, 3, 4, 5]
    assert sorted(one_per_line(out)) == [1, 2, 3, 4, 5]
    assert "1 line skipped" in last_line(proc.stderr)


def test_resume_refuses_standard_output_and_foreign_files(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    write_jobs(source, [1, 2])
    proc = cli(f"{HANDLERS}:echo", "-i", str(source), "--resume")
    assert proc.returncode == 2
    assert (
        "--resume needs --output FILE" in proc.stderr and "standard output cannot be read back" in proc.stderr
    )
    foreign = tmp_path / "notes.txt"
    foreign.write_text("dear diary\n" + '{"line":1,"result":1}\n')
    proc = cli(f"{HANDLERS}:echo", "-i", str(source), "-o", str(foreign), "--resume")
    assert proc.returncode == 2 and "is not a record of bossworker run" in proc.stderr, proc.stderr
    assert foreign.read_text().startswith("dear diary")  # left alone
    longer = tmp_path / "longer.jsonl"
    longer.write_text('{"line":1,"result":1}\n{"line":7,"result":7}\n')
    proc = cli(f"{HANDLERS}:echo", "-i", str(source), "-o", str(longer), "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "has 1 record for lines the input does not have" in proc.stderr, proc.stderr
    twice = tmp_path / "twice.jsonl"
    twice.write_text('{"line":1,"result":1}\n{"line":1,"result":1}\n')
    proc = cli(f"{HANDLERS}:echo", "-i", str(source), "-o", str(twice), "--resume")
    assert proc.returncode == 2 and "two records for input line 1" in proc.stderr, proc.stderr


def test_resume_failed_reruns_exactly_the_failed_lines(tmp_path: Path) -> None:
    side, out, log = tmp_path / "side.txt", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    fixed = tmp_path / "fixed"  # the failing lines fail until it exists
    failing = {3, 8, 9, 20, 31}
    source = tmp_path / "in.jsonl"
    jobs = [
        {"n": k, "side": str(side), **({"fail": str(fixed)} if k in failing else {})} for k in range(1, 41)
    ]
    write_jobs(source, jobs)
    args = [f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--joblog", str(log), "-w", "2"]
    first = cli(*args)
    assert first.returncode == 1, first.stderr
    assert {k for k, r in one_per_line(out).items() if "error" in r} == failing
    offset = side.stat().st_size
    again = cli(*args, "--resume")  # errors are done: nothing to run
    assert again.returncode == 0, again.stderr
    assert side_entries(side, offset) == []
    assert "40 lines skipped" in last_line(again.stderr)
    fixed.touch()
    retry = cli(*args, "--resume-failed")
    assert retry.returncode == 0, retry.stderr
    assert "removed 5 error records" in retry.stderr
    assert sorted(side_entries(side, offset)) == sorted(failing)
    got = one_per_line(out)
    assert sorted(got) == list(range(1, 41)) and all("result" in r for r in got.values())
    rows = joblog(log)  # appended: the failed attempts stay in the log, then the reruns
    assert [row["outcome"] for row in rows if int(row["line"]) in failing] == ["error:ValueError"] * 5 + [
        "ok"
    ] * 5


# -- halt ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "ordered"), [("soon", False), ("now", False), ("soon", True)])
def test_halt_after_one_failure(tmp_path: Path, when: str, ordered: bool) -> None:
    """Line 30 fails; the rest take 50 ms (line 31 takes 30 s: only ``now``
    ends without waiting for it).  The run stops: exit 3, every finished
    job's record written and logged; ``soon`` lets started jobs finish (so
    every job that ran has its record), ``now`` kills them."""
    side, out, log = tmp_path / "side.txt", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    never = tmp_path / "never"
    source = tmp_path / "in.jsonl"
    jobs: list[dict[str, Any]] = [{"n": k, "side": str(side), "seconds": 0.05} for k in range(1, 1001)]
    jobs[29]["fail"] = str(never)
    if when == "now":
        jobs[30]["seconds"] = 30
    write_jobs(source, jobs)
    started = time.monotonic()
    proc = cli(
        f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--joblog", str(log),
        "-w", "2", "--halt", f"{when},fail=1", *(["--ordered"] if ordered else []),
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert proc.returncode == 3, proc.stderr
    assert f"halted (--halt {when},fail=1)" in last_line(proc.stderr)
    got = one_per_line(out)
    assert got[30]["error"].startswith("ValueError")
    assert len(got) < 1000
    assert [int(row["line"]) for row in joblog(log)] == [r["line"] for r in complete_records(out)]
    ran = set(side_entries(side))
    if when == "soon":
        # With --ordered too: records held back behind an unfinished line are written.
        assert ran == set(got), "a job that ran has no record, or one that did not has one"
    else:
        assert 31 not in got  # killed, not waited for
        assert set(got) <= ran
        assert elapsed < 25, f"--halt now waited for the running job ({elapsed:.1f} s)"
    # What the halt left undone, --resume does (and no more).
    offset = side.stat().st_size
    for job in jobs:  # fixed, and quick
        job.pop("fail", None)
        job["seconds"] = 0
    write_jobs(source, jobs)
    rest = cli(f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--resume", "-w", "2")
    assert rest.returncode == 0, rest.stderr
    assert sorted(side_entries(side, offset)) == sorted(set(range(1, 1001)) - set(got))
    assert sorted(one_per_line(out)) == list(range(1, 1001))


@pytest.mark.parametrize("when", ["soon", "now"])
def test_halt_does_not_wait_for_a_pipe_that_stays_open(tmp_path: Path, when: str) -> None:
    """Jobs from a pipe whose writer sends a failing line and then nothing
    (but does not close it): the run still stops, at once."""
    out, never = tmp_path / "out.jsonl", tmp_path / "never"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bossworker", "run", f"{HANDLERS}:note_and_echo", "-o", str(out),
         "-w", "2", "--no-progress", "--halt", f"{when},fail=1"],
        cwd=REPO, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stderr is not None
    try:
        side = str(tmp_path / "side")
        lines = [{"n": 1, "side": side}, {"n": 2, "side": side, "fail": str(never)}, {"n": 3, "side": side}]
        proc.stdin.write("".join(json.dumps(job) + "\n" for job in lines).encode())
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 3
        assert f"halted (--halt {when},fail=1)" in last_line(proc.stderr.read().decode())
        assert one_per_line(out)[2]["error"].startswith("ValueError")
    finally:
        proc.stdin.close()
        proc.stderr.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_halt_on_a_failure_rate(tmp_path: Path) -> None:
    """Every other job fails: ``soon,fail=30%`` stops once 10 jobs have
    finished (a rate over fewer is not judged), well before the end."""
    side, out = tmp_path / "side.txt", tmp_path / "out.jsonl"
    never = tmp_path / "never"
    source = tmp_path / "in.jsonl"
    jobs = [
        {"n": k, "side": str(side), "seconds": 0.01, **({"fail": str(never)} if k % 2 else {})}
        for k in range(1, 201)
    ]
    write_jobs(source, jobs)
    proc = cli(
        f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "-w", "2", "--halt", "soon,fail=30%"
    )
    assert proc.returncode == 3, proc.stderr
    got = one_per_line(out)
    assert 10 <= len(got) < 200
    assert set(side_entries(side)) == set(got)
    low = cli(
        f"{HANDLERS}:note_and_echo",
        "-i",
        str(source),
        "-o",
        str(tmp_path / "o2"),
        "-w",
        "2",
        "--halt",
        "soon,fail=80%",
    )
    assert low.returncode == 1, low.stderr  # about 50 % never reaches 80 %: the run goes to the end
    assert len(one_per_line(tmp_path / "o2")) == 200


@pytest.mark.parametrize(
    ("spec", "message"),
    [("sometime,fail=1", "--halt takes"), ("now,fail=0", "whole number"), ("soon,fail=150%", "at most 100%")],
)
def test_bad_halt_specs(spec: str, message: str) -> None:
    proc = cli(f"{HANDLERS}:echo", "--halt", spec)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


# -- job log, details, retries, memory ------------------------------------------------------------


def test_joblog_lines_match_the_records(tmp_path: Path) -> None:
    out, log = tmp_path / "out.jsonl", tmp_path / "jobs.log"
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(json.dumps(j) + "\n" for j in [{"n": 1}, {"n": 2, "fail": True}, {"n": 3, "die": True}])
        + "{oops\n\n"
        + json.dumps({"n": 6}) + "\n"
    )  # fmt: skip
    started = time.time()
    proc = cli(
        f"{HANDLERS}:die_when_asked", "-i", str(source), "-o", str(out), "--joblog", str(log), "--details"
    )
    assert proc.returncode == 1, proc.stderr
    records = complete_records(out)
    rows = joblog(log)
    assert [int(row["line"]) for row in rows] == [r["line"] for r in records]
    by_line = {int(row["line"]): row for row in rows}
    assert by_line[1]["outcome"] == "ok" and by_line[6]["outcome"] == "ok"
    assert by_line[3]["outcome"] == "died"
    assert by_line[4]["outcome"] == "invalid_json" and by_line[4]["worker_pid"] == "-"
    assert by_line[2]["outcome"] == "ok"  # die_when_asked ignores "fail"
    for record in records:
        row = by_line[record["line"]]
        details = record["details"]
        assert details["outcome"] == row["outcome"]
        assert str(details["worker_pid"]) == row["worker_pid"] or details["worker_pid"] is None
        assert str(details["attempts"]) == row["attempts"]
        if row["outcome"] != "invalid_json":
            assert int(row["worker_pid"]) > 0 and int(row["attempts"]) == 1
            assert started - 1 <= float(row["start_time"]) <= time.time()
            assert 0 <= float(row["run_time"]) < 30


def test_retries_run_a_job_again_after_its_worker_died(tmp_path: Path) -> None:
    source, out, log = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    write_jobs(source, [{"n": k, "marker": str(tmp_path / f"m{k}")} for k in range(1, 7)])
    proc = cli(f"{HANDLERS}:die_on_first_attempt", "-i", str(source), "-o", str(out), "--joblog", str(log),
               "-w", "2", "--retries", "1")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert all(r["result"] == {"ok": r["line"]} for r in complete_records(out))
    assert [row["attempts"] for row in joblog(log)] == ["2"] * 6
    assert ", 6 retries," in last_line(proc.stderr)
    # Each death is told once (the job's warning), not also as a worker exit.
    assert proc.stderr.count("died (SIGKILL) while running line") == 6, proc.stderr
    assert "exited (SIGKILL)" not in proc.stderr
    for k in range(1, 7):
        (tmp_path / f"m{k}").unlink()
    bare = cli(f"{HANDLERS}:die_on_first_attempt", "-i", str(source), "-o", str(out), "-w", "2")
    assert bare.returncode == 1
    assert all(r["error"].startswith("BossWorkerAsync: worker died") for r in complete_records(out))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="memory caps read /proc")
def test_max_worker_memory_kills_a_job_past_it(tmp_path: Path) -> None:
    source, out, log = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    write_jobs(source, [{"mib": 1}, {"mib": 400, "seconds": 5}, {"mib": 2}])
    args = [f"{HANDLERS}:allocate", "-i", str(source), "-o", str(out), "--joblog", str(log), "-w", "1"]
    proc = cli(*args, "--max-worker-memory", "150MiB", "--ordered")
    assert proc.returncode == 1, proc.stderr
    records = complete_records(out)
    assert records[0] == {"line": 1, "result": 1} and records[2] == {"line": 3, "result": 2}
    assert records[1]["error"].startswith("BossWorkerAsync: worker exceeded its memory limit")
    assert [row["outcome"] for row in joblog(log)] == ["ok", "memory", "ok"]
    assert ", 1 memory kill," in last_line(proc.stderr)
    again = cli(*args, "--max-worker-memory", "150MiB", "--retries", "1", "--retry-on", "memory,died")
    assert again.returncode == 1
    assert ", 2 memory kills," in last_line(again.stderr) and ", 1 retry," in last_line(again.stderr)
    assert [row["attempts"] for row in joblog(log) if row["line"] == "2"] == ["2"]
    bad = cli(*args, "--max-worker-memory", "lots")
    assert bad.returncode == 2 and "--max-worker-memory must be" in bad.stderr


# -- timeouts ------------------------------------------------------------------------------------


def test_timeout_as_a_percentage_of_the_median(tmp_path: Path) -> None:
    """Jobs of 0.05 s, one of 20 s: ``--timeout 200%`` gives each job
    max(1 s floor, 2 x median) once 3 have finished, and stops the slow one."""
    source, out, log = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "jobs.log"
    side = tmp_path / "side"
    jobs: list[dict[str, Any]] = [{"n": k, "side": str(side), "seconds": 0.05} for k in range(1, 41)]
    jobs[19]["seconds"] = 20
    write_jobs(source, jobs)
    started = time.monotonic()
    proc = cli(f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--joblog", str(log),
               "-w", "2", "--timeout", "200%")  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 15
    got = one_per_line(out)
    assert got[20] == {"line": 20, "error": "BossWorkerAsync: timed out"}
    assert [k for k, r in got.items() if "error" in r] == [20]
    assert [row["outcome"] for row in joblog(log) if row["line"] == "20"] == ["timed_out"]


@pytest.mark.parametrize("value", ["1e12", "inf", "-1", "abc%", "0%"])
def test_timeout_out_of_range_is_a_usage_error(value: str) -> None:
    proc = cli(f"{HANDLERS}:echo", "--timeout", value)
    assert proc.returncode == 2, proc.stderr
    assert "--timeout" in proc.stderr and "Traceback" not in proc.stderr


def test_eta_lines_and_summary(tmp_path: Path) -> None:
    """``--eta`` with no bar: the summary of a run cut short (by --halt) says
    how long the rest would take."""
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    side, never = tmp_path / "side", tmp_path / "never"
    jobs: list[dict[str, Any]] = [{"n": k, "side": str(side), "seconds": 0.01} for k in range(1, 301)]
    jobs[99]["fail"] = str(never)
    write_jobs(source, jobs)
    proc = cli(
        f"{HANDLERS}:note_and_echo", "-i", str(source), "-o", str(out), "--halt", "soon,fail=1", "--eta"
    )
    assert proc.returncode == 3, proc.stderr
    assert " left at " in last_line(proc.stderr) and "lines/s" in last_line(proc.stderr)


def test_dask_refuses_retries_and_memory_caps() -> None:
    for extra, message in (
        (["--retries", "1"], "--retries needs local workers"),
        (["--max-worker-memory", "1GiB"], "memory caps are not available with --dask"),
    ):
        proc = cli(f"{HANDLERS}:echo", "--dask", "tcp://127.0.0.1:1", *extra)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_unwanted_child_processes_are_gone_after_sigkill(tmp_path: Path) -> None:
    """The kill test's premise: a SIGKILLed command leaves no Boss or worker."""
    source = tmp_path / "in.jsonl"
    write_jobs(source, [{"seconds": 30} for _ in range(4)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "bossworker", "run", f"{HANDLERS}:sleep_then_echo", "-i", str(source),
         "-o", str(tmp_path / "o"), "-w", "2", "--no-progress"],
        cwd=REPO, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: len(psutil.Process(proc.pid).children(recursive=True)) >= 3, timeout=60)
    family = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive

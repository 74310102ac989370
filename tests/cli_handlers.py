"""Handlers for the command-line tests (tests/test_cli.py), used as
``tests/cli_handlers.py:NAME`` targets: the file-path form of TARGET."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

_initialised = "no"


def echo(job: Any) -> Any:
    """The job itself."""
    return job


def fail_when_asked(job: dict[str, Any]) -> dict[str, Any]:
    """``ValueError: rattle`` for a job with ``"fail": true``."""
    if job.get("fail"):
        raise ValueError("rattle")
    return {"ok": job["n"]}


def sleep_then_echo(job: dict[str, Any]) -> dict[str, Any]:
    """Touch ``job["marker"]`` (if given, so a test knows the job started),
    sleep ``job["seconds"]``, return the job."""
    if "marker" in job:
        Path(job["marker"]).touch()
    time.sleep(job["seconds"])
    return job


def return_a_set(job: Any) -> Any:
    """A result that pickles but is not JSON."""
    return {1, 2, 3}


def return_error_dict(job: Any) -> Any:
    """A result that looks like a failure, by the seed's convention."""
    return {"ERROR": "I said so"}


def initialise() -> None:
    """An --init function."""
    global _initialised
    _initialised = f"yes in {os.getpid()}"


def was_initialised(job: Any) -> str:
    return _initialised


def worker_pid(job: Any) -> int:
    return os.getpid()


not_callable = 42


def chatty(job: Any) -> Any:
    """Prints to standard output and reads standard input, as careless handlers do."""
    print("a handler's print() must not end up in the JSON Lines output", flush=True)
    return {"job": job, "stdin": sys.stdin.read()}


def die_when_asked(job: dict[str, Any]) -> dict[str, Any]:
    """Kills its own worker for a job with ``"die": true``."""
    if job.get("die"):
        os._exit(9)
    return {"ok": job["n"]}


def unterminated(job: Any) -> Any:
    """Writes to standard error without a final newline, as careless handlers do."""
    sys.stderr.write("partial output")
    sys.stderr.flush()
    return job


def note_and_echo(job: dict[str, Any]) -> dict[str, Any]:
    """Append the job's ``n`` to the side file ``job["side"]`` as it starts
    (one ``O_APPEND`` write: whole lines, whoever writes), sleep
    ``job["seconds"]`` if given, fail if ``job["fail"]`` names a file that
    does not exist yet, and return ``n`` with ``job["pad"]`` bytes of padding
    (long records: a kill lands inside a write more often)."""
    fd = os.open(job["side"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"%d\n" % job["n"])
    finally:
        os.close(fd)
    time.sleep(job.get("seconds", 0))
    if "fail" in job and not os.path.exists(job["fail"]):
        raise ValueError(f"line of job {job['n']} failed")
    return {"n": job["n"], "pad": "x" * job.get("pad", 0)}


def die_on_first_attempt(job: dict[str, Any]) -> dict[str, Any]:
    """SIGKILL its own worker the first time it runs (a marker file per
    job remembers), succeed the second time."""
    marker = Path(job["marker"])
    if not marker.exists():
        marker.touch()
        os.kill(os.getpid(), 9)
    return {"ok": job["n"]}


def allocate(job: dict[str, Any]) -> int:
    """Hold ``job["mib"]`` MiB, every page written, for a moment."""
    chunks = [b"x" * (1024 * 1024) for _ in range(job["mib"])]
    time.sleep(job.get("seconds", 0))
    return len(chunks)

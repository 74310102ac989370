"""The examples and the README's Quick start run as documented.

The documentation site includes the files of examples/ (literalinclude), so
they cannot drift from the pages; tests/test_docs.py runs the code blocks
written in the pages and the README themselves.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_synopsis_prints_12_and_the_answer() -> None:
    out = run(sys.executable, "examples/synopsis.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["12", "the answer is: 12"]


def test_quick_start_main_job() -> None:
    out = run(
        sys.executable,
        "-m",
        "bossworker",
        "run",
        "examples/synopsis.py:work",
        "--input",
        "examples/jobs.jsonl",
    )
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    jobs = [json.loads(line) for line in (ROOT / "examples/jobs.jsonl").read_text().splitlines()]
    assert sorted(r["line"] for r in records) == list(range(1, len(jobs) + 1))
    for r in records:
        job = jobs[r["line"] - 1]
        assert r["result"] == {"product": job["a"] * job["b"]}
    assert "0 errors" in out.stderr


def test_asyncio_example() -> None:
    out = run(sys.executable, "examples/asyncio_example.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sorted(int(line.split()[1]) for line in lines[:-1]) == [2 * i for i in range(10)]
    assert lines[-1] == "None"


def test_stats_example() -> None:
    out = run(sys.executable, "examples/stats_example.py")
    assert out.returncode == 0, out.stderr
    assert "completed=20" in out.stdout.splitlines()[-1]


def test_executor_example() -> None:
    out = run(sys.executable, "examples/executor_example.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "[0, 1, 4, 9, 16]",
        "[36, 49]",
        "worker died: exit code 3",
        "timed out",
        "64",
    ]


def test_outcomes_example() -> None:
    out = run(sys.executable, "examples/outcomes_example.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "1 ok 'OK' attempts=1",
        "2 ok None attempts=1",
        "3 raised KeyError 'boom'",
        "4 worker died: SIGKILL",
        "5 ok 'survived' attempts=2",
        "unwrap raised KeyError 'boom'",
    ]


def test_memory_cap_example() -> None:
    out = run(sys.executable, "examples/memory_cap_example.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["10", "20"]
    assert lines[2].startswith("{'ERROR': 'BossWorkerAsync: worker exceeded its memory limit (")
    assert lines[2].endswith(" MiB > 256.0 MiB)'}")
    assert lines[3] == "memory kills: 1"


def test_streams_example() -> None:
    out = run(sys.executable, "examples/streams_example.py")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[0, 1, 4, 9, 16, 25, 36, 49]", "2470", "[0, 1, 4, 9, 16]"]


def test_readme_quick_start_is_the_two_commands() -> None:
    """The Quick start stays two commands: the main job, then the tests."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.splitlines() == [
        "PYTHONPATH=src python3 -m bossworker run examples/synopsis.py:work --input examples/jobs.jsonl",
        "scripts/test",
    ]


def test_readme_links_work_outside_the_repository() -> None:
    """A package index shows the README without the repository: no relative links or images."""
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)", readme) + re.findall(r"^\[[^\]]+\]:\s*(\S+)", readme, re.M)
    relative = [t for t in targets if not re.match(r"(https?://|mailto:|#)", t)]
    assert relative == []


def test_log_forwarding_example() -> None:
    out = run(sys.executable, "examples/log_forwarding_example.py")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:3] == [
        "shop.prices INFO pricing apple (job 1)",
        "50",
        "shop.prices INFO pricing crash (job 2)",
    ]
    assert re.fullmatch(
        r"bossworker WARNING worker \d+ died \(exit code 1\) while running job 2 \(job None\)", lines[3]
    )
    assert lines[4:] == ["WorkerDiedError"]
    assert out.stderr == ""


def test_logging_page_includes_the_log_forwarding_example() -> None:
    page = (ROOT / "docs/guides/logging.md").read_text()
    assert "```{literalinclude} ../../examples/log_forwarding_example.py" in page

"""The command line's long-run bookkeeping: what ``--joblog`` and
``--resume`` cost, and main's peak memory over a big resume.

    python bench/cli_long_runs.py [--lines N] [--resume-lines M] [--workers W] [--repeat R]
                                  [--against REV]

Rows:

* **lines/s** of ``bossworker run`` over N trivial lines (``demo_work``),
  output to a file: plain; with ``--joblog``; with ``--resume`` (an empty
  output: the scan, and a done-set test per line); and the skip rate of a
  ``--resume`` where all but 1,000 of the N lines are done.  Each is the
  best of R runs, the modes taking turns (the machine may be shared).
  ``--against REV`` adds the plain run of another revision's code (its
  ``src`` on ``PYTHONPATH``), taking turns with the others.
* **peak RSS** of main (``ru_maxrss`` of the command, read by a wrapper
  after it exits) over a ``--resume`` of M lines of which all but 1,000 are
  done, against the same over 2,000 lines: flat means the done-set does not
  grow with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

TARGET = "bossworker.cli:demo_work"

# Runs the command in a fresh interpreter and reports its own peak RSS: the
# wrapper execs nothing else, so RUSAGE_CHILDREN's peak is the command's own
# peak or its Boss's or a worker's, whichever is largest (main, by far, for
# a big resume: the Boss and workers never see the skipped lines).
WRAPPER = """
import resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdin=subprocess.DEVNULL)
took = time.perf_counter() - t
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(rc, took, usage.ru_maxrss, usage.ru_utime + usage.ru_stime)
"""


def write_input(path: Path, n: int) -> None:
    with open(path, "w") as f:
        line = '{"a":3,"b":4}\n'
        for start in range(0, n, 100_000):
            f.write(line * min(100_000, n - start))


def write_done(path: Path, n: int, missing: int) -> None:
    """An output file with the records of lines 1..n except the last ``missing``."""
    with open(path, "w") as f:
        chunk: list[str] = []
        for k in range(1, n - missing + 1):
            chunk.append(f'{{"line":{k},"result":{{"product":12}}}}\n')
            if len(chunk) == 100_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def run(args: list[str], src: Path | None = None) -> tuple[float, int, float]:
    """(seconds, peak RSS KiB, CPU seconds of it, its Boss and workers) of
    one ``bossworker run`` (of the code in ``src`` if given)."""
    command = [sys.executable, "-c", WRAPPER, sys.executable, "-m", "bossworker", "run", TARGET, *args]
    env = None
    if src is not None:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))
        )
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.split()
    rc, took, peak, cpu = int(out[0]), float(out[1]), int(out[2]), float(out[3])
    if rc != 0:
        raise SystemExit(f"bossworker run {' '.join(args)} exited {rc}")
    return took, peak, cpu


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--resume-lines", type=int, default=2_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--against", metavar="REV", help="also time the plain run of this revision")
    options = parser.parse_args()
    n, w = options.lines, str(options.workers)
    rows: dict[str, object] = {"lines": n, "workers": options.workers, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        source, out, log = tmpdir / "in.jsonl", tmpdir / "out.jsonl", tmpdir / "jobs.log"
        write_input(source, n)
        base = ["-i", str(source), "-o", str(out), "-w", w, "--no-progress"]
        modes: dict[str, tuple[list[str], Path | None]] = {
            "plain": (base, None),
            "joblog": ([*base, "--joblog", str(log)], None),
            "resume_bookkeeping": ([*base, "--resume"], None),
        }
        if options.against:
            from compare_trees import export_tree

            modes[f"plain_{options.against}"] = (base, export_tree(options.against, tmpdir))
        best = dict.fromkeys(modes, float("inf"))
        best_cpu = dict.fromkeys(modes, float("inf"))
        for _ in range(options.repeat):  # the modes in turn, so that a load change hits all
            for name, (args, src) in modes.items():
                out.unlink(missing_ok=True)
                took, _, cpu = run(args, src)
                best[name] = min(best[name], took)
                best_cpu[name] = min(best_cpu[name], cpu)
        for name in modes:
            rows[f"{name}_lines_per_s"] = round(n / best[name])
            # CPU time (all processes) per line: steadier than wall time on a shared machine.
            rows[f"{name}_cpu_us_per_line"] = round(best_cpu[name] / n * 1e6, 1)
        write_done(out, n, 1000)
        took, _, _ = run([*base, "--resume"])
        rows["resume_skip_lines_per_s"] = round(n / took)
        for m in (2_000, options.resume_lines):
            write_input(source, m)
            write_done(out, m, 1000)
            took, peak, _ = run(["-i", str(source), "-o", str(out), "-w", w, "--no-progress", "--resume"])
            rows[f"resume_{m}_peak_rss_mib"] = round(peak / 1024, 1)
            rows[f"resume_{m}_seconds"] = round(took, 2)
    compared = ["joblog", "resume_bookkeeping"] + ([f"plain_{options.against}"] if options.against else [])
    for key in compared:
        rows[f"{key}_vs_plain"] = round(rows[f"{key}_lines_per_s"] / rows["plain_lines_per_s"], 3)  # type: ignore[operator]
        rows[f"{key}_cpu_vs_plain"] = round(rows[f"{key}_cpu_us_per_line"] / rows["plain_cpu_us_per_line"], 3)  # type: ignore[operator]
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

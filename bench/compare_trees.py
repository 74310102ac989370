"""bossworker against itself: two trees of the code, side by side.

    python bench/compare_trees.py OLD_REV             # OLD_REV against the working tree
    python bench/compare_trees.py OLD_REV NEW_REV --rounds 3 --only tiny,rtt,payload

Why: a refactor must not cost speed, and two benchmark runs minutes apart on
a shared machine differ by more than the change we look for.  So each run
here measures bossworker *and* ``multiprocessing.Pool`` (the reference, the
same code in both runs), the two trees' runs alternate, and what is compared
is bossworker's figure relative to Pool's in the same run.  The tree under
test is put first on ``PYTHONPATH`` (the children of a run inherit it), so
the installed package does not matter.

It runs ``bench/run.py`` (full sizes) of the working tree for both trees:
the workloads are the same, only the package differs.  Prints, per workload,
each tree's median ratio to Pool and the change from OLD to NEW.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# What each workload's figure means: True where bigger is better.
HIGHER_IS_BETTER = {"tiny": True, "rtt": False, "cpu": False, "start": False}


def export_tree(rev: str, into: Path) -> Path:
    """The ``src`` folder of ``rev``, extracted under ``into``."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "src"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def one_run(src: Path, only: str) -> dict[str, float]:
    """bossworker's median divided by Pool's, per workload, for one run."""
    with tempfile.TemporaryDirectory() as out:
        env = dict(
            os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(src), os.environ.get("PYTHONPATH")) if p)
        )
        subprocess.run(
            [
                sys.executable,
                str(HERE / "run.py"),
                "--only",
                only,
                "--systems",
                "bossworker,mp_pool",
                "--out",
                out,
            ],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    # run.py names its JSON "partial" when given --only / --systems, as here.
    data = json.loads((HERE / "results" / "partial.json").read_text())["results"]
    ratios = {}
    for workload, table in data.items():
        ours, pool = table.get("bossworker", {}).get("median"), table.get("mp_pool", {}).get("median")
        if ours and pool:
            ratios[workload] = ours / pool
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the git revision to compare against (e.g. main~3)")
    parser.add_argument("new", nargs="?", help="a git revision (default: the working tree)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each tree, alternating (default 3)")
    parser.add_argument("--only", default="tiny,rtt,payload", help="workloads, as bench/run.py --only")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"old": export_tree(args.old, Path(tmp, "old"))}
        trees["new"] = export_tree(args.new, Path(tmp, "new")) if args.new else ROOT / "src"
        seen: dict[str, dict[str, list[float]]] = {"old": {}, "new": {}}
        for round_ in range(args.rounds):
            for name in ("old", "new") if round_ % 2 == 0 else ("new", "old"):
                print(f"round {round_ + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
                for workload, ratio in one_run(trees[name], args.only).items():
                    seen[name].setdefault(workload, []).append(ratio)
    new_name = args.new or "the working tree"
    print(f"bossworker / multiprocessing.Pool, medians of {args.rounds} runs each ({args.old} vs {new_name})")
    print(f"{'workload':<16} {'old':>8} {'new':>8} {'change':>8}")
    for workload in sorted(seen["old"]):
        old = statistics.median(seen["old"][workload])
        new = statistics.median(seen["new"].get(workload, [float("nan")]))
        better = HIGHER_IS_BETTER.get(workload, workload.startswith("payload"))
        change = (new / old - 1) if better else (old / new - 1)  # positive: NEW is faster
        print(f"{workload:<16} {old:>8.3f} {new:>8.3f} {change:>+8.1%}")
    print("change: positive means the new tree is faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The ``bossworker`` argument parser, and :class:`RunOptions`: what
``bossworker run`` was asked to do, checked and resolved."""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import checks
from ..errors import InvalidArgumentError
from .errors import UsageError
from .progress import bar_wanted
from .targets import load_callable

__all__ = ["RunOptions", "build_parser", "version"]

T = TypeVar("T")

_RUN_DESCRIPTION = (
    "Run TARGET over JSON Lines jobs (one JSON value per line), writing one JSON line per job: "
    '{"line": N, "result": ...} or {"line": N, "error": "..."}.  N counts input lines from 1; '
    "blank lines (empty or only white space) are counted but are not jobs and get no record.  "
    "A line that is not valid JSON gets an error record and the run goes on."
)
_RUN_EPILOG = (
    "exit status: 0 every job succeeded, 1 some job failed, 2 bad usage or TARGET, "
    "130 interrupted.  Example: bossworker run examples/synopsis.py:work --input examples/jobs.jsonl"
)


def version() -> str:
    """The installed distribution's version, else the package's ``__version__``."""
    try:
        return importlib.metadata.version("bossworker")
    except importlib.metadata.PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    """The ``bossworker`` argument parser, with its ``run`` and ``demo`` commands."""
    parser = argparse.ArgumentParser(
        prog="bossworker",
        description="Run a Python function over JSON Lines jobs in a pool of worker processes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run TARGET over JSON Lines jobs", description=_RUN_DESCRIPTION, epilog=_RUN_EPILOG
    )
    run.add_argument("target", metavar="TARGET", help="package.module:function or path/to/file.py:function")
    run.add_argument("-i", "--input", metavar="FILE", help="read jobs from FILE (default: standard input)")
    run.add_argument(
        "-o", "--output", metavar="FILE", help="write records to FILE (default: standard output)"
    )
    run.add_argument(
        "-w",
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="worker processes (default: the CPU count, %(default)s; with --dask local, the "
        "local cluster's worker processes; unused with a --dask address)",
    )
    run.add_argument(
        "-t",
        "--timeout",
        type=_seconds,
        default=0.0,
        metavar="SECONDS",
        help="time limit per job; 0 means none (default)",
    )
    run.add_argument(
        "--init",
        metavar="MODULE:FUNC",
        help="run FUNC (same forms as TARGET) once in each worker before its first job",
    )
    run.add_argument(
        "--max-jobs-per-worker",
        type=_positive_int,
        metavar="N",
        help="replace each worker after N jobs (default: never)",
    )
    run.add_argument(
        "--start-method",
        choices=multiprocessing.get_all_start_methods(),
        help="how worker processes are started (default: fork where available; not with --dask)",
    )
    run.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="run the workers on the Dask cluster whose scheduler is at ADDRESS "
        "(e.g. tcp://host:8786; TLS needs the Python API), or on a private local cluster of "
        "--workers processes for 'local'; TARGET's module must be importable on the Dask "
        "workers (pip install 'bossworker[dask]')",
    )
    run.add_argument("--ordered", action="store_true", help="write records in input order")
    run.add_argument(
        "--max-in-flight",
        type=_positive_int,
        metavar="N",
        help="lines read but not yet written, at most (default: max(256, 64 x workers))",
    )
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (there is one only when standard error is a terminal, "
        "and not when the records go to that same terminal)",
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="also log worker starts (default: warnings only)"
    )
    commands.add_parser("demo", help="run the synopsis of the original Perl module")
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    return _checked(checks.whole_number, value)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    return _checked(checks.seconds, value)


def _checked(check: Callable[[str, object], T], value: object) -> T:
    """``value`` through the API's own rule (:mod:`bossworker.checks`), its
    refusal as argparse's (a usage error: exit status 2), which names the
    option before it."""
    try:
        return check("the value", value)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``bossworker run`` was asked to do, checked and resolved."""

    target: Callable[[Any], Any]
    init: Callable[[], Any] | None
    input: str | None  # None or "-": standard input
    output: str | None  # None or "-": standard output
    workers: int
    timeout: float
    max_jobs_per_worker: int | None
    start_method: str | None
    ordered: bool
    max_in_flight: int
    progress: bool
    dask: str | None = None  # a scheduler address, "local", or None: no Dask

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """Resolve the parsed arguments; :class:`UsageError` if TARGET or
        --init is unusable, or --dask cannot be used."""
        if args.dask is not None:
            if args.start_method is not None:
                raise UsageError("--start-method has no effect with --dask (Dask starts the workers)")
            if importlib.util.find_spec("distributed") is None:
                raise UsageError("--dask needs Dask: pip install 'bossworker[dask]'")
        target = load_callable(args.target)
        init = load_callable(args.init, "--init") if args.init else None
        output = None if args.output in (None, "-") else args.output
        return cls(
            target=target,
            init=init,
            input=None if args.input in (None, "-") else args.input,
            output=output,
            workers=args.workers,
            timeout=args.timeout,
            max_jobs_per_worker=args.max_jobs_per_worker,
            start_method=args.start_method,
            ordered=args.ordered,
            max_in_flight=args.max_in_flight or max(256, 64 * args.workers),
            progress=bar_wanted(args.no_progress, output),
            dask=args.dask,
        )

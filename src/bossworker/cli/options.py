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
from ..checks import MAX_TIMEOUT, RETRY_CAUSES
from ..errors import InvalidArgumentError
from .errors import UsageError
from .halt import HaltSpec, parse_halt
from .progress import bar_wanted
from .targets import load_callable

__all__ = ["Handlers", "RunOptions", "TimeLimit", "build_parser", "version"]

T = TypeVar("T")

_RUN_DESCRIPTION = (
    "Run TARGET over JSON Lines jobs (one JSON value per line), writing one JSON line per job: "
    '{"line": N, "result": ...} or {"line": N, "error": "..."}.  N counts input lines from 1; '
    "blank lines (empty or only white space) are counted but are not jobs and get no record.  "
    "A line that is not valid JSON gets an error record and the run goes on."
)
_RUN_EPILOG = (
    "exit status: 0 every job succeeded, 1 some job failed, 2 bad usage or TARGET, "
    "3 stopped by --halt, 130 interrupted.  "
    "Example: bossworker run examples/synopsis.py:work --input examples/jobs.jsonl.  "
    "A long run: bossworker run mod:work -i jobs.jsonl -o out.jsonl --joblog jobs.log --retries 2; "
    "after a crash, the same command with --resume finishes it."
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
        type=_time_limit,
        default=TimeLimit(0.0),
        metavar="SECONDS|P%",
        help="time limit per job: SECONDS (0 means none, the default; at most 1e9), or P%% of "
        f"the median run time of the jobs finished so far, never under {_PERCENT_FLOOR:g} s "
        "(until 3 jobs have finished, at most one job per worker is in flight)",
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
    run.add_argument(
        "--retries",
        type=_retries,
        default=0,
        metavar="N",
        help="run a job again, up to N more times, when its worker died under it (or as "
        "--retry-on says); a handler's exception is never retried (default: 0; not with --dask)",
    )
    run.add_argument(
        "--retry-on",
        type=_retry_on,
        default=("died",),
        metavar="CAUSES",
        help=f"which failures --retries covers, comma-separated out of {','.join(RETRY_CAUSES)} "
        "(default: died)",
    )
    run.add_argument(
        "--max-worker-memory",
        metavar="SIZE",
        help="kill a worker whose resident memory passes SIZE (e.g. 512MiB, 1.5GB, 800M; at least "
        "16MiB) and fail its job with outcome 'memory' (retried with --retry-on memory); "
        "Linux, not with --dask",
    )
    run.add_argument(
        "--joblog",
        metavar="FILE",
        help="write one tab-separated line per job to FILE as its record is written: line, "
        "worker_pid, start_time (Unix time), run_time (s), attempts, outcome (ok, "
        "error:TYPE, timed_out, died, memory, invalid_json, unwritable); a header first",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="finish a run that was stopped or killed: keep the records already in --output "
        "(repairing a torn last line) and run only the lines that have none; needs --output "
        "FILE and the same input",
    )
    run.add_argument(
        "--resume-failed",
        action="store_true",
        help="as --resume, and also run again the lines whose record is an error (their old "
        "records are removed from --output)",
    )
    run.add_argument(
        "--halt",
        type=_halt,
        metavar="WHEN,fail=N|P%",
        help="stop after N failed jobs, or once P%% of the jobs finished so far failed (at least "
        "10 finished): WHEN is 'soon' (start no more jobs, let running ones finish) or 'now' "
        "(kill running jobs); finished jobs' records are all written; exit status 3.  "
        "E.g. --halt soon,fail=1 or --halt now,fail=10%%",
    )
    run.add_argument(
        "--eta",
        action="store_true",
        help="estimate the time left: on the progress bar, every 10 s on standard error when "
        "there is no bar, and in the summary of a run cut short",
    )
    run.add_argument(
        "--details",
        action="store_true",
        help='add "details" to each record: worker_pid, start_time, run_time, attempts, outcome',
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


#: The least time limit ``--timeout P%`` gives a job, in seconds: a
#: percentage of a median of milliseconds would kill jobs for a scheduling hiccup.
_PERCENT_FLOOR = 1.0


@dataclass(frozen=True, slots=True)
class TimeLimit:
    """``--timeout``: fixed ``seconds`` (0: none), or ``percent`` of the
    median run time so far, never under ``floor`` seconds."""

    seconds: float
    percent: float | None = None
    floor: float = _PERCENT_FLOOR

    def for_median(self, median: float | None) -> float | None:
        """The limit for a job added now, given the median run time of the
        jobs finished so far (None: not known yet); None means no limit."""
        if self.percent is None:
            return self.seconds or None
        if median is None:
            return None
        return min(MAX_TIMEOUT, max(self.floor, median * self.percent / 100))


def _time_limit(text: str) -> TimeLimit:
    if text.endswith("%"):
        try:
            percent = float(text[:-1])
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a percentage: {text!r}") from None
        if not 0 < percent < float("inf"):
            raise argparse.ArgumentTypeError(f"must be a percentage above 0, not {text}")
        return TimeLimit(0.0, percent)
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a number of seconds nor a percentage like 200%: {text!r}"
        ) from None
    if not 0 <= value <= MAX_TIMEOUT:  # the library's bound (checks.MAX_TIMEOUT), in the command's words
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds from 0 (no limit) to {MAX_TIMEOUT:.0e} (about 31 years), not {text}"
        )
    return TimeLimit(value)


def _retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    return _checked(lambda _name, v: checks.retries(v), value)


def _checked(check: Callable[[str, object], T], value: object) -> T:
    """``value`` through the API's own rule (:mod:`bossworker.checks`), its
    refusal as argparse's (a usage error: exit status 2), which names the
    option before it."""
    try:
        return check("the value", value)
    except InvalidArgumentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _retry_on(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(","))
    _checked(lambda _name, v: checks.retry_on(v), names)  # the library's rule and refusal
    return names


def _halt(text: str) -> HaltSpec:
    try:
        return parse_halt(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True, slots=True)
class Handlers:
    """TARGET and ``--init``, imported."""

    target: Callable[[Any], Any]
    init: Callable[[], Any] | None


@dataclass(frozen=True, slots=True)
class RunOptions:
    """What ``bossworker run`` was asked to do, checked and resolved.

    TARGET and ``--init`` are kept as text: they are imported by
    :meth:`load_handlers` once standard output has been taken over, so that
    whatever their modules print when imported cannot land in the records.
    """

    target: str
    init: str | None
    input: str | None  # None or "-": standard input
    output: str | None  # None or "-": standard output
    workers: int
    timeout: TimeLimit
    max_jobs_per_worker: int | None
    start_method: str | None
    ordered: bool
    max_in_flight: int
    progress: bool
    dask: str | None = None  # a scheduler address, "local", or None: no Dask
    retries: int = 0
    retry_on: tuple[str, ...] = ("died",)
    max_worker_memory: int | None = None
    joblog: str | None = None
    resume: bool = False
    resume_failed: bool = False
    halt: HaltSpec | None = None
    eta: bool = False
    details: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """Resolve the parsed arguments; :class:`UsageError` for options
        that cannot be used (together)."""
        output = None if args.output in (None, "-") else args.output
        resume = args.resume or args.resume_failed
        if args.dask is not None:
            if args.start_method is not None:
                raise UsageError("--start-method has no effect with --dask (Dask starts the workers)")
            if args.retries:
                raise UsageError(
                    "--retries needs local workers: the Dask backend does not retry jobs "
                    "(Dask's own retries are for Dask tasks); drop --dask or --retries"
                )
            if args.max_worker_memory is not None:
                raise UsageError(
                    "--max-worker-memory needs local workers: memory caps are not available with "
                    "--dask (set a memory limit on the Dask workers instead: dask worker --memory-limit)"
                )
            if importlib.util.find_spec("distributed") is None:
                raise UsageError("--dask needs Dask: pip install 'bossworker[dask]'")
        if resume and output is None:
            raise UsageError(
                f"{'--resume-failed' if args.resume_failed else '--resume'} needs --output FILE: "
                "what was already done is read back from the output file, and standard output "
                "cannot be read back"
            )
        if args.joblog is not None and output is not None and _same_file(args.joblog, output):
            raise UsageError("--joblog and --output must be different files")
        memory_cap = None
        if args.max_worker_memory is not None:
            try:
                memory_cap = checks.memory_size(args.max_worker_memory, "--max-worker-memory")
            except InvalidArgumentError as exc:
                raise UsageError(str(exc)) from None
        return cls(
            target=args.target,
            init=args.init,
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
            retries=args.retries,
            retry_on=args.retry_on,
            max_worker_memory=memory_cap,
            joblog=args.joblog,
            resume=resume,
            resume_failed=args.resume_failed,
            halt=args.halt,
            eta=args.eta,
            details=args.details,
        )

    def load_handlers(self) -> Handlers:
        """Import TARGET and ``--init``; :class:`UsageError` if unusable."""
        target = load_callable(self.target)
        init = load_callable(self.init, "--init") if self.init else None
        return Handlers(target, init)


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)

"""The command line: ``bossworker run`` and ``bossworker demo``.

``bossworker run TARGET`` runs ``TARGET`` (``package.module:function`` or
``path/to/file.py:function``) over jobs in JSON Lines, one JSON value per
line, and writes one JSON line per job::

    {"line":3,"result":{"product":12}}
    {"line":4,"error":"ValueError: rattle","detail":"Traceback ..."}

Guarantees:

* **Every non-blank input line gets exactly one output record** unless the
  run is cut short (Ctrl-C, a closed output): a result, or an error (the
  handler raised, ran out of time or its worker died; the line is not valid
  JSON; the result cannot be written as strict JSON).  ``"line"`` counts
  input lines from 1, blank lines included; blank lines produce no record.
  A result that is a dict with an ``"ERROR"`` key is an error (the pool's
  convention).  ``"error"`` is the first line of the message; the rest
  (a traceback) is in ``"detail"``.
* **Streaming with flat memory**: at most ``--max-in-flight`` lines are
  between being read and being written (with ``--ordered``, lines held back
  behind an earlier one count too), plus one 64 KiB read buffer; an endless
  pipe or a huge file runs in constant memory.
* **Output order**: completion order by default; input order with
  ``--ordered``.  Output is flushed whenever the runner is about to wait, so
  a slow pipe sees each result as soon as it is ready.
* **Clean streams**: standard input and output are for this process alone;
  the pool's processes get ``/dev/null`` as standard input and standard
  error as standard output, so a handler's ``print()`` cannot corrupt the
  output nor its ``input()`` eat a job.
* **Exit codes**: 0 when every job succeeded, 1 when any failed (or the run
  could not finish), 2 for bad options or a TARGET / ``--init`` that cannot
  be imported or called (a one-line message, no traceback), 130 after
  Ctrl-C.  Ctrl-C force-stops the pool, writes the summary and leaves no
  process behind.
* A one-line summary (jobs, errors, timeouts, elapsed time) goes to
  standard error at the end, and a tqdm progress bar while running when
  standard error is a terminal (``pip install 'bossworker[cli]'``).

How: the main thread reads lines, parses them and adds them to the pool
(one ``add_work`` call per batch of lines that arrived together); a
collector thread takes results (``get_result(with_id=True)``), maps job
ids back to line numbers and writes the records.  A Ctrl-C lands in the
main thread, wherever it waits.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import multiprocessing
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import TIMED_OUT_ERROR, BossWorkerError, SerializationError, WorkerInitError
from .pool import BossWorkerAsync

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Output records are compact, strict JSON (no NaN or Infinity).  One
#: encoder for the whole run: json.dumps with options builds one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
#: Input is read in chunks of this size (one chunk's lines make one batch).
_READ_SIZE = 64 * 1024
#: How often the progress bar is redrawn, and how often it asks the Boss
#: for its statistics (a round trip).
_PROGRESS_INTERVAL = 0.2
_STATS_INTERVAL = 1.0
#: How long to wait for the collecting thread after an interrupted run.
_COLLECTOR_JOIN_TIMEOUT = 5.0
_NO_TQDM_HINT = "bossworker: no progress bar: tqdm is not installed (pip install 'bossworker[cli]')"


class UsageError(Exception):
    """A problem with the command line, reported in one line with exit code 2."""


class OutputError(Exception):
    """Writing the output failed; the run cannot go on."""


# -- the command line ------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``bossworker`` argument parser, with its ``run`` and ``demo`` commands."""
    parser = argparse.ArgumentParser(
        prog="bossworker",
        description="Run a Python function over JSON Lines jobs in a pool of worker processes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run TARGET over JSON Lines jobs",
        description="Run TARGET over JSON Lines jobs (one JSON value per line), writing one JSON "
        'line per job: {"line": N, "result": ...} or {"line": N, "error": "..."}.',
        epilog="exit status: 0 every job succeeded, 1 some job failed, 2 bad usage or TARGET, "
        "130 interrupted.  Example: bossworker run examples/synopsis.py:work --input examples/jobs.jsonl",
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
        help="worker processes (default: the CPU count, %(default)s)",
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
        help="how worker processes are started (default: fork where available)",
    )
    run.add_argument("--ordered", action="store_true", help="write records in input order")
    run.add_argument(
        "--max-in-flight",
        type=_positive_int,
        metavar="N",
        help="lines read but not yet written, at most (default: max(256, 64 x workers))",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")
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
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bossworker`` command; returns the exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo()
    setup_logging(verbose=args.verbose)
    try:
        options = RunOptions.from_args(args)
        return run(options)
    except UsageError as exc:
        print(f"bossworker: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the run started (a run handles its own)
        return EXIT_INTERRUPTED


def setup_logging(verbose: bool) -> None:
    """Send the ``bossworker`` logger's records (worker deaths, timeouts; and
    worker starts with ``verbose``) to standard error, one line each.  Set up
    before the pool starts, so that a forked Boss inherits it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bossworker: %(levelname)s: %(message)s"))
    logger = logging.getLogger("bossworker")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False


# -- TARGET ----------------------------------------------------------------------


def load_callable(spec: str, what: str = "TARGET") -> Callable[..., Any]:
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the callable.

    ``attr`` may be dotted (``Class.method``).  A file is imported under its
    stem as module name, with its directory put first on ``sys.path``, so
    that worker processes started with ``spawn`` or ``forkserver`` (which
    inherit ``sys.path``) import the very same module by name.  Raises
    :class:`UsageError` with a one-line message for anything wrong.
    """
    module_part, sep, attr_path = spec.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise UsageError(f"{what} must look like module:function or path/to/file.py:function, not {spec!r}")
    if module_part.endswith(".py") or os.sep in module_part:
        module = _import_file(module_part, what)
    else:
        module = _import_module(module_part, what)
    obj: Any = module
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise UsageError(f"{what} {spec!r}: {module.__name__!r} has no attribute {attr_path!r}") from None
    if not callable(obj):
        raise UsageError(f"{what} {spec!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


def _import_module(name: str, what: str) -> Any:
    """Import a module by name, the current directory first on the path
    (as ``python -m`` would)."""
    _put_first_on_path(os.getcwd())
    try:
        return importlib.import_module(name)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - any failure is the user's to hear about
        raise UsageError(f"cannot import {what} module {name!r}: {_one_line(exc)}") from None


def _import_file(path_text: str, what: str) -> Any:
    """Import ``path/to/name.py`` as module ``name`` (see :func:`load_callable`)."""
    path = Path(path_text).resolve()
    if not path.is_file():
        raise UsageError(f"{what} file not found: {path_text}")
    name = path.stem
    already = sys.modules.get(name)
    if already is not None and not _is_module_file(already, path):
        raise UsageError(
            f"cannot import {path_text} as module {name!r}: another module of that name is "
            "already imported; rename the file"
        )
    _put_first_on_path(str(path.parent))
    module = _import_module(name, what)
    if not _is_module_file(module, path):
        raise UsageError(
            f"cannot import {path_text} as module {name!r}: that name is taken by "
            f"{getattr(module, '__file__', None) or 'a built-in module'}; rename the file"
        )
    return module


def _is_module_file(module: Any, path: Path) -> bool:
    file = getattr(module, "__file__", None)
    return file is not None and Path(file).resolve() == path


def _put_first_on_path(directory: str) -> None:
    if directory not in sys.path:
        sys.path.insert(0, directory)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- options -------------------------------------------------------------------------


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

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RunOptions:
        """Resolve the parsed arguments; :class:`UsageError` if TARGET or --init is unusable."""
        target = load_callable(args.target)
        init = load_callable(args.init, "--init") if args.init else None
        return cls(
            target=target,
            init=init,
            input=None if args.input in (None, "-") else args.input,
            output=None if args.output in (None, "-") else args.output,
            workers=args.workers,
            timeout=args.timeout,
            max_jobs_per_worker=args.max_jobs_per_worker,
            start_method=args.start_method,
            ordered=args.ordered,
            max_in_flight=args.max_in_flight or max(256, 64 * args.workers),
            progress=not args.no_progress and sys.stderr.isatty(),
        )


# -- records -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One output line, ready to write (``text`` ends in a newline)."""

    text: str
    failed: bool = False
    timed_out: bool = False


def result_record(number: int, value: Any) -> Record:
    """The record for a job's result; a dict with an ``ERROR`` key is a failure."""
    if isinstance(value, dict) and "ERROR" in value:
        text = str(value["ERROR"])
        return error_record(number, text, timed_out=text == TIMED_OUT_ERROR)
    try:
        return Record(_ENCODER.encode({"line": number, "result": value}) + "\n")
    except (TypeError, ValueError, RecursionError) as exc:
        return error_record(number, f"the result cannot be written as JSON: {_one_line(exc)}")


def error_record(number: int, message: str, *, timed_out: bool = False) -> Record:
    """``{"line": n, "error": first line}``, plus ``"detail"`` (the rest,
    e.g. a traceback) when the message has several lines."""
    first, _, rest = message.strip().partition("\n")
    fields: dict[str, Any] = {"line": number, "error": first}
    if rest.strip():
        fields["detail"] = rest
    return Record(_ENCODER.encode(fields) + "\n", failed=True, timed_out=timed_out)


def parse_job(raw: bytes) -> Any:
    """The JSON value on one input line; :class:`ValueError` with a short message if invalid."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"invalid JSON: {_one_line(exc)}") from None


# -- the writer ------------------------------------------------------------------------


class Writer:
    """Writes records, in completion or input order, and keeps the counts.

    Every input line takes a *slot* (:meth:`take_slots`) before it is
    handled and gives it back when its record is written (or, for a blank
    line, when its turn comes), so at most ``slots`` lines are ever between
    the two.  Thread-safe.
    """

    def __init__(self, out: IO[str], ordered: bool, slots: int) -> None:
        self._out = out
        self._ordered = ordered
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)  # signalled when slots are freed
        self._slots = slots
        self._free = slots
        self._wake_at = 0  # a reader waits until this many slots are free
        self._held: dict[int, Record | None] = {}  # --ordered: finished, waiting for earlier lines
        self._next = 1  # --ordered: the next line to write
        self.lines_done = 0  # lines written or skipped
        self.jobs = 0  # records written
        self.errors = 0
        self.timeouts = 0

    def take_slots(self, wanted: int, wait: bool) -> int:
        """Take up to ``wanted`` slots and return how many were taken.

        With ``wait``, take at least one, waiting (interruptibly) until
        enough are free: ``wanted`` or a quarter of all slots, whichever is
        fewer, so that a reader at the limit wakes once per batch rather than
        once per result.
        """
        with self._room:
            if wait and self._free < 1:
                self._wake_at = max(1, min(wanted, self._slots // 4))
                try:
                    self._room.wait_for(lambda: self._free >= self._wake_at)
                finally:
                    self._wake_at = 0
            taken = min(wanted, self._free)
            self._free -= taken
            return taken

    def open_all_slots(self) -> None:
        """Let a reader waiting in :meth:`take_slots` through (the run is ending)."""
        with self._room:
            self._free = sys.maxsize
            self._room.notify_all()

    def finish(self, number: int, record: Record | None) -> None:
        """Line ``number`` is done: ``record`` to write, or None for a blank line."""
        with self._lock:
            if not self._ordered:
                self._write(record)
                freed = 1
            else:
                self._held[number] = record
                freed = 0
                while self._next in self._held:
                    self._write(self._held.pop(self._next))
                    self._next += 1
                    freed += 1
            self._free += freed
            if self._wake_at and self._free >= self._wake_at:
                self._room.notify()

    def flush(self) -> None:
        """Push written records out now (before the runner waits)."""
        with self._lock:
            self._flush()

    def _write(self, record: Record | None) -> None:
        self.lines_done += 1
        if record is None:
            return
        try:
            self._out.write(record.text)
        except OSError as exc:
            raise OutputError(exc) from exc
        self.jobs += 1
        self.errors += record.failed
        self.timeouts += record.timed_out

    def _flush(self) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            raise OutputError(exc) from exc


# -- the run -------------------------------------------------------------------------


class RunState:
    """What the reading (main) thread and the collecting thread share.

    ``cond`` guards every field.  ``line_of`` maps each job id the pool
    returned to its input line; the reader adds the job and its entry while
    holding ``cond``, so the collector never sees a result before its line.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.line_of: dict[int, int] = {}
        self.submitted = 0
        self.collected = 0
        self.input_done = False
        self.stopping = False
        self.failure: BaseException | None = None
        # Written by the reader only; read by the progress bar.
        self.lines_read = 0
        self.bytes_read = 0

    def submit(self, bw: BossWorkerAsync, batch: Sequence[tuple[int, Any]]) -> None:
        """Add the jobs of ``batch``, ``(line number, job)`` pairs, to the pool."""
        if not batch:
            return
        with self.cond:
            job_ids = bw.add_work(*(job for _, job in batch))
            for job_id, (number, _) in zip(job_ids, batch, strict=True):
                self.line_of[job_id] = number
            self.submitted += len(batch)
            self.cond.notify()

    def end_of_input(self) -> None:
        with self.cond:
            self.input_done = True
            self.cond.notify()

    def stop(self, failure: BaseException | None = None) -> None:
        """End the run early; the first failure (not after an interrupt) is kept."""
        with self.cond:
            if failure is not None and not self.stopping:
                self.failure = failure
            self.stopping = True
            self.cond.notify_all()

    def work_or_end(self) -> bool:
        """True when the collector has something to do or should stop (lock held)."""
        return self.stopping or self.submitted > self.collected or self.input_done


class Collector(threading.Thread):
    """Takes results from the pool and hands their records to the writer."""

    def __init__(self, bw: BossWorkerAsync, state: RunState, writer: Writer) -> None:
        super().__init__(name="bossworker-collector", daemon=True)
        self._bw = bw
        self._state = state
        self._writer = writer

    def run(self) -> None:
        try:
            self._collect()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._state.stop(exc)
            self._writer.open_all_slots()

    def _collect(self) -> None:
        bw, state, writer = self._bw, self._state, self._writer
        while True:
            with state.cond:
                outstanding = state.submitted - state.collected
                if state.stopping or (outstanding == 0 and state.input_done):
                    return
            if not outstanding:
                writer.flush()
                with state.cond:
                    state.cond.wait_for(state.work_or_end)
                continue
            for _ in range(outstanding):  # each is sure to come
                item = bw.get_result_nb(with_id=True)
                if item is None:
                    writer.flush()
                    item = bw.get_result(with_id=True)
                job_id, value = item
                with state.cond:
                    number = state.line_of.pop(job_id)
                    state.collected += 1
                writer.finish(number, result_record(number, value))


def read_line_batches(source: IO[bytes]) -> Iterator[list[bytes]]:
    """The lines of ``source`` (without their newline), as they become available.

    Each batch holds the complete lines one read of up to :data:`_READ_SIZE`
    bytes brought, so a pipe's line is handed on as soon as it has arrived,
    and a file's lines go on in large batches.  Memory: one read, plus the
    line being assembled.
    """
    fd = source.fileno()
    partial: list[bytes] = []  # the start of a line that did not end yet
    while data := os.read(fd, _READ_SIZE):
        if b"\n" not in data:
            partial.append(data)
            continue
        if partial:
            partial.append(data)
            data = b"".join(partial)
            partial = []
        lines = data.split(b"\n")
        tail = lines.pop()
        if tail:
            partial.append(tail)
        yield lines
    if partial:
        yield [b"".join(partial)]


def read_jobs(bw: BossWorkerAsync, source: IO[bytes], state: RunState, writer: Writer) -> None:
    """Read every line of ``source``: add it to the pool, or finish it at once
    if it is blank or not JSON.  Lines that arrived together are added with
    one ``add_work`` call.  Stops early if the run is stopping."""
    number = 0
    for lines in read_line_batches(source):
        batch: list[tuple[int, Any]] = []  # (line number, job) not added yet
        finished_here = False
        slots = 0
        for index, raw in enumerate(lines):
            if not slots:
                slots = writer.take_slots(len(lines) - index, wait=False)
                if not slots:
                    state.submit(bw, batch)  # let the pool work while we wait
                    batch = []
                    slots = writer.take_slots(len(lines) - index, wait=True)
            slots -= 1
            if state.stopping:
                return
            number += 1
            state.lines_read = number
            state.bytes_read += len(raw) + 1
            if not raw.strip():
                writer.finish(number, None)
                finished_here = True
                continue
            try:
                batch.append((number, parse_job(raw)))
            except ValueError as exc:
                writer.finish(number, error_record(number, str(exc)))
                finished_here = True
        state.submit(bw, batch)
        if finished_here:
            writer.flush()
    state.end_of_input()


def run_pool(options: RunOptions, source: IO[bytes], state: RunState, writer: Writer) -> None:
    """Start the pool, feed it every line and collect every result.

    On any exception (Ctrl-C included, or a failure in the collecting
    thread) the pool is force-stopped, no process of it is left, and the
    exception propagates; a second Ctrl-C during that clean-up is ignored.
    """
    collector: Collector | None = None
    try:
        with start_pool(options) as bw:
            collector = Collector(bw, state, writer)
            progress = Progress.maybe_start(options.progress, bw, state, writer, source)
            try:
                collector.start()
                read_jobs(bw, source, state, writer)
                collector.join()
                if state.failure is not None:
                    raise state.failure
            except BaseException:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                state.stop()
                raise
            finally:
                progress.stop()
    finally:
        if collector is not None and collector.ident is not None:
            collector.join(_COLLECTOR_JOIN_TIMEOUT)
    writer.flush()


def start_pool(options: RunOptions) -> BossWorkerAsync:
    """The pool; :class:`UsageError` if the handlers cannot be used."""
    try:
        return BossWorkerAsync(
            options.target,
            init_handler=options.init,
            global_timeout=options.timeout,
            worker_count=options.workers,
            start_method=options.start_method,
            max_jobs_per_worker=options.max_jobs_per_worker,
        )
    except SerializationError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    except WorkerInitError as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(f"--init failed in every worker: {lines[-1] if lines else exc}") from None


def run(options: RunOptions) -> int:
    """``bossworker run``: returns the exit code (see the module docstring).

    Raises :class:`UsageError` if the input, the output or the pool cannot
    be set up.
    """
    started = time.monotonic()
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        with open_input(options.input) as source, open_output(options.output) as out:
            writer = Writer(out, options.ordered, options.max_in_flight)
            state = RunState()
            outcome = run_to_the_end(options, source, state, writer)
        print(summary(writer, state, time.monotonic() - started, outcome), file=sys.stderr)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    if outcome == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome == "done" and writer.errors == 0 else EXIT_FAILED


def run_to_the_end(options: RunOptions, source: IO[bytes], state: RunState, writer: Writer) -> str:
    """:func:`run_pool`, with the ways it can end early turned into an
    outcome: ``"done"``, ``"interrupted"``, ``"output closed"`` or ``"failed"``
    (reported on standard error).  :class:`UsageError` propagates."""
    try:
        run_pool(options, source, state, writer)
    except KeyboardInterrupt:
        return "interrupted"
    except OutputError as exc:
        return _output_failed(exc)
    except BossWorkerError as exc:
        print(f"bossworker: error: {_one_line(exc)}", file=sys.stderr)
        return "failed"
    return "done"


def _output_failed(exc: OutputError) -> str:
    """Report a failed write (quietly for a closed pipe, as ``| head`` does)."""
    cause = exc.__cause__
    if isinstance(cause, BrokenPipeError):
        return "output closed"
    print(f"bossworker: error: cannot write the output: {cause}", file=sys.stderr)
    return "failed"


@contextlib.contextmanager
def open_input(path: str | None) -> Iterator[IO[bytes]]:
    """The input as unbuffered bytes: ``path``, or standard input for None.

    Standard input is taken over (see :func:`_take_over`): the pool's
    processes get ``/dev/null`` instead, so no handler can eat input lines.
    """
    if path is not None:
        try:
            source = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror}") from None
        with source:
            yield source
        return
    devnull = os.open(os.devnull, os.O_RDONLY)
    try:
        with _take_over(sys.stdin, devnull) as fd, open(fd, "rb", buffering=0) as source:
            yield source
    finally:
        os.close(devnull)


@contextlib.contextmanager
def open_output(path: str | None) -> Iterator[IO[str]]:
    """The output as text: ``path``, or standard output for None.

    Standard output is taken over (see :func:`_take_over`): the pool's
    processes, and any print() in this one, write to standard error instead,
    so a handler's print() cannot corrupt the JSON Lines.
    """
    if path is None:
        sys.stdout.flush()
        with _take_over(sys.stdout, sys.stderr.fileno()) as fd:
            out = open(fd, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
            try:
                yield out
            finally:
                with contextlib.suppress(OSError):  # a closed pipe; already reported
                    out.close()
        return
    try:
        out = open(path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    with out:
        yield out


@contextlib.contextmanager
def _take_over(stream: IO[Any], replacement: int) -> Iterator[int]:
    """A private duplicate of ``stream``'s descriptor, for this process
    alone, while the descriptor itself (0 or 1, which child processes
    inherit) points at ``replacement``; put back on exit.  The caller owns
    (closes) the duplicate."""
    try:
        fd = stream.fileno()
        saved = os.dup(fd)
    except (AttributeError, ValueError, OSError) as exc:
        raise UsageError(
            f"standard {'input' if stream is sys.stdin else 'output'} is not usable: {exc}"
        ) from None
    private = os.dup(fd)
    os.dup2(replacement, fd)
    try:
        yield private
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def summary(writer: Writer, state: RunState, elapsed: float, outcome: str) -> str:
    """``bossworker: 5 jobs, 1 error, 0 timeouts, 0.42 s (11.9 jobs/s)``, and
    what was left unfinished if the run ended early."""
    text = (
        f"bossworker: {_plural(writer.jobs, 'job')}, {_plural(writer.errors, 'error')}, "
        f"{_plural(writer.timeouts, 'timeout')}, {elapsed:.2f} s"
    )
    if elapsed > 0 and writer.jobs:
        text += f" ({writer.jobs / elapsed:.1f} jobs/s)"
    if outcome != "done":
        unfinished = state.lines_read - writer.lines_done
        text += f"; {outcome}, {_plural(unfinished, 'line')} read but not finished"
    return text


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


# -- the progress bar --------------------------------------------------------------


class Progress:
    """A tqdm bar on standard error, redrawn by its own thread from the
    run's counters (a few times a second; the Boss's statistics once a
    second).  The total is known, as an estimate from the bytes read so far,
    when the input is a regular file."""

    def __init__(
        self, bar: Any, bw: BossWorkerAsync, state: RunState, writer: Writer, size: int | None
    ) -> None:
        self._bar = bar
        self._bw = bw
        self._state = state
        self._writer = writer
        self._size = size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bossworker-progress", daemon=True)
        self._workers = "?"
        self._next_stats = 0.0

    @classmethod
    def maybe_start(
        cls, enabled: bool, bw: BossWorkerAsync, state: RunState, writer: Writer, source: IO[bytes]
    ) -> Progress | _NoProgress:
        """A running bar if enabled and tqdm is installed; else a no-op (and,
        if only tqdm is missing, a one-time hint on standard error)."""
        if not enabled:
            return _NoProgress()
        try:
            tqdm_module: Any = importlib.import_module("tqdm")
        except ImportError:
            print(_NO_TQDM_HINT, file=sys.stderr)
            return _NoProgress()
        bar = tqdm_module.tqdm(total=None, unit="line", file=sys.stderr, dynamic_ncols=True, mininterval=0)
        progress = cls(bar, bw, state, writer, _regular_file_size(source))
        progress._thread.start()
        return progress

    def stop(self) -> None:
        """Draw the final state and close the bar."""
        self._stop.set()
        self._thread.join()
        self._refresh(final=True)
        self._bar.close()

    def _loop(self) -> None:
        while not self._stop.wait(_PROGRESS_INTERVAL):
            self._refresh(final=False)

    def _refresh(self, final: bool) -> None:
        state, writer, bar = self._state, self._writer, self._bar
        now = time.monotonic()
        if not final and now >= self._next_stats:
            self._next_stats = now + _STATS_INTERVAL
            with contextlib.suppress(BossWorkerError):
                self._workers = str(self._bw.stats().workers_alive)
        if state.input_done:
            bar.total = state.lines_read
        elif self._size and state.bytes_read:
            bar.total = max(state.lines_read, round(state.lines_read * self._size / state.bytes_read))
        bar.n = writer.lines_done
        bar.set_postfix(errors=writer.errors, workers=self._workers, refresh=False)
        bar.refresh()


class _NoProgress:
    """No bar."""

    def stop(self) -> None:
        pass


def _regular_file_size(source: IO[bytes]) -> int | None:
    try:
        info = os.fstat(source.fileno())
    except (OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) and info.st_size > 0 else None


# -- bossworker demo ------------------------------------------------------------------


def demo_work(job: dict[str, int]) -> dict[str, int]:
    """The synopsis's work handler: multiply ``a`` by ``b``."""
    return {"product": job["a"] * job["b"]}


def demo_handle_result(result: dict[str, Any]) -> dict[str, Any]:
    """The synopsis's result handler: add a sentence."""
    if "product" in result:
        result["string"] = f"the answer is: {result['product']}"
    return result


def demo() -> int:
    """``bossworker demo``: the Perl module's synopsis; prints ``12`` and
    ``the answer is: 12``."""
    with BossWorkerAsync(demo_work, result_handler=demo_handle_result, global_timeout=2) as bw:
        bw.add_work({"a": 3, "b": 4})
        while bw.pending():
            ref = bw.get_result()
            if "ERROR" in ref:
                print(ref["ERROR"], file=sys.stderr)
            else:
                print(ref["product"])
                print(ref["string"])
    return EXIT_OK

"""The run: the main thread reads lines and adds them to the pool; a
collector thread takes results and hands their records to the writer."""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import IO, Any, cast

from ..errors import BossWorkerError, SerializationError, WorkerInitError
from ..pool import BossWorkerAsync, StartMethod
from .console import Console, start_own_line
from .errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, OutputError, UsageError, one_line
from .logs import LogPump
from .options import RunOptions
from .progress import Progress
from .records import RunOutcome, error_record, is_blank, is_error, parse_job, result_record, summary
from .state import RunState, Writer
from .stdio import open_input, open_output, read_line_batches

__all__ = ["Collector", "read_jobs", "run", "start_pool"]

#: How long to wait for the collecting thread after an interrupted run.
_COLLECTOR_JOIN_TIMEOUT = 5.0


class Collector(threading.Thread):
    """Takes results from the pool and hands their records to the writer."""

    def __init__(
        self, bw: BossWorkerAsync[Any, Any], state: RunState, writer: Writer, pump: LogPump | None
    ) -> None:
        super().__init__(name="bossworker-collector", daemon=True)
        self._bw = bw
        self._state = state
        self._writer = writer
        self._pump = pump

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
                if self._pump is not None and is_error(value):
                    # The Boss logged any warning about this job before it
                    # answered: print it while the job's line is still known.
                    self._pump.drain()
                with state.cond:
                    number = state.line_of.pop(job_id)
                    state.collected += 1
                writer.finish(number, result_record(number, value))


def read_jobs(bw: Any, source: IO[bytes], state: RunState, writer: Writer) -> None:
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
            if is_blank(raw):
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


def run_pool(
    options: RunOptions,
    source: IO[bytes],
    state: RunState,
    writer: Writer,
    console: Console,
    pump: LogPump | None,
) -> None:
    """Start the pool, feed it every line and collect every result.

    On any exception (Ctrl-C included, or a failure in the collecting
    thread) the pool is force-stopped, no process of it is left, and the
    exception propagates; a second Ctrl-C during that clean-up is ignored.
    """
    collector: Collector | None = None
    try:
        with start_pool(options) as bw:
            if pump is not None:
                pump.map_jobs(state.line_for)
                pump.start()
            collector = Collector(bw, state, writer, pump)
            progress = Progress.maybe_start(options.progress, bw, state, writer, source, console)
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
        if pump is not None:
            pump.stop()  # the pool is gone: every record it logged is in the pipe
    writer.flush()


def start_pool(options: RunOptions) -> BossWorkerAsync[Any, Any]:
    """The pool; :class:`UsageError` if the handlers cannot be used."""
    backend: Any = None
    if options.dask is not None:
        from ..dask import DaskBackend

        backend = DaskBackend() if options.dask == "local" else DaskBackend(options.dask)
    try:
        return BossWorkerAsync(
            options.target,
            init_handler=options.init,
            global_timeout=options.timeout,
            worker_count=options.workers,
            start_method=cast("StartMethod | None", options.start_method),  # checked by BossWorkerAsync
            max_jobs_per_worker=options.max_jobs_per_worker,
            backend=backend,
        )
    except SerializationError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    except WorkerInitError as exc:
        lines = str(exc).strip().splitlines()
        raise UsageError(f"--init failed in every worker: {lines[-1] if lines else exc}") from None


def run(options: RunOptions, console: Console, pump: LogPump | None = None) -> int:
    """``bossworker run``: returns the exit code (see :mod:`bossworker.cli`).

    Raises :class:`UsageError` if the input, the output or the pool cannot
    be set up.
    """
    started = time.monotonic()
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        with open_input(options.input) as source, open_output(options.output) as out:
            writer = Writer(out, options.ordered, options.max_in_flight)
            state = RunState()
            outcome = run_to_the_end(options, source, state, writer, console, pump)
        text = summary(
            jobs=writer.jobs,
            errors=writer.errors,
            timeouts=writer.timeouts,
            elapsed=time.monotonic() - started,
            outcome=outcome,
            unfinished=state.lines_read - writer.lines_done,
        )
        with console.lock:
            sys.stderr.flush()
            console.line(start_own_line(sys.stderr.fileno()) + text)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    if outcome is RunOutcome.INTERRUPTED:
        return EXIT_INTERRUPTED
    return EXIT_OK if outcome is RunOutcome.DONE and writer.errors == 0 else EXIT_FAILED


def run_to_the_end(
    options: RunOptions,
    source: IO[bytes],
    state: RunState,
    writer: Writer,
    console: Console,
    pump: LogPump | None,
) -> RunOutcome:
    """:func:`run_pool`, with the ways it can end early turned into an
    outcome (a failure is reported on standard error).  :class:`UsageError`
    propagates."""
    try:
        run_pool(options, source, state, writer, console, pump)
    except KeyboardInterrupt:
        return RunOutcome.INTERRUPTED
    except OutputError as exc:
        return _output_failed(exc, console)
    except BossWorkerError as exc:
        console.line(f"bossworker: error: {one_line(exc)}")
        return RunOutcome.FAILED
    return RunOutcome.DONE


def _output_failed(exc: OutputError, console: Console) -> RunOutcome:
    """Report a failed write (quietly for a closed pipe, as ``| head`` does)."""
    cause = exc.__cause__
    if isinstance(cause, BrokenPipeError):
        return RunOutcome.OUTPUT_CLOSED
    console.line(f"bossworker: error: cannot write the output: {cause}")
    return RunOutcome.FAILED

"""The run: the main thread reads lines and adds them to the pool; a
collector thread takes outcomes and hands their records to the writer.

How a run ends early: Ctrl-C or a failure force-stops the pool; ``--halt
soon`` stops reading and cancels the jobs not started yet, and the running
ones finish; ``--halt now`` stops reading, takes the outcomes that have
arrived and force-stops the pool.  In every case the records of the jobs
that finished are written (with ``--ordered``, those held back behind an
unfinished line too), so that ``--resume`` runs only what is left."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import IO, Any, cast

from ..errors import BossWorkerError, InvalidArgumentError, SerializationError, WorkerInitError
from ..pool import BossWorkerAsync, StartMethod
from .console import Console, start_own_line
from .errors import EXIT_FAILED, EXIT_HALTED, EXIT_INTERRUPTED, EXIT_OK, OutputError, UsageError, one_line
from .halt import HaltWhen
from .joblog import logged_lines, open_joblog
from .logs import LogPump
from .options import Handlers, RunOptions
from .progress import RunProgress, eta_text, lines_left
from .records import RunOutcome, invalid_json_record, is_blank, outcome_record, parse_job, summary
from .resume import DoneSet, scan_output
from .state import MIN_RUN_TIME_SAMPLES, RunState, Writer
from .stdio import (
    WRITE_SIZE,
    claim_stdout,
    count_lines,
    open_input,
    open_output,
    read_line_batches,
    regular_file_fd,
)

__all__ = ["Collector", "read_jobs", "run", "start_pool"]

#: How long to wait for the collecting thread after an interrupted run.
_COLLECTOR_JOIN_TIMEOUT = 5.0
#: With ``--halt now``, how often a waiting collector looks whether to stop.
_HALT_POLL = 0.1


class _HaltNow(Exception):
    """``--halt now`` tripped: leave the pool's ``with`` block by force."""


class Collector(threading.Thread):
    """Takes outcomes from the pool and hands their records to the writer."""

    def __init__(
        self,
        bw: BossWorkerAsync[Any, Any],
        state: RunState,
        writer: Writer,
        pump: LogPump | None,
        options: RunOptions,
    ) -> None:
        super().__init__(name="bossworker-collector", daemon=True)
        self._bw = bw
        self._state = state
        self._writer = writer
        self._pump = pump
        self._details = options.details
        self._samples = options.timeout.percent is not None  # keep run times for --timeout P%
        # Only --halt now needs a collector that wakes up to stop mid-wait.
        self._poll = _HALT_POLL if options.halt is not None and options.halt.when is HaltWhen.NOW else None

    def run(self) -> None:
        try:
            self._collect()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._state.stop(exc)
            self._writer.open_all_slots()
        finally:
            self._state.collector_finished()

    def _collect(self) -> None:
        bw, state, writer = self._bw, self._state, self._writer
        while True:
            with state.cond:
                outstanding = state.submitted - state.collected
                if state.stopping or state.halt_now or (outstanding == 0 and state.input_done):
                    return
            if not outstanding:
                writer.flush()
                with state.cond:
                    state.cond.wait_for(state.work_or_end)
                continue
            for _ in range(outstanding):  # each is sure to come
                outcome = bw.get_outcome(blocking=False)
                while outcome is None:
                    writer.flush()
                    if state.halt_now:
                        return  # --halt now: what had arrived is taken
                    outcome = bw.get_outcome(timeout=self._poll)
                if self._pump is not None and not outcome.ok:
                    # The Boss logged any warning about this job before it
                    # answered: print it while the job's line is still known.
                    self._pump.drain()
                with state.cond:
                    number = state.line_of.pop(outcome.job_id)
                    state.collected += 1
                    if self._samples:
                        if outcome.ok:
                            state.run_times.append(outcome.run_time)
                        state.cond.notify_all()  # a reader waiting for the first run times
                if outcome.cancelled:
                    continue  # --halt soon dropped it before it started: it stays undone
                writer.finish(number, outcome_record(number, outcome, self._details))


def read_jobs(
    bw: Any,
    source: IO[bytes],
    state: RunState,
    writer: Writer,
    options: RunOptions,
    done: DoneSet | None = None,
) -> None:
    """Read every line of ``source``: add it to the pool, or finish it at once
    if it is blank, not JSON, or in ``done`` (``--resume``).  Lines that
    arrived together are added with one ``add_work`` call.  Stops early if
    the run is stopping or halted."""
    number = 0
    percent = options.timeout.percent is not None
    fixed_limit = None if percent else options.timeout.for_median(None)
    for lines in read_line_batches(source, state.wake_fd):
        batch: list[tuple[int, Any]] = []  # (line number, job) not added yet
        finished_here = False
        slots = 0
        for index, raw in enumerate(lines):
            if not slots:
                slots = writer.take_slots(len(lines) - index, wait=False)
                if not slots:
                    _submit(bw, state, batch, options, fixed_limit)  # let the pool work while we wait
                    batch = []
                    slots = writer.take_slots(len(lines) - index, wait=True)
            slots -= 1
            if state.stopping or state.halted:
                return
            number += 1
            state.lines_read = number
            if done is not None and number in done:
                writer.finish(number, None)
                state.resumed += 1
                if not number & 0xFFFF:
                    done.forget_below(number)
                continue
            if is_blank(raw):
                writer.finish(number, None)
                finished_here = True
                continue
            try:
                job = parse_job(raw)
            except ValueError as exc:
                writer.finish(number, invalid_json_record(number, str(exc), options.details))
                finished_here = True
                continue
            batch.append((number, job))
            if percent and _warming_up(state, len(batch), options.workers):
                # --timeout P%: until run times are known, one job per worker.
                _submit(bw, state, batch, options, fixed_limit)
                batch = []
                _wait_for_run_times(state, options.workers)
        _submit(bw, state, batch, options, fixed_limit)
        if finished_here:
            writer.flush()
    state.end_of_input()


def _submit(
    bw: Any, state: RunState, batch: list[tuple[int, Any]], options: RunOptions, fixed: float | None
) -> None:
    if not batch:
        return
    if options.timeout.percent is None:
        state.submit(bw, batch, fixed)
    else:
        # None before the median is known: no limit (0), not the pool's.
        state.submit(bw, batch, options.timeout.for_median(state.median_run_time()) or 0)


def _warming_up(state: RunState, batch: int, workers: int) -> bool:
    """``--timeout P%`` has no median yet, and with ``batch`` more jobs
    there would be a job out for every worker."""
    with state.cond:
        out = state.submitted - state.collected + batch
        return len(state.run_times) < MIN_RUN_TIME_SAMPLES and out >= workers


def _wait_for_run_times(state: RunState, workers: int) -> None:
    """Wait until fewer than ``workers`` jobs are out, or the median is known."""
    with state.cond:
        state.cond.wait_for(
            lambda: (
                state.stopping
                or state.halted
                or len(state.run_times) >= MIN_RUN_TIME_SAMPLES
                or state.submitted - state.collected < workers
            )
        )


def run_pool(
    options: RunOptions,
    handlers: Handlers,
    source: IO[bytes],
    state: RunState,
    writer: Writer,
    console: Console,
    pump: LogPump | None,
    done: DoneSet | None,
) -> None:
    """Start the pool, feed it every line and collect every result.

    On any exception (Ctrl-C included, or a failure in the collecting
    thread) the pool is force-stopped, no process of it is left, and the
    exception propagates; a second Ctrl-C during that clean-up is ignored.
    ``--halt now`` ends in :class:`_HaltNow` the same way.
    """
    collector: Collector | None = None
    try:
        with start_pool(options, handlers) as bw:
            if pump is not None:
                pump.map_jobs(state.line_for)
                pump.start()
            collector = Collector(bw, state, writer, pump, options)
            progress = RunProgress.maybe_start(options, bw, state, writer, source, console)
            try:
                collector.start()
                read_jobs(bw, source, state, writer, options, done)
                state.end_of_input()
                # --halt may trip after the last line was read: wait for it too.
                if state.wait_for_halt_or_end() and not state.halt_now:
                    _cancel_waiting(bw, state)
                collector.join()
                if state.failure is not None:
                    raise state.failure
                if state.halt_now:
                    raise _HaltNow
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
        if state.stopping or state.halted:
            # Finished records are written however the run ends; a failed
            # output here must not hide why the run ended.
            with contextlib.suppress(OutputError):
                writer.release_held()
    writer.flush()


def _cancel_waiting(bw: BossWorkerAsync[Any, Any], state: RunState) -> None:
    """``--halt soon``: drop every job not started yet (each still yields a
    cancelled outcome, which the collector counts and leaves unrecorded)."""
    with state.cond:
        job_ids = list(state.line_of)
    for job_id in job_ids:
        bw.cancel(job_id)


def start_pool(options: RunOptions, handlers: Handlers) -> BossWorkerAsync[Any, Any]:
    """The pool; :class:`UsageError` if the handlers cannot be used."""
    backend: Any = None
    if options.dask is not None:
        from ..dask import DaskBackend

        backend = DaskBackend() if options.dask == "local" else DaskBackend(options.dask)
    try:
        return BossWorkerAsync(
            handlers.target,
            init_handler=handlers.init,
            global_timeout=options.timeout.seconds,
            worker_count=options.workers,
            start_method=cast("StartMethod | None", options.start_method),  # checked by BossWorkerAsync
            max_jobs_per_worker=options.max_jobs_per_worker,
            backend=backend,
            retries=options.retries,
            retry_on=options.retry_on,
            max_worker_memory=options.max_worker_memory,
            # The command line carries the children's records itself (its
            # LogPump, inherited by a forked Boss: job ids become input lines).
            forward_logs=False,
        )
    except SerializationError as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    except InvalidArgumentError as exc:
        raise UsageError(one_line(exc).partition(": ")[2]) from None
    except WorkerInitError as exc:
        lines = str(exc).strip().splitlines()
        cause = lines[-1] if lines else str(exc)
        if options.init is not None:
            raise UsageError(f"--init failed in every worker: {cause}") from None
        if options.dask is not None:
            raise UsageError(
                f"no Dask worker could load TARGET {options.target!r}: {cause}; its module must be "
                "importable on the Dask workers (install it there, or put its directory on their "
                "PYTHONPATH)"
            ) from None
        raise UsageError(f"no worker could start: {cause}") from None


def run(options: RunOptions, console: Console, pump: LogPump | None = None) -> int:
    """``bossworker run``: returns the exit code (see :mod:`bossworker.cli`).

    Raises :class:`UsageError` if the handlers, the input, the output or
    the pool cannot be set up.  Standard output is taken over before
    TARGET is imported (a module printing as it loads cannot corrupt the
    records), and the output file is opened only once TARGET imported.
    """
    started = time.monotonic()
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        with claim_stdout(options.output is None) as stdout_fd:
            handlers = options.load_handlers()
            done = _read_back(options, console) if options.resume else None
            with (
                open_input(options.input) as source,
                open_output(options.output, stdout_fd, append=options.resume) as out,
                open_joblog(options.joblog, append=options.resume) as joblog,
            ):
                state = RunState()
                halt = options.halt

                def on_halt() -> None:
                    state.halt(now=halt is not None and halt.when is HaltWhen.NOW)
                    writer.open_all_slots()

                if joblog is not None:
                    out.follower = joblog.sink  # the log never runs ahead of the output
                writer = Writer(out, options.ordered, options.max_in_flight, joblog, halt, on_halt)
                try:
                    outcome = run_to_the_end(options, handlers, source, state, writer, console, pump, done)
                finally:
                    state.close()
                if done is not None and outcome is RunOutcome.DONE and len(done) > state.resumed:
                    extra = len(done) - state.resumed
                    console.line(
                        f"bossworker: warning: --resume: {options.output} has {extra} "
                        f"record{'s' if extra != 1 else ''} for lines the input does not have; "
                        "was it the same input?"
                    )
                left = ""
                if options.eta and outcome is not RunOutcome.DONE:
                    left = _time_left(source, state, writer, time.monotonic() - started)
        tally = writer.tally
        unfinished = state.lines_read - writer.lines_done
        text = summary(
            jobs=tally.jobs,
            errors=tally.errors,
            timeouts=tally.timeouts,
            elapsed=time.monotonic() - started,
            outcome=outcome,
            unfinished=unfinished,
            retries=tally.retries,
            memory_kills=tally.memory_kills,
            resumed=state.resumed,
            halt=str(options.halt) if options.halt else "",
            left=left,
        )
        with console.lock:
            sys.stderr.flush()
            console.line(start_own_line(sys.stderr.fileno()) + text)
    finally:
        if previous_sigint is not None:
            signal.signal(signal.SIGINT, previous_sigint)
    if outcome is RunOutcome.INTERRUPTED:
        return EXIT_INTERRUPTED
    if outcome is RunOutcome.HALTED:
        return EXIT_HALTED
    return EXIT_OK if outcome is RunOutcome.DONE and tally.errors == 0 else EXIT_FAILED


def _read_back(options: RunOptions, console: Console) -> DoneSet:
    """``--resume``: the lines the output file already has, the file repaired
    (and the job log given a line for each record it lacks)."""
    assert options.output is not None
    if options.joblog is None:
        scan = scan_output(options.output, options.resume_failed)
    else:
        logged = logged_lines(options.joblog)
        with open_joblog(options.joblog, append=True) as joblog:
            assert joblog is not None

            def mend(number: int, failed: bool) -> None:
                if number not in logged:
                    joblog.recovered(number, failed)
                    if joblog.sink.pending_bytes() >= WRITE_SIZE:
                        joblog.flush()

            scan = scan_output(options.output, options.resume_failed, mend)
    if scan.torn_bytes:
        cut = scan.torn_bytes
        console.line(f"bossworker: --resume: cut a torn last record off {options.output} ({cut} bytes)")
    if scan.failed_removed:
        removed = scan.failed_removed
        console.line(f"bossworker: --resume-failed: removed {removed} error records, to run again")
    return scan.done


def _time_left(source: IO[bytes], state: RunState, writer: Writer, elapsed: float) -> str:
    """``--eta`` for a run cut short: how long the rest would take at its rate."""
    fd = regular_file_fd(source)
    total = count_lines(fd) if fd is not None else state.lines_read if state.input_done else None
    return eta_text(writer.lines_done - state.resumed, elapsed, lines_left(total, writer.lines_done))


def run_to_the_end(
    options: RunOptions,
    handlers: Handlers,
    source: IO[bytes],
    state: RunState,
    writer: Writer,
    console: Console,
    pump: LogPump | None,
    done: DoneSet | None,
) -> RunOutcome:
    """:func:`run_pool`, with the ways it can end early turned into an
    outcome (a failure is reported on standard error).  :class:`UsageError`
    propagates."""
    try:
        run_pool(options, handlers, source, state, writer, console, pump, done)
    except KeyboardInterrupt:
        return RunOutcome.INTERRUPTED
    except _HaltNow:
        return RunOutcome.HALTED
    except OutputError as exc:
        return _output_failed(exc, console)
    except BossWorkerError as exc:
        console.line(f"bossworker: error: {one_line(exc)}")
        return RunOutcome.FAILED
    return RunOutcome.HALTED if state.halted else RunOutcome.DONE


def _output_failed(exc: OutputError, console: Console) -> RunOutcome:
    """Report a failed write (quietly for a closed pipe, as ``| head`` does)."""
    cause = exc.__cause__
    if isinstance(cause, BrokenPipeError):
        return RunOutcome.OUTPUT_CLOSED
    console.line(f"bossworker: error: cannot write the output: {cause}")
    return RunOutcome.FAILED

"""The streaming face of :class:`~bossworker.BossWorkerAsync`: ``map``,
``map_outcomes`` and their asyncio twins ``amap``, ``amap_outcomes``.

Each turns its options into one checked :class:`~bossworker.streams.MapPlan`
(:meth:`MapFace._map_plan`: the time limit, the retries, the window, the
progress bar, and a :class:`~bossworker.ledger.Lane` of its own, so a map
and ``get_result()`` never take each other's answers) and hands it to
:mod:`bossworker.streams`, which sends the jobs in a bounded window and
yields their answers.  The blocking and the asyncio map share that one plan
and differ only in the stream that runs it.  Like
:class:`~bossworker.pool_async.AsyncFace`, this is a base of the pool: what
it uses of the pool is declared below and provided by ``pool.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from . import checks, streams
from .ledger import Lane
from .outcome import Outcome

if TYPE_CHECKING:
    from .client import Client
    from .ledger import JobRecord
    from .protocol import Frame
    from .session import Session

__all__ = ["MapFace"]

J = TypeVar("J")  # a job: what the work handler takes
R = TypeVar("R")  # a result: what the work handler (or the result_handler) returns


class MapFace(Generic[J, R]):
    """The ``map`` methods of :class:`~bossworker.BossWorkerAsync` (a base of it)."""

    if TYPE_CHECKING:  # what the pool provides
        _client: Client
        _session: Session
        _global_timeout: float

        def _retry(self, retries: int | None) -> tuple[int, int]: ...
        def _outcome(self, frame: Frame, record: JobRecord | None = None) -> Outcome[R]: ...
        def _frame_result(self, frame: Frame) -> R | dict[str, str]: ...

    def map(
        self,
        iterable: Iterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> Iterator[R | dict[str, str]]:
        """Run every item of ``iterable`` as a job; yield the results.

        Each result is what :meth:`get_result` would return for that job
        (``result_handler`` applied, ``{"ERROR": ...}`` for a failure), in
        input order with ``ordered=True`` (the default), else as they come.
        The iterable may be endless: at most ``max_in_flight`` (default
        1024) jobs are *in flight* (sent and not yet yielded, answers held
        for their turn included), so memory stays flat.  It is read in the
        consuming thread, in batches, as room frees up.  ``timeout`` and
        ``retries`` are as in :meth:`add_work`.  ``progress=True`` (or a
        dict of tqdm arguments) shows a bar, with ``len(iterable)`` as its
        total when it has one.  :meth:`map_outcomes` yields outcomes instead.

        Its jobs are its own: they never come out of :meth:`get_result` and
        :meth:`pending` does not count them.  Leaving the loop early (or
        closing the generator) drops the results still to come and cancels
        the jobs not yet started; those a worker has run to their end.  An item
        that cannot be pickled raises :class:`SerializationError` there.
        """
        plan = self._map_plan(iterable, False, ordered, max_in_flight, timeout, retries, progress)
        return streams.map_jobs(self._client, plan, iterable)

    def map_outcomes(
        self,
        iterable: Iterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> Iterator[Outcome[R]]:
        """:meth:`map`, yielding each job's :class:`~bossworker.outcome.Outcome`
        (as :meth:`get_outcome` makes them: the value untouched, the real
        exception, the details) instead of its :meth:`get_result` value."""
        plan = self._map_plan(iterable, True, ordered, max_in_flight, timeout, retries, progress)
        return streams.map_jobs(self._client, plan, iterable)

    def amap(
        self,
        iterable: Iterable[J] | AsyncIterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> AsyncIterator[R | dict[str, str]]:
        """:meth:`map` for ``async for``, over a plain or an async iterable.

        An async iterable's items are sent as they come, while results are
        awaited, so a slow source never holds results back.  A plain
        iterable is read in the event loop: it must not block.
        """
        plan = self._map_plan(iterable, False, ordered, max_in_flight, timeout, retries, progress)
        return streams.amap(self._client, self._session.socket_waiter(), plan, iterable)

    def amap_outcomes(
        self,
        iterable: Iterable[J] | AsyncIterable[J],
        *,
        ordered: bool = True,
        max_in_flight: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        progress: streams.Progress = False,
    ) -> AsyncIterator[Outcome[R]]:
        """:meth:`map_outcomes` for ``async for`` (see :meth:`amap`)."""
        plan = self._map_plan(iterable, True, ordered, max_in_flight, timeout, retries, progress)
        return streams.amap(self._client, self._session.socket_waiter(), plan, iterable)

    def _map_plan(
        self,
        iterable: object,
        outcomes: bool,
        ordered: bool,
        max_in_flight: int | None,
        timeout: float | None,
        retries: int | None,
        progress: streams.Progress,
    ) -> streams.MapPlan[Any]:
        """The checked options of one map; with ``outcomes``, it yields
        Outcome objects (its lane keeps each job's details), else what
        get_result() would return."""
        limit = self._global_timeout if timeout is None else checks.seconds("timeout", timeout)
        checks.progress(progress)
        retry = self._retry(retries)
        lane = Lane(records=outcomes)
        deliver: Callable[[Frame], Any] = (
            (lambda frame: self._outcome(frame, self._client.take_lane_record(lane, frame.job_id)))
            if outcomes
            else self._frame_result
        )
        return streams.MapPlan(
            deliver,
            lane,
            bool(ordered),
            streams.DEFAULT_MAX_IN_FLIGHT
            if max_in_flight is None
            else checks.whole_number("max_in_flight", max_in_flight),
            limit,
            retry,
            lambda: streams.Bar(progress, streams.known_length(iterable)),
        )

"""The asyncio face of :class:`~bossworker.BossWorkerAsync`: the same pool
from async code, never blocking the event loop.

Each ``aX`` here drives the same client and ledger step as its blocking twin
``X`` in ``pool.py`` and takes the same parameters (``tests/test_parity.py``
checks it); it differs only in how it waits: on main's socket with
``loop.add_reader`` / ``add_writer`` (:mod:`bossworker.aio`), not in
``select()``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, Self, TypeVar, overload

from . import answers, checks, streams
from .errors import BossDiedError, ShutDownError
from .outcome import Outcome

if TYPE_CHECKING:
    from .client import Client
    from .ledger import JobRecord
    from .payload import Pickled
    from .protocol import Frame
    from .session import Session

__all__ = ["AsyncFace"]

J = TypeVar("J")  # a job: what the work handler takes
R = TypeVar("R")  # a result: what the work handler (or the result_handler) returns


class AsyncFace(Generic[J, R]):
    """The ``a``-methods of :class:`~bossworker.BossWorkerAsync` (its base)."""

    if TYPE_CHECKING:  # what the pool provides
        _client: Client
        _session: Session

        def _pickle_jobs(
            self, jobs: tuple[Any, ...], timeout: float | None
        ) -> tuple[list[Pickled], float]: ...
        def _retry(self, retries: int | None) -> tuple[int, int]: ...
        def _deliver(self, job_id: int, value: Any, with_id: bool) -> Any: ...
        def _outcome(self, frame: Frame, record: JobRecord | None = None) -> Outcome[R]: ...

    async def aadd_work(
        self, *jobs: J, timeout: float | None = None, retries: int | None = None
    ) -> list[int]:
        """:meth:`add_work` that waits in the event loop when the socket is full
        (same arguments: ``retries=`` included, the pool's by default).

        Its jobs are queued before the first wait: if the call is cancelled
        (``asyncio.wait_for``, a task cancelled), they may still run, and
        their results come like any other (:meth:`pending` counts them);
        whoever waits next for results sends what is still queued.
        """
        from . import aio

        payloads, limit = self._pickle_jobs(jobs, timeout)
        count, retry_on = self._retry(retries)
        ids, target = self._client.queue_jobs(payloads, limit, count, retry_on)
        try:
            await aio.aflush(self._client, self._session.socket_waiter(), target)
        except (BossDiedError, ShutDownError):
            self._client.forget_jobs(ids)
            raise
        return ids

    @overload
    async def aget_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str]: ...
    @overload
    async def aget_result(
        self, blocking: Literal[True] = True, timeout: None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]]: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[False] = False
    ) -> R | dict[str, str] | None: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: Literal[True]
    ) -> tuple[int, R | dict[str, str]] | None: ...
    @overload
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool
    ) -> Any: ...
    async def aget_result(
        self, blocking: bool = True, timeout: float | None = None, *, with_id: bool = False
    ) -> Any:
        """:meth:`get_result` for async code: same options, same results."""
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        from . import aio

        frame = await aio.anext_result(self._client, self._session.socket_waiter(), bool(blocking), timeout)
        if frame is None:
            return None
        self._client.take_record(frame.job_id)
        return self._deliver(frame.job_id, answers.value(frame, self._client.segments), with_id)

    async def aget_outcome(self, blocking: bool = True, timeout: float | None = None) -> Outcome[Any] | None:
        """:meth:`get_outcome` for async code: same options, same outcomes."""
        if timeout is not None:
            timeout = checks.seconds("timeout", timeout)
        from . import aio

        waiter = self._session.socket_waiter()
        frame = await aio.anext_result(self._client, waiter, bool(blocking), timeout, cancelled=True)
        return None if frame is None else self._outcome(frame)

    def aoutcomes(
        self, *, until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[Outcome[R]]:
        """``async for`` over outcomes: :meth:`outcomes` for async code, same options."""
        checks.progress(progress)
        return streams.aresults(
            self._client,
            self._session.socket_waiter(),
            self._outcome,
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending + self._client.cancelled_waiting),
            cancelled=True,
        )

    @overload
    def aresults(
        self,
        *,
        with_id: Literal[False] = False,
        until_closed: bool = False,
        progress: streams.Progress = False,
    ) -> AsyncIterator[R | dict[str, str]]: ...
    @overload
    def aresults(
        self, *, with_id: Literal[True], until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[tuple[int, R | dict[str, str]]]: ...
    def aresults(
        self, *, with_id: bool = False, until_closed: bool = False, progress: streams.Progress = False
    ) -> AsyncIterator[Any]:
        """``async for`` over results: :meth:`results` for async code, same
        options (``until_closed`` waits for a producer task or thread)."""
        checks.progress(progress)
        return streams.aresults(
            self._client,
            self._session.socket_waiter(),
            lambda frame: self._deliver(frame.job_id, answers.value(frame, self._client.segments), with_id),
            bool(until_closed),
            lambda: streams.Bar(progress, self._client.pending),
        )

    async def ashut_down(self, force: bool = False) -> None:
        """:meth:`shut_down` that waits in the event loop."""
        await self._session.astop(force)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.ashut_down(force=exc_type is not None)

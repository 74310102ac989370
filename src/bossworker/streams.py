"""Input as a stream: ``map``/``amap``, results until input is closed, and
progress bars.  The pool's methods are thin wrappers around these.

``map`` feeds a possibly endless iterable with at most ``max_in_flight``
jobs *in flight*: sent and not yet yielded back (answers kept for their
turn in input order count too), so main's memory stays flat however long
the input.  Its jobs go through a :class:`~bossworker.ledger.Lane`: their
answers never reach ``get_result()``, and ``pending()`` does not count them.

What is yielded is decided by a ``deliver(frame)`` function the pool passes
in: the value ``get_result()`` would return, or an ``Outcome`` (both made by
:mod:`bossworker.answers`).  Every verdict (an answer due, the end, a dead
Boss) comes from the ledger through the client; the blocking and asyncio
generators differ only in how they wait.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:  # asyncio costs ~40 ms to import: only async users pay it
    import asyncio

    from .aio import SocketWaiter

from .client import Client
from .errors import SerializationError
from .ledger import Lane
from .payload import Pickled, dump
from .progressbar import open_bar
from .protocol import Flag, Frame

__all__ = ["DEFAULT_MAX_IN_FLIGHT", "Bar", "amap", "aresults", "map_jobs", "results"]

T = TypeVar("T")

#: ``max_in_flight`` when not given: enough to keep a few workers busy with
#: tiny jobs (the Boss pipelines up to 32 jobs per worker), small enough to
#: be nothing in memory.
DEFAULT_MAX_IN_FLIGHT = 1024

#: ``progress=``: False, True, or keyword arguments for ``tqdm`` (``file=``, ``desc=``, ...).
Progress = bool | Mapping[str, Any]
#: ``(retries, retry_on bits)`` for a stream's jobs, as ``add_work`` sends them.
Retry = tuple[int, int]


class Bar:
    """A tqdm bar, or nothing: without tqdm, one line on standard error
    (once per process) says why, and the work goes on."""

    def __init__(self, progress: Progress, total: int | None) -> None:
        self._bar: Any = None
        if progress is False:
            return
        options = dict(progress) if isinstance(progress, Mapping) else {}
        options.setdefault("total", total)
        self._bar = open_bar(**options)

    def step(self, total: int | None = None) -> None:
        """One more done; ``total`` the total as now known (it may grow)."""
        bar = self._bar
        if bar is None:
            return
        if total is not None and total != bar.total:
            bar.total = total
        bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def known_length(iterable: object) -> int | None:
    """``len(iterable)`` if it has one (a list, a range), else None."""
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


def _pickle(items: list[Any], first_index: int) -> tuple[list[Pickled], SerializationError | None]:
    """The pickles of ``items`` up to the first that fails, and its error."""
    payloads = []
    for offset, item in enumerate(items):
        try:
            payloads.append(dump(item))
        except Exception as exc:  # noqa: BLE001 - any pickling failure is this item's
            error = SerializationError(
                f"item #{first_index + offset} of map()'s input cannot be pickled: {exc}; "
                "the results of the items before it were yielded, and map() stops here"
            )
            error.__cause__ = exc
            return payloads, error
    return payloads, None


@dataclass(frozen=True)
class MapPlan(Generic[T]):
    """How one map runs, checked by the facade: what it yields of each
    answer frame (``deliver``), where the answers go (``lane``), its jobs'
    time limit and retries, the window, and its progress bar."""

    deliver: Callable[[Frame], T]
    lane: Lane
    ordered: bool
    max_in_flight: int
    limit: float
    retry: Retry
    make_bar: Callable[[], Bar]


class _Window:
    """The jobs of one map in flight, and the order to yield answers in."""

    def __init__(self, client: Client, plan: MapPlan[Any]) -> None:
        self.client = client
        self.lane = plan.lane
        self.retry = plan.retry  # (retries, retry_on): as add_work's
        self.limit = plan.limit
        self.size = size = plan.max_in_flight
        self.ordered = plan.ordered
        self.in_flight = 0  # sent and not yet yielded
        self.sent = 0  # items taken from the input so far
        self.order: deque[int] = deque()  # ordered: ids in input order, not yet yielded
        self.held: dict[int, Frame] = {}  # ordered: answers waiting for their turn
        # Refill in batches (one send each), not a job at a time, but early
        # enough that the workers never run dry.
        self.refill_at = max(1, size // 8)
        self.error: SerializationError | None = None  # an item that could not be pickled

    def room(self) -> int:
        """How many items to take now (0: wait for answers first)."""
        free = self.size - self.in_flight
        return free if free >= self.refill_at or self.in_flight == 0 else 0

    def queue(self, items: list[Any]) -> int:
        """Queue jobs for ``items``; returns the send target (0: nothing to
        send).  Stops at an item that cannot be pickled: see ``error``."""
        payloads, self.error = _pickle(items, self.sent)
        self.sent += len(payloads)
        if not payloads:
            return 0
        ids, target = self.client.queue_jobs(payloads, self.limit, *self.retry, lane=self.lane)
        self.in_flight += len(ids)
        if self.ordered:
            self.order.extend(ids)
        return target

    def ready(self, frame: Frame) -> list[Frame]:
        """The answers to yield now that ``frame`` came, in order."""
        if not self.ordered:
            self.in_flight -= 1
            return [frame]
        self.held[frame.job_id] = frame
        out = []
        while self.order and self.order[0] in self.held:
            out.append(self.held.pop(self.order.popleft()))
        self.in_flight -= len(out)
        return out

    def abandon(self, unyielded: Iterable[Frame] = ()) -> None:
        """The consumer left: drop every answer it will not take."""
        self.client.abandon_lane(self.lane)
        for frame in (*self.held.values(), *unyielded):
            if frame.flags & Flag.SEGMENT:
                self.client.segments.discard(frame.job_id)
        self.held.clear()


def map_jobs(client: Client, plan: MapPlan[T], iterable: Iterable[Any]) -> Iterator[T]:
    """The generator behind ``BossWorkerAsync.map`` and ``map_outcomes``."""
    window = _Window(client, plan)
    deliver = plan.deliver
    items = iter(iterable)
    bar = plan.make_bar()
    exhausted = False
    ready: deque[Frame] = deque()
    try:
        while True:
            room = 0 if exhausted else window.room()
            if room:
                batch = list(islice(items, room))
                exhausted = len(batch) < room
                if batch:
                    client.flush(window.queue(batch))
                    exhausted = exhausted or window.error is not None
            if window.in_flight == 0:
                if window.error is not None:
                    raise window.error
                return
            frame = client.next_lane_frame(window.lane)
            if frame is None:  # cannot happen: in_flight > 0 means an answer is due
                raise AssertionError("map(): an answer is due but none will come")
            ready.extend(window.ready(frame))
            while ready:
                value = deliver(ready.popleft())
                bar.step()
                yield value
    finally:
        window.abandon(ready)
        bar.close()


async def _pull(items: AsyncIterator[Any]) -> tuple[bool, Any]:
    try:
        return True, await anext(items)
    except StopAsyncIteration:
        return False, None


async def amap(
    client: Client, waiter: SocketWaiter, plan: MapPlan[T], iterable: Iterable[Any] | AsyncIterable[Any]
) -> AsyncIterator[T]:
    """The async generator behind ``BossWorkerAsync.amap`` and ``amap_outcomes``.

    A plain iterable is read in batches, as by ``map`` (in the event loop:
    it must not block).  An async iterable is read one item at a time while
    answers are awaited too, and each item is sent as soon as it comes, so
    a slow source never holds back results.
    """
    import asyncio

    from .aio import aflush

    window = _Window(client, plan)
    deliver = plan.deliver
    bar = plan.make_bar()
    sync_items = iter(iterable) if not isinstance(iterable, AsyncIterable) else None
    async_items = aiter(iterable) if isinstance(iterable, AsyncIterable) else None
    exhausted = False
    getter: asyncio.Task[tuple[bool, Any]] | None = None
    ready: deque[Frame] = deque()
    try:
        while True:
            if not exhausted:
                if sync_items is not None:
                    room = window.room()
                    if room:
                        batch = list(islice(sync_items, room))
                        exhausted = len(batch) < room
                        if batch:
                            await aflush(client, waiter, window.queue(batch))
                            exhausted = exhausted or window.error is not None
                elif getter is None and window.in_flight < window.size:
                    assert async_items is not None
                    getter = asyncio.ensure_future(_pull(async_items))
            client.poll()
            frame, final = client.lane_frame_or_verdict(window.lane)
            if frame is not None:
                ready.extend(window.ready(frame))
                while ready:
                    value = deliver(ready.popleft())
                    bar.step()
                    yield value
                continue
            if getter is None and window.in_flight == 0:
                if window.error is not None:
                    raise window.error
                return  # the input is exhausted (else a refill or a getter would be under way)
            # Wait for an answer, or for the next item of the input.
            waits: set[asyncio.Future[Any]] = set()
            reading = None
            if not final:
                reading = asyncio.ensure_future(waiter.wait(None))
                waits.add(reading)
            if getter is not None:
                waits.add(getter)
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if reading is not None and not reading.done():
                    reading.cancel()
            if getter is not None and getter.done():
                more, item = getter.result()
                getter = None
                if more:
                    await aflush(client, waiter, window.queue([item]))
                    exhausted = window.error is not None
                else:
                    exhausted = True
    finally:
        if getter is not None:
            getter.cancel()
        window.abandon(ready)
        bar.close()


def results(
    client: Client,
    deliver: Callable[[Frame], T],
    until_closed: bool,
    make_bar: Callable[[], Bar],
    cancelled: bool = False,
) -> Iterator[T]:
    """The generator behind ``BossWorkerAsync.results`` and ``outcomes``
    (``cancelled``: the markers of cancelled jobs count as results)."""
    done = 0
    bar = make_bar()
    try:
        while True:
            if until_closed:
                frame = client.next_result_until_closed(cancelled)
                if frame is None:
                    return
            else:
                if client.pending == 0 and not (cancelled and client.cancelled_waiting):
                    return
                frame = client.next_result(blocking=True, timeout=None, cancelled=cancelled)
                assert frame is not None  # blocking without a timeout: a result or an exception
            done += 1
            value = deliver(frame)
            bar.step(done + client.pending + (client.cancelled_waiting if cancelled else 0))
            yield value
    finally:
        bar.close()


async def aresults(
    client: Client,
    waiter: SocketWaiter,
    deliver: Callable[[Frame], T],
    until_closed: bool,
    make_bar: Callable[[], Bar],
    cancelled: bool = False,
) -> AsyncIterator[T]:
    """The async generator behind ``BossWorkerAsync.aresults`` and
    ``aoutcomes`` (``cancelled``: as in :func:`results`)."""
    from .aio import anext_result

    done = 0
    bar = make_bar()
    try:
        while True:
            if until_closed:
                frame = await _anext_until_closed(client, waiter, cancelled)
                if frame is None:
                    return
            else:
                if client.pending == 0 and not (cancelled and client.cancelled_waiting):
                    return
                frame = await anext_result(client, waiter, True, None, cancelled=cancelled)
                assert frame is not None
            done += 1
            value = deliver(frame)
            bar.step(done + client.pending + (client.cancelled_waiting if cancelled else 0))
            yield value
    finally:
        bar.close()


async def _anext_until_closed(client: Client, waiter: SocketWaiter, cancelled: bool) -> Frame | None:
    """:meth:`Client.next_result_until_closed` for asyncio: waits for the
    socket when results are due; else for add_work/close_input (from a task
    or a thread) while watching the socket too, so the Boss's death is
    noticed at once."""
    import asyncio

    loop = asyncio.get_running_loop()
    while True:
        client.poll()
        frame, step = client.until_closed_step(cancelled=cancelled)
        if step in ("frame", "end"):
            return frame
        if step == "read":
            await waiter.wait(None)
            continue
        changed: asyncio.Future[None] = loop.create_future()

        def wake(changed: asyncio.Future[None] = changed) -> None:
            loop.call_soon_threadsafe(_set, changed)

        client.watch_input(wake)
        reading = asyncio.ensure_future(waiter.wait(None))
        try:
            # Looked at again now that we watch: a change in between is not lost.
            if client.until_closed_step(take=False, cancelled=cancelled)[1] == "input":
                await asyncio.wait({changed, reading}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reading.cancel()
            client.watch_input(wake, watch=False)


def _set(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

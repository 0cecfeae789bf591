"""A first-come, first-served connection pool for asyncio.

SQLAlchemy's ``AsyncAdaptedQueuePool`` keeps idle connections in an
``asyncio.Queue``. When a connection is returned, the queue wakes its oldest
waiter, but the waiter only runs on a later turn of the event loop; meanwhile
any task that asks first takes the connection with ``get_nowait()``, and the
woken waiter, finding the queue empty again, goes to the *back* of the line.
Under a saturated pool (100 sessions on the plan's 10 + 20 connections) the
tasks that loop fastest keep barging, and an unlucky caller can wait until
``pool_timeout`` (30 s) while others are served thousands of times: a p95 that
looks like a slow database and is a queueing artefact.

``FairQueue`` hands a returned connection straight to the oldest waiter, so
checkout order is arrival order and wait time is bounded by the queue ahead of
the caller. It implements the small queue protocol QueuePool uses, and
``FairAsyncQueuePool`` is SQLAlchemy's pool with that queue in place.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only
from sqlalchemy.util.queue import Empty, Full

__all__ = ["FairAsyncQueuePool", "FairQueue"]

T = TypeVar("T")


class FairQueue(Generic[T]):
    """The queue protocol of ``sqlalchemy.util.queue``, served in arrival order.

    Invariant: items wait in the queue only while nobody waits for one; a
    returned item goes to the oldest live waiter directly.
    """

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        self.maxsize = maxsize
        self.use_lifo = use_lifo
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()
        # Deadlines of the waiters, in the same order. QueuePool waits with one
        # timeout, so they never decrease: one timer for the oldest is enough
        # (a timer per wait costs a heap push and a cancel on every checkout
        # of a saturated pool).
        self._deadlines: deque[float] = deque()
        self._expiry: asyncio.TimerHandle | None = None

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def waiting(self) -> int:
        """Callers waiting for an item (for metrics and tests)."""
        return sum(1 for w in self._waiters if not w.done())

    def _pop_waiter(self) -> asyncio.Future[T]:
        self._deadlines.popleft()
        return self._waiters.popleft()

    def peek(self) -> T | None:
        """The item the next ``get`` would return, if one is queued."""
        if not self._items:
            return None
        return self._items[-1] if self.use_lifo else self._items[0]

    def accepts(self) -> bool:
        """Whether ``put_nowait`` would succeed now (a live waiter, or room)."""
        while self._waiters and self._waiters[0].done():
            self._pop_waiter()
        return bool(self._waiters) or not self.full()

    def put_nowait(self, item: T) -> None:
        if self._hand_over(item):
            return
        if self.full():
            raise Full()
        self._items.append(item)

    def _hand_over(self, item: T) -> bool:
        while self._waiters:
            waiter = self._pop_waiter()
            if not waiter.done():  # skip waiters that timed out or were cancelled
                waiter.set_result(item)
                return True
        return False

    def put(self, item: T, block: bool = True, timeout: float | None = None) -> None:
        # Checkin never blocks: QueuePool closes an overflow connection on Full.
        self.put_nowait(item)

    def get_nowait(self) -> T:
        if not self._items:
            raise Empty()
        return self._items.pop() if self.use_lifo else self._items.popleft()

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if self._items or not block:
            return self.get_nowait()
        # Called from SQLAlchemy's pool code inside a greenlet: suspend it on
        # the event loop until an item is handed over.
        result: T = await_only(self._wait(max_wait=timeout))
        return result

    async def _wait(self, max_wait: float | None) -> T:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        deadline = loop.time() + max_wait if max_wait is not None else math.inf
        if self._deadlines and deadline < self._deadlines[-1]:
            deadline = self._deadlines[-1]  # keep them ordered (see __init__)
        self._waiters.append(waiter)
        self._deadlines.append(deadline)
        if self._expiry is None and deadline != math.inf:
            self._expiry = loop.call_at(deadline, self._expire_due)
        try:
            return await waiter
        except BaseException:
            # Handed an item in the same turn as the timeout or a cancellation
            # arrived: give it to the next caller rather than lose a connection
            # (queued even past maxsize: it is already counted by the pool).
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                item = waiter.result()
                if not self._hand_over(item):
                    self._items.append(item)
            raise

    def _expire_due(self) -> None:
        """Fail the waiters whose deadline has passed; re-arm for the next one."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._waiters:
            if self._waiters[0].done():
                self._pop_waiter()
            elif self._deadlines[0] <= now:
                self._pop_waiter().set_exception(Empty())
            else:
                if self._deadlines[0] != math.inf:
                    self._expiry = loop.call_at(self._deadlines[0], self._expire_due)
                return

    async def wait_turn(self, max_wait: float | None) -> None:
        """Wait, in arrival order, until an item is handed to this caller, and
        leave it where the next ``get`` takes it. The caller must ``get`` before
        its next await; until then nobody else runs, so nobody can take it."""
        item = await self._wait(max_wait)
        if self.use_lifo:
            self._items.append(item)
        else:
            self._items.appendleft(item)


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio QueuePool (same size, overflow, timeout, recycle
    semantics) whose checkouts are served first come, first served.

    It also tells its caller when a checkout or a checkin needs no I/O, so
    ChatStore can skip SQLAlchemy's greenlet bridge in that common case.
    """

    _queue_class = FairQueue  # type: ignore[assignment]

    def idle_ready(self) -> Any | None:
        """The record the next checkout takes, if taking it needs no I/O.

        Mirrors the reasons ``_ConnectionRecord.get_connection`` would
        (re)connect: no connection yet, past ``pool_recycle``, or invalidated
        (pool-wide or softly) since it was opened. Pre-ping is the caller's check.
        """
        record = cast(FairQueue[Any], self._pool).peek()
        if record is None or record.dbapi_connection is None:
            return None
        opened: float = record.starttime
        if self._recycle > -1 and time.time() - opened > self._recycle:
            return None
        if self._invalidate_time > opened or record._soft_invalidate_time > opened:
            return None
        return record

    def must_wait(self) -> bool:
        """Whether a checkout now would wait for a connection to be returned."""
        return (
            cast(FairQueue[Any], self._pool).peek() is None
            and self._max_overflow > -1
            and self._overflow >= self._max_overflow
        )

    async def wait_turn(self) -> None:
        """Wait (first come, first served, up to ``pool_timeout``) until a returned
        connection is reserved for this caller's next checkout.

        Raises:
            sqlalchemy.exc.TimeoutError: as QueuePool's own checkout would.
        """
        try:
            await cast(FairQueue[Any], self._pool).wait_turn(self._timeout)
        except Empty:
            raise sa_exc.TimeoutError(
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} "
                f"reached, connection timed out, timeout {self._timeout:0.2f}",
                code="3o7r",
            ) from None

    def accepts_checkin(self, fairy: Any) -> bool:
        """Whether returning ``fairy`` needs no I/O: it belongs to this pool,
        has no transaction to roll back, and will be handed over or queued
        (a full queue closes the connection, which awaits)."""
        return (
            fairy._pool is self
            and not getattr(fairy.dbapi_connection, "_started", False)
            and cast(FairQueue[Any], self._pool).accepts()
        )

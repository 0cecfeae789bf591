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
from collections import deque
from typing import Generic, TypeVar

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

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= len(self._items)

    def qsize(self) -> int:
        return len(self._items)

    def waiting(self) -> int:
        """Callers waiting for an item (for metrics and tests)."""
        return sum(1 for w in self._waiters if not w.done())

    def put_nowait(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # skip waiters that timed out or were cancelled
                waiter.set_result(item)
                return
        if self.full():
            raise Full()
        self._items.append(item)

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
        self._waiters.append(waiter)
        expiry = loop.call_later(max_wait, _expire, waiter) if max_wait is not None else None
        try:
            return await waiter
        except BaseException:
            # Handed an item in the same turn as the timeout or a cancellation
            # arrived: give it to the next caller rather than lose a connection.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.put_nowait(waiter.result())
            raise
        finally:
            if expiry is not None:
                expiry.cancel()


def _expire(waiter: asyncio.Future[T]) -> None:
    if not waiter.done():
        waiter.set_exception(Empty())


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio QueuePool (same size, overflow, timeout, recycle
    semantics) whose checkouts are served first come, first served."""

    _queue_class = FairQueue  # type: ignore[assignment]

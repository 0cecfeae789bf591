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

QueuePool also closes an overflow connection the moment it is returned while
``pool_size`` others are idle. Under a bursty load near capacity (paced users
with random arrivals) that closes connections a lull left idle and reopens them
in the next burst: each reconnect costs milliseconds of client and server CPU
and a few round trips, which lengthens the burst's queue, which opens more
overflow. 100 paced sessions at 4600 ops/s on this project's CI machine made
114-160 connects per 3.5 s round, p50 14-15 ms (at 3800 ops/s, rounds flipped
between 1-2 connects, p50 0.5 ms, and 180, p50 17 ms). With
``overflow_idle_timeout`` the pool keeps returned overflow connections idle and
closes them as they come back only once it has held ``pool_size`` idle
connections or more, without a break, for that many seconds (nobody needed the
surplus; as HikariCP's idle timeout): the same load then made no connects, p50
0.5 ms. The limit stays ``pool_size + max_overflow``, and a steady load ends
with the connections QueuePool would keep.

Private names used (SQLAlchemy 2.0's pool; only this module touches them, and
tests/unit/test_private_internals.py checks each on the installed version):

* ``QueuePool._queue_class``, ``QueuePool._pool``: the queue class QueuePool
  builds and its instance (replaced by :class:`FairQueue`);
* ``QueuePool._max_overflow``, ``._overflow``, ``._timeout``: the pool's limits
  and count (:meth:`FairAsyncQueuePool.must_wait`, :func:`max_overflow`);
* ``Pool._recycle``, ``._invalidate_time``, ``._pre_ping``,
  ``._should_log_debug()``, ``._return_conn()``: what a checkout or checkin
  would check or do (:meth:`FairAsyncQueuePool.lend`, ``return_record``);
* ``_ConnectionRecord._soft_invalidate_time`` (and the public ``starttime``,
  ``dbapi_connection``, ``driver_connection``): whether a record is ready.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from typing import Any, Generic, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import AsyncAdaptedQueuePool, Pool, QueuePool
from sqlalchemy.util import await_only
from sqlalchemy.util.queue import Empty, Full

__all__ = ["FairAsyncQueuePool", "FairQueue", "capacity", "max_overflow"]

T = TypeVar("T")


def max_overflow(pool: QueuePool) -> int:
    """``pool``'s max_overflow (0 for a negative one, which means unlimited)."""
    return max(0, pool._max_overflow)


def capacity(pool: Pool) -> int:
    """How many connections ``pool`` may hold at once (1 for a pool without a limit)."""
    return pool.size() + max_overflow(pool) if isinstance(pool, QueuePool) else 1


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
        #: Seconds the queue must have held ``maxsize`` items or more, without a
        #: break, before :meth:`full` refuses a returned one; until then it takes
        #: them past ``maxsize``. 0: refused at ``maxsize`` (QueuePool's rule).
        self.keep_surplus_for = 0.0
        # time.monotonic() since when the queue has held maxsize items or more;
        # None while it holds fewer (callers needed more than the surplus).
        self._full_since: float | None = None

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        """Whether a returned item must be refused (QueuePool then closes that
        overflow connection): ``maxsize`` items are queued, and have been for
        ``keep_surplus_for`` seconds."""
        if not 0 < self.maxsize <= len(self._items):
            return False
        keep = self.keep_surplus_for
        if keep <= 0:
            return True
        since = self._full_since
        return since is not None and time.monotonic() - since >= keep

    def _queued(self) -> None:
        # After every addition to _items.
        if self._full_since is None and len(self._items) >= self.maxsize > 0:
            self._full_since = time.monotonic()

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
        items = self._items
        items.append(item)
        # _queued() inline: this is every checkin's path, a call per operation.
        if self._full_since is None and len(items) >= self.maxsize > 0:
            self._full_since = time.monotonic()

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
        items = self._items
        if not items:
            raise Empty()
        item = items.pop() if self.use_lifo else items.popleft()
        if len(items) < self.maxsize:
            self._full_since = None
        return item

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        if self._items or not block:
            return self.get_nowait()
        # Called from SQLAlchemy's pool code inside a greenlet: suspend it on
        # the event loop until an item is handed over.
        result: T = await_only(self._wait(max_wait=timeout))
        return result

    def join(self, max_wait: float | None) -> asyncio.Future[T]:
        """Join the line: the future gets the item handed to this caller, or
        ``Empty`` after ``max_wait`` seconds. A caller that stops awaiting it
        must call :meth:`leave`."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[T] = loop.create_future()
        deadline = loop.time() + max_wait if max_wait is not None else math.inf
        if self._deadlines and deadline < self._deadlines[-1]:
            deadline = self._deadlines[-1]  # keep them ordered (see __init__)
        self._waiters.append(waiter)
        self._deadlines.append(deadline)
        if self._expiry is None and deadline != math.inf:
            self._expiry = loop.call_at(deadline, self._expire_due)
        return waiter

    def leave(self, waiter: asyncio.Future[T]) -> None:
        """The caller of :meth:`join` stopped waiting (timeout, cancellation).

        Handed an item in the same turn as the timeout or the cancellation
        arrived: give it to the next caller rather than lose a connection
        (queued even past maxsize: it is already counted by the pool).
        """
        if not waiter.done():
            # Left without being cancelled (its task was closed, not cancelled):
            # make sure no item is handed to it later.
            waiter.cancel()
        elif not waiter.cancelled() and waiter.exception() is None:
            item = waiter.result()
            if not self._hand_over(item):
                self._items.append(item)
                self._queued()

    def put_front(self, item: T) -> None:
        """Queue ``item`` where the next ``get`` takes it. Only for an item just
        handed to this caller, who takes it back before its next await."""
        if self.use_lifo:
            self._items.append(item)
        else:
            self._items.appendleft(item)
        self._queued()

    async def _wait(self, max_wait: float | None) -> T:
        waiter = self.join(max_wait)
        try:
            return await waiter
        except BaseException:
            self.leave(waiter)
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


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """SQLAlchemy's asyncio QueuePool (same size, overflow, timeout, recycle
    semantics) whose checkouts are served first come, first served, and which
    may keep returned overflow connections idle for ``overflow_idle_timeout``.

    It also lends a ready idle connection's record without a fairy and takes
    it back when that needs no I/O, and lets a caller wait for one in plain
    asyncio, so ChatStore skips SQLAlchemy's greenlet bridge and fairy in the
    common case.
    """

    _queue_class = FairQueue  # type: ignore[assignment]
    _pool: FairQueue[Any]  # type: ignore[assignment]  # built from _queue_class

    # A positional-or-keyword parameter: create_engine() passes a pool only the
    # arguments it finds among the pool class's positional parameter names.
    def __init__(self, creator: Any, overflow_idle_timeout: float = 0.0, **kw: Any) -> None:
        """SQLAlchemy's arguments, and ``overflow_idle_timeout``: seconds the pool
        must have held ``pool_size`` idle connections or more, without a break,
        before it closes returned overflow connections (0: at once, as
        QueuePool does)."""
        super().__init__(creator, **kw)
        self._keep_overflow_idle(overflow_idle_timeout)

    def _keep_overflow_idle(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"overflow_idle_timeout must be >= 0, got {seconds}")
        self._overflow_idle_timeout = seconds
        self._pool.keep_surplus_for = seconds

    @property
    def overflow_idle_timeout(self) -> float:
        return self._overflow_idle_timeout

    def recreate(self) -> FairAsyncQueuePool:
        # QueuePool.recreate() (engine.dispose()) passes only its own arguments.
        pool = super().recreate()
        assert isinstance(pool, FairAsyncQueuePool)
        pool._keep_overflow_idle(self._overflow_idle_timeout)
        return pool

    def keeps_returned(self) -> bool:
        """Whether a connection returned now is kept (handed to a waiter or
        queued idle) rather than closed as surplus overflow."""
        return self._pool.accepts()

    # -- lending without a fairy --------------------------------------------------
    #
    # pool.connect() wraps the record in a _ConnectionFairy: a new object, a
    # weakref with a finalizer, the checkout events, and on close the reset
    # (rollback) and checkin events. ChatStore's statement needs none of that
    # when nobody listens to those events: it runs outside any transaction, on a
    # connection it returns itself in a finally. Lending the record directly
    # saves about 40 Python calls per operation; the pool's counts (checked
    # out, idle, overflow) stay exact because they are read off the queue.

    def _lends_directly(self) -> bool:
        """No listener or option would miss what a fairy does."""
        dispatch = self.dispatch
        return not (
            dispatch.checkout
            or dispatch.checkin
            or dispatch.reset
            or self._pre_ping
            or self._should_log_debug()
        )

    def _ready(self, record: Any) -> bool:
        """Whether ``record`` can run a statement now, with no I/O first.

        Mirrors the reasons ``_ConnectionRecord.get_connection`` would
        (re)connect: no connection, past ``pool_recycle``, or invalidated (pool
        wide or softly) since it was opened; and asyncpg must not have seen its
        socket close (a server restart, pg_terminate_backend, an idle timeout).
        """
        if record.dbapi_connection is None:
            return False
        opened: float = record.starttime
        if self._recycle > -1 and time.time() - opened > self._recycle:
            return False
        if self._invalidate_time > opened or record._soft_invalidate_time > opened:
            return False
        driver = record.driver_connection
        return driver is not None and not driver.is_closed()

    def lend(self) -> Any | None:
        """The next idle connection's record, taken off the queue, if it is
        ready and may be lent directly; None: check out with ``connect()``."""
        record = self._pool.peek()
        if record is None or not self._lends_directly() or not self._ready(record):
            return None
        return self._pool.get_nowait()

    def lend_handed(self, record: Any) -> Any | None:
        """``record``, just handed to this caller by :meth:`join_line`, if it is
        ready and may be lent directly. Otherwise it is queued where the
        caller's ``connect()``, before its next await, takes it."""
        if self._lends_directly() and self._ready(record):
            return record
        self._pool.put_front(record)
        return None

    def give_back(self, record: Any) -> bool:
        """Return a lent record if that needs no I/O (it is handed to the oldest
        waiter, or queued). False: the queue is full, so this overflow
        connection must be closed: :meth:`return_record` in a greenlet."""
        queue = self._pool
        if not queue.accepts():
            return False
        queue.put_nowait(record)
        return True

    def return_record(self, record: Any) -> None:
        """Return a lent record as a checkin would (may close it: run in a greenlet)."""
        self._return_conn(record)

    # -- waiting in plain asyncio -------------------------------------------------

    def must_wait(self) -> bool:
        """Whether a checkout now would wait for a connection to be returned."""
        return (
            self._pool.peek() is None
            and self._max_overflow > -1
            and self._overflow >= self._max_overflow
        )

    def join_line(self) -> asyncio.Future[Any]:
        """Wait, first come first served, for a returned connection's record.

        The future fails with ``Empty`` after ``pool_timeout`` (see
        :meth:`timeout_error`); a caller that stops awaiting it must call
        :meth:`leave_line`.
        """
        return self._pool.join(self._timeout)

    def leave_line(self, waiter: asyncio.Future[Any]) -> None:
        """Undo :meth:`join_line` for a caller that gave up (passes on a record
        handed to it meanwhile)."""
        self._pool.leave(waiter)

    def timeout_error(self) -> sa_exc.TimeoutError:
        """The error QueuePool's own checkout raises after ``pool_timeout``."""
        return sa_exc.TimeoutError(
            f"QueuePool limit of size {self.size()} overflow {self._max_overflow} "
            f"reached, connection timed out, timeout {self._timeout:0.2f}",
            code="3o7r",
        )

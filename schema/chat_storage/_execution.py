"""Running one statement on a pooled connection: ChatStore's only way to the database.

One way in, :meth:`Connections.fetch` (a plan's statement, its arguments), and
one way out: the rows, or the driver's or the pool's exception, untranslated
(ChatStore translates). Lending and returning the connection, the greenlet
fallback, pooler transactions and the wait for a connection all live here,
and the wait is observed in one place, :meth:`Connections._waited`.

Why the statement runs on the driver connection rather than through
``AsyncConnection.execute``: SQLAlchemy keeps the pool, the models and the SQL
(each statement is Core, compiled once), but its asyncio execution path costs
several times the driver's CPU per call (docs/design.md). A single statement
needs no BEGIN/COMMIT: PostgreSQL runs it atomically in its own implicit
transaction, so the round trip is the only one.

SQLAlchemy's pool is synchronous code that may need to await (a new
connection, a recycle, closing an overflow connection); SQLAlchemy bridges
that with a greenlet (``await_only()``), and wraps each checkout in a fairy
that fires the checkout, reset and checkin events. The common case needs none
of it: a ready idle connection is lent straight off the pool's queue (or, when
the pool is saturated, handed over to this caller while it waits in plain
asyncio), the statement is awaited on the driver, and the connection goes back
onto the queue or to the next waiter. Everything else (connecting, recycling,
closing overflow, an event listener or pre-ping on the pool) runs checkout,
statement and checkin inside one greenlet, through ``pool.connect()``.

Deadlines and cancellation: every statement is watched for the operation's
deadline (:class:`_Watch`: one timer for all statements in flight, no task
and no timer per operation; when it fires the statement's task is cancelled,
and asyncpg sends the server a cancel request); a wait for a connection ends
at the deadline too, and the rarer greenlet path (connecting, recycling) runs
under ``asyncio.timeout``.
When a statement is cut short (deadline, or the caller's task cancelled), the
connection's pool slot is freed only after the server has ended the statement:
:func:`_settle` waits for asyncpg's cancel request to be acknowledged, ends the
session, and only then returns the slot. A cancelled caller resumes after that
(one round trip); a deadline's caller gets OperationTimeout at once, the
settling going on beside it (a silent peer would take SETTLE_TIMEOUT). A
statement never outlives its caller on the server, and the server never holds
more sessions for this pool than its size plus overflow.

Private names used: none. The pool's internals are behind
:class:`~chat_storage.pool.FairAsyncQueuePool`'s methods (pool.py lists them);
records and fairies are used through SQLAlchemy's public
``ConnectionPoolEntry`` and ``PoolProxiedConnection`` attributes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, Final

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.queue import Empty

from .errors import OperationTimeout
from .metrics import HotSeries
from .pool import FairAsyncQueuePool, capacity
from .queries.base import Plan, Row

__all__ = ["Connections"]

#: Seconds a cut-short statement's connection may take to confirm the server
#: cancelled it and to close; past that it is dropped (a silent peer never will).
SETTLE_TIMEOUT: Final = 5.0


async def _send_plain(driver: Any, sql: str, args: list[Any]) -> list[Any]:
    rows: list[Any] = await driver.fetch(sql, *args)
    return rows


async def _send_in_transaction(driver: Any, sql: str, args: list[Any]) -> list[Any]:
    # PgBouncer in transaction mode (Neon's -pooler endpoint) may hand each
    # transaction to a different server connection; asyncpg's prepare and
    # execute are separate exchanges, so they must share one explicit
    # transaction (otherwise four round trips instead of one, or a prepared
    # statement missing on the server connection that executes it).
    transaction = driver.transaction()
    await transaction.start()
    try:
        rows: list[Any] = await driver.fetch(sql, *args)
    except BaseException as exc:
        # Only after the server's own error: cut short mid-statement, a
        # ROLLBACK would wait for the cancel (a silent peer: forever), and
        # the connection is discarded anyway, which rolls back.
        if getattr(exc, "sqlstate", None) is not None and not driver.is_closed():
            await transaction.rollback()
        raise
    await transaction.commit()
    return rows


def _broken(driver: Any, exc: BaseException) -> bool:
    # Cancelled, timed out or disconnected mid-statement: the connection's
    # protocol state is unknown, so it must not go back to the pool.
    return getattr(exc, "sqlstate", None) is None or driver.is_closed()


def _cut_short(driver: Any, exc: BaseException) -> bool:
    """Whether the statement may still run on the server: the caller's task was
    cancelled or the deadline passed while it was in flight, on a live connection."""
    return isinstance(exc, asyncio.CancelledError | TimeoutError) and not driver.is_closed()


def _timed_out(timeout: float) -> OperationTimeout:
    return OperationTimeout(f"the operation did not finish within its deadline ({timeout:g} s)")


# _Watch entries: [deadline, task, state].
_RUNNING: Final = 0
_DONE: Final = 1
_EXPIRED: Final = 2


class _Watch:
    """The deadlines of the statements in flight, in deadline order, under one timer.

    A timer per statement (asyncpg's ``timeout=``, ``asyncio.timeout``) costs a
    heap push, a cancel and clock reads on every operation, and fills the loop's
    heap with cancelled timers (each deadline is seconds away, each statement
    milliseconds): measurably more client CPU per operation. Here a statement
    appends a small list and sets a flag; the one timer is armed for the oldest
    statement in flight, and when a deadline passes that statement's task is
    cancelled (asyncpg then sends the server a cancel request) and marked
    expired, which the task turns into OperationTimeout.
    """

    __slots__ = ("_entries", "_loop", "_timer")

    def __init__(self) -> None:
        self._entries: deque[list[Any]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def enter(self, seconds: float) -> list[Any] | None:
        """Watch the current task's statement for ``seconds``; None when its deadline
        is earlier than one already watched (the caller then times it itself)."""
        loop = asyncio.get_running_loop()
        entries = self._entries
        if loop is not self._loop:  # the engine moved to another loop (see ChatStore._run)
            entries = self._entries = deque()
            self._loop, self._timer = loop, None
        deadline = loop.time() + seconds
        while entries and entries[0][2]:
            entries.popleft()
        if entries and deadline < entries[-1][0]:
            return None
        entry = [deadline, asyncio.current_task(loop), _RUNNING]
        entries.append(entry)
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire_due)
        return entry

    def _expire_due(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        entries = self._entries
        now = loop.time()
        while entries:
            entry = entries[0]
            if entry[2]:
                entries.popleft()
            elif entry[0] <= now:
                entries.popleft()
                entry[2] = _EXPIRED
                entry[1].cancel()
            else:
                self._timer = loop.call_at(entry[0], self._expire_due)
                return


def _expire(waiter: asyncio.Future[Any], timeout: float) -> None:
    # The deadline passed while the caller waited for a connection.
    if not waiter.done():
        waiter.set_exception(_timed_out(timeout))


class Connections:
    """ChatStore's connections from ``engine``'s pool, one statement at a time."""

    __slots__ = (
        "_checkout_attempts",
        "_engine",
        "_pooler",
        "_settling",
        "_watch",
        "hot",
        "timeout",
    )

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pooler: bool,
        hot: HotSeries | None,
        timeout: float | None = None,
    ) -> None:
        """Lend from ``engine``'s current pool (engine.dispose() replaces it).

        Args:
            engine: the store's engine.
            pooler: run each statement in an explicit transaction (PgBouncer-safe).
            hot: the metrics' series for the calling thread; None records nothing.
            timeout: seconds each operation may take (pool wait, connect,
                statement) unless the call says otherwise; None: no deadline.
        """
        self._engine = engine
        self._pooler = pooler
        #: The series the wait for a connection is observed into; ChatStore._run
        #: replaces it when the event loop runs in another thread.
        self.hot = hot
        self.timeout = timeout
        self._checkout_attempts = capacity(engine.sync_engine.pool) + 1
        # Connections whose cut-short statement is being cancelled on the server
        # (referenced here so the tasks are not collected mid-way).
        self._settling: set[asyncio.Task[None]] = set()
        self._watch = _Watch()

    async def fetch(
        self,
        plan: Plan[Any],
        retry: bool = True,
        within: float | None = None,
        /,
    ) -> list[Row]:
        """The rows of ``plan``'s statement, run on a pooled connection.

        ``retry``: once more on a fresh connection when asyncpg refused to start
        the statement (set False by that second attempt). ``within``: this
        call's deadline in seconds; None: :attr:`timeout`.

        Raises:
            OperationTimeout: the deadline passed (waiting, connecting or in the statement).
            Exception: otherwise the driver's or the pool's, untranslated.
        """
        # One function on purpose: every await level is re-entered each time the
        # task resumes (once per response, twice when the pool is saturated).
        sql, names = plan.statement.compile()
        params = plan.params
        args = [params[name] for name in names]
        pool = self._engine.sync_engine.pool
        timeout = self.timeout if within is None else within
        try:
            if not isinstance(pool, FairAsyncQueuePool):
                return await self._via_greenlet(pool, sql, args, time.perf_counter(), timeout)
            # Timed only when the caller queues: a lend without waiting is a wait
            # of 0, and the statement then gets the whole deadline.
            started: float | None = None
            remaining = timeout
            if pool.must_wait():
                started = time.perf_counter()
                waiter = pool.join_line()
                expiry = (
                    None
                    if timeout is None
                    else asyncio.get_running_loop().call_later(timeout, _expire, waiter, timeout)
                )
                try:
                    record = await waiter
                except BaseException as exc:
                    pool_timeout = self._left_line(pool, waiter, started, exc)
                    if pool_timeout is not None:
                        raise pool_timeout from None
                    raise
                finally:
                    if expiry is not None:
                        expiry.cancel()
                record = pool.lend_handed(record)
                if timeout is not None:
                    remaining = timeout - (time.perf_counter() - started)
                    if remaining <= 0:  # handed over in the deadline's own turn
                        if record is not None and not pool.give_back(record):
                            await greenlet_spawn(pool.return_record, record)
                        raise _timed_out(timeout)
            else:
                record = pool.lend()
            if record is None:
                return await self._via_greenlet(
                    pool, sql, args, started or time.perf_counter(), remaining
                )
            hot = self.hot
            if hot is not None:
                if started is not None or hot.zero_waits is None:
                    self._waited(started)
                else:
                    # A wait of 0 counted without reading the clock or calling:
                    # most operations never wait, and this runs on every one.
                    hot.zero_waits[0] += 1
            driver = record.driver_connection
            watched = None if remaining is None else self._watch.enter(remaining)
            try:
                if watched is not None or remaining is None:
                    if self._pooler:
                        rows = await _send_in_transaction(driver, sql, args)
                    else:
                        rows = await driver.fetch(sql, *args)
                else:
                    # A deadline earlier than one watched (a shorter timeout=,
                    # or after a wait): timed on its own.
                    async with asyncio.timeout(remaining):
                        send = _send_in_transaction if self._pooler else _send_plain
                        rows = await send(driver, sql, args)
            except BaseException as exc:
                expired = watched is not None and watched[2] == _EXPIRED
                if expired:
                    # The watch's cancellation, not the caller's.
                    task = asyncio.current_task()
                    assert task is not None
                    task.uncancel()
                elif watched is not None:
                    watched[2] = _DONE
                if _cut_short(driver, exc):
                    settling = self._settle_later(_settle_record(pool, record, driver, exc))
                    if isinstance(exc, asyncio.CancelledError) and not expired:
                        # A cancelled caller resumes once the server has ended
                        # the statement (a deadline's caller does not wait).
                        await _wait_settled(settling)
                else:
                    await greenlet_spawn(_return_after_error, pool, record, driver, exc)
                if timeout is not None and (expired or isinstance(exc, TimeoutError)):
                    raise _timed_out(timeout) from exc
                raise
            if watched is not None:
                watched[2] = _DONE
            if not pool.give_back(record):
                await greenlet_spawn(pool.return_record, record)
            return rows
        except asyncpg.InternalClientError as exc:
            # asyncpg refused to start the statement: the server had just
            # terminated this idle connection and its goodbye was read but the
            # socket not yet closed. Nothing was sent, so a fresh connection is
            # safe for every operation; the refused one has been discarded.
            # Not its subclasses (ProtocolError, OutdatedSchemaCacheError): they
            # can come after the statement was sent, and an append must not run twice.
            if not retry or type(exc) is not asyncpg.InternalClientError:
                raise
            return await self.fetch(plan, False, timeout)

    async def _via_greenlet(
        self, pool: Pool, sql: str, args: list[Any], started: float, within: float | None
    ) -> list[Any]:
        """:meth:`_in_greenlet` within the deadline (off the common path: a new
        connection, a recycle, a pool that is not the fair one)."""
        if within is None:
            return await greenlet_spawn(self._in_greenlet, pool, sql, args, started, None)
        deadline = asyncio.timeout(within)
        try:
            async with deadline:
                return await greenlet_spawn(self._in_greenlet, pool, sql, args, started, deadline)
        except TimeoutError as exc:
            if not deadline.expired():
                raise  # asyncpg's connect_timeout: the database is unreachable
            raise _timed_out(within) from exc

    def _settle_later(self, settling: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``settling`` (a :func:`_settle` coroutine) beside the caller."""
        task = asyncio.get_running_loop().create_task(settling)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return task

    def _left_line(
        self, pool: FairAsyncQueuePool, waiter: Any, started: float, exc: BaseException
    ) -> Exception | None:
        """Clean up after a wait for a connection ended without one; the pool's
        TimeoutError to raise instead when the wait timed out.

        Judged by the exception raised here, not by the waiter: a cancellation
        that arrives after the deadline expired the waiter is still a cancellation.
        """
        pool.leave_line(waiter)
        if not isinstance(exc, Empty):
            return None
        if self.hot is not None:
            self._waited(started, timed_out=True)
        return pool.timeout_error()

    def _in_greenlet(
        self,
        pool: Pool,
        sql: str,
        args: list[Any],
        started: float,
        deadline: asyncio.Timeout | None,
    ) -> list[Any]:
        """Checkout, statement and checkin through ``pool.connect()``, in one greenlet.

        ``pool`` is the one the caller may have waited in: after engine.dispose()
        the engine has a new one, and a record handed over in the old one must be
        taken from there. ``deadline``: the operation's, which cancels this.
        """
        fairy, driver = self._checkout(pool, started)
        try:
            send = _send_in_transaction if self._pooler else _send_plain
            # The deadline is _via_greenlet's (asyncio.timeout cancels this).
            rows: list[Any] = await_only(send(driver, sql, args))
            return rows
        except BaseException as exc:
            if _cut_short(driver, exc):
                # The slot (the fairy) is freed by _settle, once the server
                # has ended the statement.
                settling = self._settle_later(_settle_fairy(fairy, driver))
                fairy = None
                if deadline is None or not deadline.expired():
                    await_only(_wait_settled(settling))  # a cancelled caller
            elif _broken(driver, exc):
                driver.terminate()  # synchronous and immediate
                fairy.invalidate()
            raise
        finally:
            if fairy is not None:
                fairy.close()

    def _checkout(self, pool: Pool, started: float) -> tuple[Any, Any]:
        """A pooled connection (fairy) and its asyncpg connection, skipping dead ones."""
        timed_out = False
        try:
            for _ in range(self._checkout_attempts):
                fairy = pool.connect()
                driver = fairy.driver_connection
                if driver is not None and not driver.is_closed():
                    return fairy, driver
                # The server closed this idle connection (restart,
                # pg_terminate_backend, an idle timeout) and asyncpg saw its socket
                # close: swap it for another instead of failing the caller. Unlike
                # pre-ping this costs no round trip.
                fairy.invalidate()
                fairy.close()
            raise sa_exc.DisconnectionError("every pooled connection was closed by the server")
        except sa_exc.TimeoutError:
            timed_out = True
            raise
        finally:
            if self.hot is not None:
                self._waited(started, timed_out=timed_out)

    def _waited(self, started: float | None, *, timed_out: bool = False) -> None:
        """Observe the wait for a connection that began at ``started`` (None: no wait).

        The one place the pool wait is timed (``fetch`` counts a lend without
        waiting inline). Only called with ``self.hot`` set.
        """
        hot = self.hot
        assert hot is not None
        if timed_out:
            hot.metrics.pool_timeouts.inc()
        hot.pool_wait.observe(0.0 if started is None else time.perf_counter() - started)


async def _settle(driver: Any) -> None:
    """End the session of a cut-short statement's connection, after the server
    has ended the statement.

    asyncpg sent a cancel request when the statement was cut short; its
    ``close()`` waits for the server to acknowledge it (the statement's own
    response), then ends the session. ``terminate()`` alone would drop that
    cancel request unsent, and the server would run the statement to its end
    (an append waiting on a lock commits after its caller was told it was
    cancelled) in a session the pool no longer counts. A silent peer never
    answers: past SETTLE_TIMEOUT the connection is dropped (the server's TCP
    keepalives end its side).
    """
    with contextlib.suppress(Exception):
        await driver.close(timeout=SETTLE_TIMEOUT)
    driver.terminate()  # no-op once closed; drops it after a failed close


async def _wait_settled(settling: asyncio.Task[None]) -> None:
    # Shielded: cancelled again meanwhile, the caller leaves and the settling
    # goes on (it still holds the slot until the server has ended the statement).
    with contextlib.suppress(Exception):
        await asyncio.shield(settling)


async def _settle_record(
    pool: FairAsyncQueuePool, record: Any, driver: Any, exc: BaseException
) -> None:
    try:
        await _settle(driver)
    finally:
        # Only now is the slot free: the pool may open a new connection for it.
        await greenlet_spawn(_return_after_error, pool, record, driver, exc)


async def _settle_fairy(fairy: Any, driver: Any) -> None:
    try:
        await _settle(driver)
    finally:
        await greenlet_spawn(_invalidate, fairy)


def _invalidate(fairy: Any) -> None:
    fairy.invalidate()
    fairy.close()


def _return_after_error(
    pool: FairAsyncQueuePool, record: Any, driver: Any, exc: BaseException
) -> None:
    # Runs in a greenlet: returning (or invalidating) may close a connection.
    try:
        if _broken(driver, exc):
            driver.terminate()
            record.invalidate(e=exc)  # the next checkout reconnects
    finally:
        pool.return_record(record)

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

Private names used: none. The pool's internals are behind
:class:`~chat_storage.pool.FairAsyncQueuePool`'s methods (pool.py lists them);
records and fairies are used through SQLAlchemy's public
``ConnectionPoolEntry`` and ``PoolProxiedConnection`` attributes.
"""

from __future__ import annotations

import time
from typing import Any

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.queue import Empty

from .metrics import HotSeries
from .pool import FairAsyncQueuePool, capacity
from .queries.base import Plan, Row

__all__ = ["Connections"]


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
    except BaseException:
        if not driver.is_closed():
            await transaction.rollback()
        raise
    await transaction.commit()
    return rows


def _broken(driver: Any, exc: BaseException) -> bool:
    # Cancelled, timed out or disconnected mid-statement: the connection's
    # protocol state is unknown, so it must not go back to the pool.
    return getattr(exc, "sqlstate", None) is None or driver.is_closed()


class Connections:
    """ChatStore's connections from ``engine``'s pool, one statement at a time."""

    __slots__ = ("_checkout_attempts", "_engine", "_pooler", "hot")

    def __init__(self, engine: AsyncEngine, *, pooler: bool, hot: HotSeries | None) -> None:
        """Lend from ``engine``'s current pool (engine.dispose() replaces it).

        Args:
            engine: the store's engine.
            pooler: run each statement in an explicit transaction (PgBouncer-safe).
            hot: the metrics' series for the calling thread; None records nothing.
        """
        self._engine = engine
        self._pooler = pooler
        #: The series the wait for a connection is observed into; ChatStore._run
        #: replaces it when the event loop runs in another thread.
        self.hot = hot
        self._checkout_attempts = capacity(engine.sync_engine.pool) + 1

    async def fetch(self, plan: Plan[Any], retry: bool = True, /) -> list[Row]:
        """The rows of ``plan``'s statement, run on a pooled connection.

        ``retry``: once more on a fresh connection when asyncpg refused to start
        the statement (set False by that second attempt).

        Raises:
            Exception: the driver's or the pool's, untranslated.
        """
        # One function on purpose: every await level is re-entered each time the
        # task resumes (once per response, twice when the pool is saturated).
        sql, names = plan.statement.compile()
        params = plan.params
        args = [params[name] for name in names]
        pool = self._engine.sync_engine.pool
        try:
            if not isinstance(pool, FairAsyncQueuePool):
                return await greenlet_spawn(self._in_greenlet, pool, sql, args, time.perf_counter())
            # Timed only when the caller queues: a lend without waiting is a wait of 0.
            started: float | None = None
            if pool.must_wait():
                started = time.perf_counter()
                waiter = pool.join_line()
                try:
                    record = await waiter
                except BaseException as exc:
                    timeout = self._left_line(pool, waiter, started, exc)
                    if timeout is not None:
                        raise timeout from None
                    raise
                record = pool.lend_handed(record)
            else:
                record = pool.lend()
            if record is None:
                return await greenlet_spawn(
                    self._in_greenlet, pool, sql, args, started or time.perf_counter()
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
            try:
                if self._pooler:
                    rows = await _send_in_transaction(driver, sql, args)
                else:
                    rows = await driver.fetch(sql, *args)
            except BaseException as exc:
                await greenlet_spawn(_return_after_error, pool, record, driver, exc)
                raise
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
            return await self.fetch(plan, False)

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

    def _in_greenlet(self, pool: Pool, sql: str, args: list[Any], started: float) -> list[Any]:
        """Checkout, statement and checkin through ``pool.connect()``, in one greenlet.

        ``pool`` is the one the caller may have waited in: after engine.dispose()
        the engine has a new one, and a record handed over in the old one must be
        taken from there.
        """
        fairy, driver = self._checkout(pool, started)
        try:
            send = _send_in_transaction if self._pooler else _send_plain
            rows: list[Any] = await_only(send(driver, sql, args))
            return rows
        except BaseException as exc:
            if _broken(driver, exc):
                driver.terminate()  # synchronous and immediate
                fairy.invalidate()
            raise
        finally:
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

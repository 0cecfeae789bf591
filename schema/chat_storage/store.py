"""ChatStore: the chat operations on an engine, one round trip each.

Where a message travels: ``ChatStore.add_message`` -> ``plan_add_message``
(validation, parameters; queries/messages.py) -> ``ChatStore._run`` (span,
metrics, error translation, a pooled connection) -> one prepared statement on
the asyncpg connection -> ``Plan.finish`` (rows to a Message).

Why the statement runs on the driver connection rather than through
``AsyncConnection.execute``: SQLAlchemy keeps the pool, the models and the SQL
(each statement is Core, compiled once), but its asyncio execution path costs
several times the driver's CPU per call (see shared/ANCHORS.md and the
README's benchmark). A single statement needs no BEGIN/COMMIT: PostgreSQL runs
it atomically in its own implicit transaction, so the round trip is the only one.

In pooler mode (PgBouncer transaction mode, Neon's ``-pooler`` endpoint) the
same statement runs inside one explicit transaction with no statement cache,
because asyncpg's separate prepare and execute steps could otherwise land on
two different server connections (four round trips instead of one).
"""

from __future__ import annotations

import math
import time
import uuid
from datetime import timedelta
from threading import get_ident
from typing import Any, TypeVar

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import Pool, QueuePool
from sqlalchemy.util import await_only, greenlet_spawn
from sqlalchemy.util.queue import Empty

from .cursor import Page
from .engine import engine_pooler_mode
from .errors import ChatStoreError, IdempotencyConflict, InvalidInput, error_for
from .metrics import HotSeries, StoreMetrics, observe_pool
from .models import Conversation, ConversationStatus, Message, MessageRole
from .pool import FairAsyncQueuePool
from .queries.base import Plan, Statement
from .queries.conversations import (
    plan_archive_inactive_batch,
    plan_create_conversation,
    plan_delete_conversation,
    plan_get_conversation,
    plan_list_conversations,
    plan_set_status,
)
from .queries.messages import RetryAppend, plan_add_message, plan_get_history
from .tracing import get_tracer, under_unsampled_span

__all__ = ["ChatStore"]

R = TypeVar("R")

# The global providers of the OpenTelemetry API before an SDK is installed.
_NO_OP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


class ChatStore:
    """Conversations and messages of many users, on one AsyncEngine.

    Usage::

        engine = create_engine()  # DATABASE_URL, the plan's pool
        store = ChatStore(engine, metrics=StoreMetrics())
        conversation = await store.create_conversation("user-1")
        await store.add_message("user-1", conversation.id, "user", "Hello!")
        page = await store.get_history("user-1", conversation.id, limit=20)

    Every method takes the owner's user id; another user's conversation is
    indistinguishable from a missing one. Every method raises ChatStoreError
    subclasses only (see errors.py).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        metrics: StoreMetrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        spans_under_unsampled_parents: bool = False,
        pooler_mode: bool | None = None,
    ) -> None:
        """Bind the store to ``engine`` (its pool is shared, not owned).

        Args:
            engine: from :func:`chat_storage.create_engine`, or the host application's.
            metrics: where to record latency, errors and pool use; None records nothing.
            tracer_provider: default the global one (a no-op until an SDK is set).
            spans_under_unsampled_parents: start operation spans even when the
                caller's span is not sampled. Off by default: under a parent-based
                sampler (the SDK's default) they are never recorded, and asking
                the SDK costs more than the rest of the instrumentation together.
            pooler_mode: force PgBouncer-safe execution; default from the engine.
        """
        self._engine = engine
        self._metrics = metrics
        # The series every operation observes, kept for the event loop's thread.
        self._hot = HotSeries(metrics) if metrics is not None else None
        self._tracer = get_tracer(tracer_provider)
        self._sdk_installed = tracer_provider is not None
        self._spans_under_unsampled_parents = spans_under_unsampled_parents
        self._sdk_checked_until = -math.inf
        self._pooler = engine_pooler_mode(engine) if pooler_mode is None else pooler_mode
        pool = engine.sync_engine.pool
        size = pool.size() if isinstance(pool, QueuePool) else 1
        overflow = max(0, pool._max_overflow) if isinstance(pool, QueuePool) else 0
        self._checkout_attempts = size + overflow + 1
        if metrics is not None:
            observe_pool(engine, metrics)

    @property
    def engine(self) -> AsyncEngine:
        """The engine whose pool the store uses."""
        return self._engine

    # -- the one path every operation takes -------------------------------------------

    # SQLAlchemy's pool is synchronous code that may need to await (a new
    # connection, a recycle, closing an overflow connection); SQLAlchemy bridges
    # that with a greenlet (await_only()), and wraps each checkout in a fairy
    # that fires the checkout, reset and checkin events. The common case needs
    # none of it: a ready idle connection is lent straight off the pool's queue
    # (or, when the pool is saturated, handed over to this caller while it waits
    # in plain asyncio), the statement is awaited on the driver, and the
    # connection goes back onto the queue or to the next waiter. Everything
    # else (connecting, recycling, closing overflow, an event listener or
    # pre-ping on the pool) runs checkout, statement and checkin inside one
    # greenlet, through pool.connect().

    def _checkout(self, pool: Pool, started: float) -> tuple[Any, Any]:
        """A pooled connection (fairy) and its asyncpg connection, skipping dead ones.

        ``pool`` is the one the caller may have waited in: after engine.dispose()
        the engine has a new one, and a record handed over in the old one must be
        taken from there."""
        metrics = self._metrics
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
            if metrics is not None:
                metrics.pool_timeouts.inc()
            raise
        finally:
            if metrics is not None:
                metrics.pool_wait.observe(time.perf_counter() - started)

    async def _query(self, driver: Any, sql: str, args: list[Any]) -> list[Any]:
        if not self._pooler:
            rows: list[Any] = await driver.fetch(sql, *args)
            return rows
        return await self._query_in_transaction(driver, sql, args)

    @staticmethod
    async def _query_in_transaction(driver: Any, sql: str, args: list[Any]) -> list[Any]:
        # PgBouncer in transaction mode may hand each transaction to a different
        # server connection; asyncpg's prepare and execute are separate
        # exchanges, so they must share one explicit transaction.
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

    @staticmethod
    def _broken(driver: Any, exc: BaseException) -> bool:
        # Cancelled, timed out or disconnected mid-statement: the connection's
        # protocol state is unknown, so it must not go back to the pool.
        return getattr(exc, "sqlstate", None) is None or driver.is_closed()

    def _fetch_in_greenlet(
        self, pool: Pool, sql: str, args: list[Any], started: float
    ) -> list[Any]:
        fairy, driver = self._checkout(pool, started)
        try:
            rows: list[Any] = await_only(self._query(driver, sql, args))
            return rows
        except BaseException as exc:
            if self._broken(driver, exc):
                driver.terminate()  # synchronous and immediate
                fairy.invalidate()
            raise
        finally:
            fairy.close()

    @classmethod
    def _return_after_error(
        cls, pool: FairAsyncQueuePool, record: Any, driver: Any, exc: BaseException
    ) -> None:
        try:
            if cls._broken(driver, exc):
                driver.terminate()
                record.invalidate(e=exc)  # the next checkout reconnects
        finally:
            pool.return_record(record)

    def _left_line(
        self, pool: FairAsyncQueuePool, waiter: Any, started: float, exc: BaseException
    ) -> Exception | None:
        """Clean up after a wait for a connection ended without one; the pool's
        TimeoutError to raise instead when the wait timed out.

        Judged by the exception raised here, not by the waiter: a cancellation
        that arrives after the deadline expired the waiter is still a
        cancellation."""
        pool.leave_line(waiter)
        if not isinstance(exc, Empty):
            return None
        if self._metrics is not None:
            self._metrics.pool_timeouts.inc()
            self._metrics.pool_wait.observe(time.perf_counter() - started)
        return pool.timeout_error()

    async def _fetch(self, sql: str, args: list[Any]) -> list[Any]:
        # Kept flat on purpose: every await level is re-entered each time the
        # task resumes (once per response, twice when the pool is saturated).
        pool = self._engine.sync_engine.pool
        if not isinstance(pool, FairAsyncQueuePool):
            return await greenlet_spawn(
                self._fetch_in_greenlet, pool, sql, args, time.perf_counter()
            )
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
            if started is None:
                started = time.perf_counter()
            return await greenlet_spawn(self._fetch_in_greenlet, pool, sql, args, started)
        hot = self._hot  # checked for this thread by _run
        if hot is not None:
            if started is not None:
                hot.pool_wait.observe(time.perf_counter() - started)
            elif hot.zero_waits is not None:
                # A wait of 0 counted without reading the clock or calling: a
                # third of the metrics' cost per operation (--instructions).
                hot.zero_waits[0] += 1
            else:
                hot.pool_wait.observe(0.0)
        driver = record.driver_connection
        try:
            if self._pooler:
                rows = await self._query_in_transaction(driver, sql, args)
            else:
                rows = await driver.fetch(sql, *args)
        except BaseException as exc:
            await greenlet_spawn(self._return_after_error, pool, record, driver, exc)
            raise
        if not pool.give_back(record):
            await greenlet_spawn(pool.return_record, record)
        return rows

    async def _execute(self, plan: Plan[R]) -> R:
        sql, _ = plan.statement.compile()
        args = plan.args()
        try:
            rows = await self._fetch(sql, args)
        except asyncpg.InternalClientError as exc:
            # asyncpg refused to start the statement: the server had just
            # terminated this idle connection and its goodbye was read but the
            # socket not yet closed. Nothing was sent, so a fresh connection is
            # safe for every operation; the refused one has been discarded.
            # Not its subclasses (ProtocolError, OutdatedSchemaCacheError): they
            # can come after the statement was sent, and an append must not run twice.
            if type(exc) is not asyncpg.InternalClientError:
                raise
            rows = await self._fetch(sql, args)
        return plan.finish(rows)

    async def _run(self, plan: Plan[R]) -> R:
        """Run ``plan``; record its latency, outcome and errors on metrics and span."""
        statement = plan.statement
        name = statement.name
        # A child of the caller's current span, but not made current itself:
        # nothing runs under it that could open a child span (the statement goes
        # straight to the driver), and attaching and detaching the context was
        # half of the span's cost (7 us instead of 15 with an SDK installed).
        started = time.perf_counter()
        span = None
        if (self._sdk_installed or self._sdk_appeared(started)) and (
            # Under a caller's span that is not sampled (99% of requests at a 1%
            # ratio), a parent-based sampler drops this span too; asking the SDK
            # anyway (ids, sampler, a non-recording span) measured 15-20 us per
            # operation under load. A root operation (no caller span) still goes
            # to the SDK's root sampler.
            self._spans_under_unsampled_parents or not under_unsampled_span()
        ):
            span = self._start_span(statement)
        hot = self._hot
        if hot is not None and hot.thread != get_ident():
            # The engine's event loop runs in another thread than the last one
            # (an engine cannot serve two loops at once): that thread's series.
            hot = self._hot = HotSeries(hot.metrics)
        try:
            try:
                result = await self._execute(plan)
            except RetryAppend:
                # A concurrent call with the same message_id inserted first;
                # now it is visible and this call replays it.
                try:
                    result = await self._execute(plan)
                except RetryAppend:
                    raise IdempotencyConflict(
                        "message_id is already used by another user"
                    ) from None
        except BaseException as exc:
            error = exc if isinstance(exc, ChatStoreError) else error_for(exc, url=self._engine.url)
            self._record_failure(name, span, started, error, exc)
            if span is not None:
                span.end()
            if error is None or error is exc:
                raise
            raise error from exc
        if hot is not None:
            observer = hot.ok_durations.get(name)
            if observer is None:
                observer = hot.ok(name)
            observer.observe(
                time.perf_counter() - started, None if span is None else _exemplar(span)
            )
        if span is not None:
            span.end()
        return result

    def _start_span(self, statement: Statement) -> trace.Span:
        return self._tracer.start_span(
            statement.name,
            kind=SpanKind.CLIENT,
            attributes=statement.span_attributes(),
            record_exception=False,
            set_status_on_exception=False,
        )

    def _sdk_appeared(self, now: float) -> bool:
        # Called while no SDK has been seen (_run checks _sdk_installed first).
        # With no SDK installed (the global provider is still the API's proxy) a
        # span is a no-op that still costs several microseconds: skip it. The
        # global provider can be set only once, so an SDK once seen is final;
        # until then the lookup (which reads os.environ, about 1 us) is repeated
        # at most once a second: an SDK installed after the store was built
        # gets spans within a second.
        if now < self._sdk_checked_until:
            return False
        self._sdk_checked_until = now + 1.0
        self._sdk_installed = not isinstance(trace.get_tracer_provider(), _NO_OP_PROVIDERS)
        return self._sdk_installed

    def _record_failure(
        self,
        name: str,
        span: trace.Span | None,
        started: float,
        error: ChatStoreError | None,
        exc: BaseException,
    ) -> None:
        error_type = type(error if error is not None else exc).__name__
        sqlstate = error.sqlstate if error is not None else None
        if span is not None:
            span.set_status(Status(StatusCode.ERROR, error_type))
            span.set_attribute("error.type", error_type)
            if sqlstate:
                span.set_attribute("db.response.status_code", sqlstate)
        metrics = self._metrics
        if metrics is not None:
            metrics.duration(name, "error").observe(
                time.perf_counter() - started, None if span is None else _exemplar(span)
            )
            metrics.errors.labels(name, error_type).inc()

    def _rejected(self, name: str, error: InvalidInput) -> InvalidInput:
        if self._metrics is not None:
            self._metrics.validation_rejects.labels(name, type(error).__name__).inc()
            self._metrics.errors.labels(name, type(error).__name__).inc()
        return error

    # -- public operations ------------------------------------------------------------

    async def create_conversation(self, user_id: str) -> Conversation:
        """Create an active conversation for ``user_id``.

        Raises:
            InvalidIdentifier: malformed user id.
            UserNotFound: ``user_id`` is not in the users table.
        """
        try:
            plan = plan_create_conversation(user_id=user_id)
        except InvalidInput as e:
            raise self._rejected("create_conversation", e) from None
        return await self._run(plan)

    async def get_conversation(
        self, user_id: str, conversation_id: uuid.UUID | str
    ) -> Conversation:
        """One of ``user_id``'s conversations.

        Raises:
            ConversationNotFound: missing, or another user's.
        """
        try:
            plan = plan_get_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as e:
            raise self._rejected("get_conversation", e) from None
        return await self._run(plan)

    async def list_conversations(
        self,
        user_id: str,
        *,
        status: ConversationStatus | str = ConversationStatus.ACTIVE,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page[Conversation]:
        """A page of ``user_id``'s conversations, most recently updated first.

        Raises:
            InvalidLimit: ``limit`` outside 1..200.
            InvalidCursor: a cursor this listing did not produce.
        """
        try:
            plan = plan_list_conversations(
                user_id=user_id, status=status, limit=limit, cursor=cursor
            )
        except InvalidInput as e:
            raise self._rejected("list_conversations", e) from None
        return await self._run(plan)

    async def add_message(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        role: MessageRole | str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        message_id: uuid.UUID | str | None = None,
    ) -> Message:
        """Append a message and bump the conversation's ``updated_at``, atomically.

        Pass ``message_id`` (a UUID you generate) to make retries safe: a retry
        after a timeout returns the stored message and never writes a duplicate.

        Raises:
            InvalidInput: a rejected argument; nothing was sent.
            ConversationNotFound: missing, or another user's.
            ConversationArchived: the conversation is archived.
            IdempotencyConflict: ``message_id`` is taken by another conversation or user.
        """
        try:
            plan = plan_add_message(
                user_id=user_id,
                conversation_id=conversation_id,
                role=role,
                content=content,
                metadata=metadata,
                message_id=message_id,
            )
        except InvalidInput as e:
            raise self._rejected("add_message", e) from None
        message, replayed = await self._run(plan)
        if replayed and self._metrics is not None:
            self._metrics.idempotent_replays.inc()
        return message

    async def get_history(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        limit: int = 20,
        cursor: str | None = None,
    ) -> Page[Message]:
        """The latest ``limit`` messages older than ``cursor``, returned oldest first.

        Pass a page's ``next_cursor`` as ``cursor`` for the messages before it
        (the same argument name as :meth:`list_conversations`).

        Raises:
            InvalidLimit: ``limit`` outside 1..200.
            InvalidCursor: a cursor history did not produce.
            ConversationNotFound: missing, or another user's.
        """
        try:
            plan = plan_get_history(
                user_id=user_id, conversation_id=conversation_id, limit=limit, cursor=cursor
            )
        except InvalidInput as e:
            raise self._rejected("get_history", e) from None
        return await self._run(plan)

    async def archive_conversation(
        self, user_id: str, conversation_id: uuid.UUID | str
    ) -> Conversation:
        """Archive a conversation: still readable, no longer appendable. Idempotent.

        Raises:
            ConversationNotFound: missing, or another user's.
        """
        return await self._set_status(user_id, conversation_id, ConversationStatus.ARCHIVED)

    async def restore_conversation(
        self, user_id: str, conversation_id: uuid.UUID | str
    ) -> Conversation:
        """Make an archived conversation active again. Idempotent.

        Raises:
            ConversationNotFound: missing, or another user's.
        """
        return await self._set_status(user_id, conversation_id, ConversationStatus.ACTIVE)

    async def _set_status(
        self, user_id: str, conversation_id: uuid.UUID | str, status: ConversationStatus
    ) -> Conversation:
        try:
            plan = plan_set_status(user_id=user_id, conversation_id=conversation_id, status=status)
        except InvalidInput as e:
            raise self._rejected(plan_set_status_name(status), e) from None
        return await self._run(plan)

    async def delete_conversation(self, user_id: str, conversation_id: uuid.UUID | str) -> None:
        """Delete a conversation and all its messages.

        Raises:
            ConversationNotFound: missing, or another user's.
        """
        try:
            plan = plan_delete_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as e:
            raise self._rejected("delete_conversation", e) from None
        await self._run(plan)

    async def archive_inactive_conversations(
        self, *, idle_for: timedelta, batch_size: int = 1000
    ) -> int:
        """Archive every conversation idle longer than ``idle_for``; returns how many.

        Runs in batches of ``batch_size``, each its own short statement, so no
        lock is held for long and concurrent appends wait at most one batch.
        Conversations locked by a writer are skipped until the next run.

        Raises:
            InvalidInput: negative ``idle_for`` or a batch size outside 1..100000.
        """
        try:
            plan = plan_archive_inactive_batch(idle_for=idle_for, batch_size=batch_size)
        except InvalidInput as e:
            raise self._rejected("archive_inactive_conversations", e) from None
        total = 0
        while True:
            archived = await self._run(plan)
            total += archived
            if archived < batch_size:
                return total


def plan_set_status_name(status: ConversationStatus) -> str:
    """The operation name of a status change, for metrics."""
    return (
        "archive_conversation" if status is ConversationStatus.ARCHIVED else "restore_conversation"
    )


def _exemplar(span: trace.Span) -> dict[str, str] | None:
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }

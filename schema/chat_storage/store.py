"""ChatStore: the chat operations on an engine, one round trip each.

Where a message travels: ``ChatStore.add_message`` plans
(``plan_add_message`` in queries/messages.py: validation, parameters), runs
(``ChatStore._run``: span, metrics, error translation; the plan's ``run`` sends
it through ``Connections.fetch`` in _execution.py, one prepared statement on a
pooled asyncpg connection) and finishes (``Plan.finish``: the row to a Message).
Every public method is those three steps; the operation's arguments, checks
and ``Raises:`` are its plan function's (whose docstring it carries). Each
method calls its plan function itself, inside a ``try`` that hands a rejection
to ``_rejected``: a generic ``_plan(planner, **kwargs)`` would pass the
arguments through a dict on every call, a measurable share of the client's
instructions per operation.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Coroutine
from datetime import timedelta
from threading import get_ident
from typing import Any, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from sqlalchemy.ext.asyncio import AsyncEngine

from ._execution import Connections
from .cursor import Page
from .engine import engine_operation_timeout, engine_pooler_mode
from .errors import ChatStoreError, InvalidInput, error_for
from .metrics import HotSeries, StoreMetrics, observe_pool
from .models import Conversation, ConversationStatus, Message, MessageRole
from .queries.base import Plan, Statement, operation_name
from .queries.conversations import (
    plan_archive_conversation,
    plan_archive_inactive_batch,
    plan_create_conversation,
    plan_delete_conversation,
    plan_get_conversation,
    plan_list_conversations,
    plan_restore_conversation,
)
from .queries.messages import plan_add_message, plan_get_history
from .tracing import get_tracer, under_unsampled_span

__all__ = ["ChatStore"]

R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])

# The global providers of the OpenTelemetry API before an SDK is installed.
_NO_OP_PROVIDERS = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)


def _documented_by(planner: Callable[..., Plan[Any]]) -> Callable[[F], F]:
    # The operation is declared once, by its plan function: its docstring
    # (arguments, checks, Raises:) is the method's.
    def document(method: F) -> F:
        method.__doc__ = planner.__doc__
        return method

    return document


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

    Every method also takes a keyword-only ``timeout``: the seconds this call
    may take in all (waiting for a connection, connecting, the statement);
    default the engine's ``operation_timeout`` (Settings, 30 s). When it passes
    the call raises OperationTimeout (retryable), the statement is cancelled on
    the server and its connection discarded. A cancelled call's statement is
    cancelled on the server too, before its connection is reused. Either way an
    append may have been stored just before: retry it with the same
    ``message_id`` (the stored message comes back, never a duplicate).
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
        pooler = engine_pooler_mode(engine) if pooler_mode is None else pooler_mode
        self._connections = Connections(
            engine, pooler=pooler, hot=self._hot, timeout=engine_operation_timeout(engine)
        )
        if metrics is not None:
            observe_pool(engine, metrics)

    @property
    def engine(self) -> AsyncEngine:
        """The engine whose pool the store uses."""
        return self._engine

    # -- plan, run: the two steps of every operation --------------------------------

    def _rejected(self, planner: Callable[..., Plan[Any]], error: InvalidInput) -> InvalidInput:
        """Count ``error``, raised by ``planner`` before anything was sent, under the
        operation's statement name: every rejection is counted here."""
        metrics = self._metrics
        if metrics is not None:
            name = operation_name(planner)
            metrics.validation_rejects.labels(name, type(error).__name__).inc()
            metrics.errors.labels(name, type(error).__name__).inc()
        return error

    async def _run(self, plan: Plan[R], within: float | None = None) -> R:
        """Run ``plan`` within ``within`` seconds (None: the engine's operation_timeout);
        record its latency, outcome and errors on metrics and span."""
        statement = plan.statement
        # A child of the caller's current span, but not made current itself:
        # nothing runs under it that could open a child span (the statement goes
        # straight to the driver), and attaching and detaching the context was
        # half of the span's cost.
        started = time.perf_counter()
        span = None
        if (
            self._sdk_installed
            or (started >= self._sdk_checked_until and self._sdk_appeared(started))
        ) and (
            # Under a caller's span that is not sampled (99% of requests at a 1%
            # ratio), a parent-based sampler drops this span too, and asking the
            # SDK anyway (ids, sampler, a non-recording span) is the largest
            # cost of the instrumentation. A root operation (no caller span)
            # still goes to the SDK's root sampler.
            self._spans_under_unsampled_parents or not under_unsampled_span()
        ):
            span = self._start_span(statement)
        hot = self._hot
        if hot is not None and hot.thread != get_ident():
            # The engine's event loop runs in another thread than the last one
            # (an engine cannot serve two loops at once): that thread's series.
            hot = self._hot = self._connections.hot = HotSeries(hot.metrics)
        try:
            # The one-argument call when no override: the load tests' slow-query
            # proof wraps _execute(plan).
            result = await (self._execute(plan) if within is None else self._execute(plan, within))
        except BaseException as exc:
            error = exc if isinstance(exc, ChatStoreError) else error_for(exc, url=self._engine.url)
            self._record_failure(statement.name, span, started, error, exc)
            if span is not None:
                span.end()
            if error is None or error is exc:
                raise
            raise error from exc
        if hot is not None:
            observer = hot.ok_durations.get(statement.name)
            if observer is None:
                observer = hot.ok(statement.name)
            observer.observe(
                time.perf_counter() - started, None if span is None else _exemplar(span)
            )
        if span is not None:
            span.end()
        return result

    def _execute(self, plan: Plan[R], timeout: float | None = None) -> Coroutine[Any, Any, R]:
        # Every statement passes here (the load tests' slow-query proof wraps
        # it). Not async: the plan's own coroutine is awaited, one level fewer
        # to resume on every response.
        if timeout is None:
            return plan.run(self._connections.fetch)
        if not timeout > 0:  # NaN too
            raise InvalidInput("timeout must be a positive number of seconds")
        fetch = self._connections.fetch
        return plan.run(lambda plan: fetch(plan, True, timeout))

    def _start_span(self, statement: Statement) -> trace.Span:
        return self._tracer.start_span(
            statement.name,
            kind=SpanKind.CLIENT,
            attributes=statement.span_attributes(),
            record_exception=False,
            set_status_on_exception=False,
        )

    def _sdk_appeared(self, now: float) -> bool:
        # Called while no SDK has been seen, at most once a second (_run checks
        # _sdk_installed and the time first). With no SDK installed (the global
        # provider is still the API's proxy) a span is a no-op that still costs
        # several microseconds: skip it. The global provider can be set only
        # once, so an SDK once seen is final; until then the lookup (which
        # reads os.environ) is repeated at most once a second: an SDK installed
        # after the store was built gets spans within a second.
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

    # -- public operations: plan, run (the plan finishes its rows) ------------------

    @_documented_by(plan_create_conversation)
    async def create_conversation(
        self,
        user_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Conversation:
        try:
            plan = plan_create_conversation(user_id=user_id)
        except InvalidInput as error:
            raise self._rejected(plan_create_conversation, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_get_conversation)
    async def get_conversation(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Conversation:
        try:
            plan = plan_get_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as error:
            raise self._rejected(plan_get_conversation, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_list_conversations)
    async def list_conversations(
        self,
        user_id: str,
        *,
        status: ConversationStatus | str = ConversationStatus.ACTIVE,
        limit: int = 50,
        cursor: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Page[Conversation]:
        try:
            plan = plan_list_conversations(
                user_id=user_id, status=status, limit=limit, cursor=cursor
            )
        except InvalidInput as error:
            raise self._rejected(plan_list_conversations, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_add_message)
    async def add_message(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        role: MessageRole | str,
        content: str,
        *,
        metadata: dict[str, Any] | None = None,
        message_id: uuid.UUID | str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Message:
        try:
            plan = plan_add_message(
                user_id=user_id,
                conversation_id=conversation_id,
                role=role,
                content=content,
                metadata=metadata,
                message_id=message_id,
            )
        except InvalidInput as error:
            raise self._rejected(plan_add_message, error) from None
        message, replayed = await self._run(plan, timeout)
        if replayed and self._metrics is not None:
            self._metrics.idempotent_replays.inc()
        return message

    @_documented_by(plan_get_history)
    async def get_history(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        limit: int = 20,
        cursor: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Page[Message]:
        try:
            plan = plan_get_history(
                user_id=user_id, conversation_id=conversation_id, limit=limit, cursor=cursor
            )
        except InvalidInput as error:
            raise self._rejected(plan_get_history, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_archive_conversation)
    async def archive_conversation(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Conversation:
        try:
            plan = plan_archive_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as error:
            raise self._rejected(plan_archive_conversation, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_restore_conversation)
    async def restore_conversation(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Conversation:
        try:
            plan = plan_restore_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as error:
            raise self._rejected(plan_restore_conversation, error) from None
        return await self._run(plan, timeout)

    @_documented_by(plan_delete_conversation)
    async def delete_conversation(
        self,
        user_id: str,
        conversation_id: uuid.UUID | str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> None:
        try:
            plan = plan_delete_conversation(user_id=user_id, conversation_id=conversation_id)
        except InvalidInput as error:
            raise self._rejected(plan_delete_conversation, error) from None
        await self._run(plan, timeout)

    async def archive_inactive_conversations(
        self,
        *,
        idle_for: timedelta,
        batch_size: int = 1000,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> int:
        """Archive every conversation idle longer than ``idle_for``; returns how many.

        Runs in batches of ``batch_size`` (:func:`plan_archive_inactive_batch`),
        each its own short statement, so no lock is held for long and concurrent
        appends wait at most one batch. Conversations locked by a writer are
        skipped until the next run.

        ``timeout`` bounds each batch, as every operation's (see the class).

        Raises:
            InvalidInput: negative ``idle_for`` or a batch size outside 1..100000.
            OperationTimeout: a batch did not finish within ``timeout``.
        """
        try:
            plan = plan_archive_inactive_batch(idle_for=idle_for, batch_size=batch_size)
        except InvalidInput as error:
            raise self._rejected(plan_archive_inactive_batch, error) from None
        total = 0
        while True:
            archived = await self._run(plan, timeout)
            total += archived
            if archived < batch_size:
                return total


def _exemplar(span: trace.Span) -> dict[str, str] | None:
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }

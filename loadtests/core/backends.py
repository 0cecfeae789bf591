"""The workload's five operations on two paths: ChatStore, and the raw asyncpg reference.

* :class:`StoreBackend`: ``chat_storage.ChatStore`` on ``chat_storage.create_engine``
  (the package as an application uses it: SQLAlchemy pool, spans, metrics,
  error translation).
* :class:`RawBackend`, the reference every harness, gate and benchmark compares
  with: the very same SQL (the compiled statements of ``chat_storage.queries``),
  prepared and cached by asyncpg on each connection, arguments and rows through
  the same plans, one statement per operation, the CTE append included. Its
  connections wait in a first-come, first-served :class:`Handoff`, not
  ``asyncpg.Pool``, which lets a fast task barge past waiting ones and sends a
  reset query on every release (a round trip ChatStore does not pay). So the
  difference between the two is what ChatStore adds on top of the driver: the
  pool checkout, the span, the metrics, error translation.

Both are built anywhere and open nothing until :meth:`open`, which must run in
the event loop that will use them (after Locust forks its workers).
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

import asyncpg
from opentelemetry import trace
from sqlalchemy.engine import make_url

from chat_storage import ChatStore, StoreMetrics, create_engine
from chat_storage.models import ConversationStatus
from chat_storage.queries.base import Plan
from chat_storage.queries.conversations import (
    plan_create_conversation,
    plan_list_conversations,
    plan_set_status,
)
from chat_storage.queries.messages import plan_add_message, plan_get_history
from chat_storage.tracing import StatementTracing, instrument_statements
from loadtests.core.workload import RAW, STORE

T = TypeVar("T")
R = TypeVar("R")


class Backend(Protocol):
    """The operations a simulated user or a benchmark session performs."""

    name: str

    async def open(self) -> None: ...
    async def get_history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> int: ...
    async def add_message(
        self, user_id: str, conversation_id: uuid.UUID, role: str, text: str
    ) -> None: ...
    async def create_conversation(self, user_id: str) -> uuid.UUID: ...
    async def list_conversations(self, user_id: str, limit: int) -> list[uuid.UUID]: ...
    async def archive_conversation(self, user_id: str, conversation_id: uuid.UUID) -> None: ...
    async def close(self) -> None: ...


class StoreBackend:
    """``ChatStore`` on ``chat_storage.create_engine`` with the given pool."""

    def __init__(
        self,
        url: str,
        *,
        name: str = STORE,
        pool_size: int,
        max_overflow: int,
        metrics: StoreMetrics | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        trace_statements: bool = False,
        overflow_idle_timeout: float | None = None,
        final_figures: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        self.name = name
        self._url = url
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        #: None: the setting's default (CHAT_STORAGE_POOL_OVERFLOW_IDLE_TIMEOUT).
        self._overflow_idle_timeout = overflow_idle_timeout
        self._final_figures = final_figures
        self.metrics = metrics
        self._tracer_provider = tracer_provider
        self._trace_statements = trace_statements
        self._statement_tracer: StatementTracing | None = None
        self._store: ChatStore | None = None

    @property
    def store(self) -> ChatStore:
        """The open store.

        Raises:
            RuntimeError: :meth:`open` has not run.
        """
        if self._store is None:
            raise RuntimeError(f"{self.name}: open() first")
        return self._store

    async def open(self) -> None:
        """Build the engine and the store, and open ``pool_size`` connections now,
        so that the first measured operations do not pay for connecting."""
        overrides: dict[str, Any] = {}
        if self._overflow_idle_timeout is not None:
            overrides["pool_overflow_idle_timeout"] = self._overflow_idle_timeout
        engine = create_engine(
            database_url=self._url,
            pool_size=self._pool_size,
            max_overflow=self._max_overflow,
            **overrides,
        )
        if self._trace_statements:
            self._statement_tracer = instrument_statements(
                engine, tracer_provider=self._tracer_provider
            )
        self._store = ChatStore(engine, metrics=self.metrics, tracer_provider=self._tracer_provider)
        connections = [await engine.connect() for _ in range(self._pool_size)]
        for connection in connections:
            await connection.close()

    async def get_history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> int:
        page = await self.store.get_history(user_id, conversation_id, limit=limit)
        return len(page.items)

    async def add_message(
        self, user_id: str, conversation_id: uuid.UUID, role: str, text: str
    ) -> None:
        await self.store.add_message(user_id, conversation_id, role, text)

    async def create_conversation(self, user_id: str) -> uuid.UUID:
        return (await self.store.create_conversation(user_id)).id

    async def list_conversations(self, user_id: str, limit: int) -> list[uuid.UUID]:
        page = await self.store.list_conversations(user_id, limit=limit)
        return [c.id for c in page.items]

    async def archive_conversation(self, user_id: str, conversation_id: uuid.UUID) -> None:
        await self.store.archive_conversation(user_id, conversation_id)

    def final_figures(self) -> dict[str, float]:
        """What the run's telemetry saw (for a duet's report; see bench/duet.py)."""
        return self._final_figures() if self._final_figures is not None else {}

    async def close(self) -> None:
        """Remove the statement instrumentation and dispose of the engine."""
        if self._statement_tracer is not None:
            self._statement_tracer.remove()
            self._statement_tracer = None
        if self._store is not None:
            store, self._store = self._store, None
            await store.engine.dispose()


class Handoff(Generic[T]):
    """Idle items handed to waiters in arrival order (no barging, no reset)."""

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[asyncio.Future[T]] = deque()

    async def acquire(self) -> T:
        """An idle item, or the first one released after every earlier waiter's."""
        if self._items:  # items wait only while nobody else does
            return self._items.popleft()
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(waiter.result())  # handed over as we were cancelled
            raise

    def release(self, item: T) -> None:
        """Hand ``item`` to the oldest waiter, or keep it idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(item)
                return
        self._items.append(item)

    def drain(self) -> list[T]:
        """Take every idle item (to close them)."""
        items = list(self._items)
        self._items.clear()
        return items


class RawBackend:
    """The same plans run prepared on ``connections`` plain asyncpg connections."""

    def __init__(self, url: str, *, name: str = RAW, connections: int) -> None:
        self.name = name
        # asyncpg takes the plain postgresql:// form and libpq's sslmode itself.
        parsed = make_url(url).set(drivername="postgresql")
        self._dsn = parsed.difference_update_query(["channel_binding"]).render_as_string(
            hide_password=False
        )
        self._size = connections
        self._idle: Handoff[Any] = Handoff()

    async def open(self) -> None:
        """Open every connection now (the reference never connects while measured)."""
        for _ in range(self._size):
            self._idle.release(await asyncpg.connect(self._dsn))

    async def _run(self, plan: Plan[R]) -> R:
        sql, _ = plan.statement.compile()
        args = plan.args()
        conn = await self._idle.acquire()
        try:
            rows = await conn.fetch(sql, *args)
        finally:
            self._idle.release(conn)
        return plan.finish(rows)

    async def get_history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> int:
        plan = plan_get_history(user_id=user_id, conversation_id=conversation_id, limit=limit)
        return len((await self._run(plan)).items)

    async def add_message(
        self, user_id: str, conversation_id: uuid.UUID, role: str, text: str
    ) -> None:
        plan = plan_add_message(
            user_id=user_id, conversation_id=conversation_id, role=role, content=text
        )
        await self._run(plan)

    async def create_conversation(self, user_id: str) -> uuid.UUID:
        return (await self._run(plan_create_conversation(user_id=user_id))).id

    async def list_conversations(self, user_id: str, limit: int) -> list[uuid.UUID]:
        page = await self._run(plan_list_conversations(user_id=user_id, limit=limit))
        return [c.id for c in page.items]

    async def archive_conversation(self, user_id: str, conversation_id: uuid.UUID) -> None:
        plan = plan_set_status(
            user_id=user_id, conversation_id=conversation_id, status=ConversationStatus.ARCHIVED
        )
        await self._run(plan)

    async def close(self) -> None:
        """Close every idle connection."""
        for conn in self._idle.drain():
            await conn.close()

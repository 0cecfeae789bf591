"""What a simulated user does to the database: the same five operations on two paths.

* :class:`StoreBackend`: ``chat_storage.ChatStore`` on ``chat_storage.create_engine`` (the
  package as an application uses it: SQLAlchemy pool, spans, metrics, error
  translation).
* :class:`RawBackend`: an ``asyncpg.create_pool`` running the very same SQL
  (the compiled statements of ``chat_storage.queries``; asyncpg prepares and caches
  them per connection), one statement per operation, the CTE append included.
  Arguments and rows go through the same plans, so the difference between the
  two is what ChatStore adds on top of the driver.

Both are built in the calling process but open nothing until their first
operation, which runs inside the process's event loop (after Locust's fork).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any, Final

OPERATIONS: Final = (
    "history_read",
    "message_insert",
    "conversation_create",
    "conversation_list",
    "conversation_archive",
)
#: Locust request types: the ChatStore path and the raw asyncpg reference path.
REQUEST_TYPES: Final = ("chat", "raw")
USER_PREFIX: Final = "loadtest-"

_WORDS: Final = (
    "the model answer question context token prompt memory window history reply "
    "latency database index page cursor user assistant message stream summary "
    "please explain why how what could would should example code result table"
).split()


def seeded_user_id(run_id: str, n: int) -> str:
    """The id of seeded user ``n`` of run ``run_id`` (all share the prefix)."""
    return f"{USER_PREFIX}{run_id}-{n:06d}"


def user_prefix(run_id: str) -> str:
    """The id prefix every seeded user of ``run_id`` has (for cleanup)."""
    return f"{USER_PREFIX}{run_id}-"


def _text(rng: random.Random, low: int, high: int) -> str:
    size = rng.randint(low, high)
    words: list[str] = []
    length = 0
    while length < size:
        word = rng.choice(_WORDS)
        words.append(word)
        length += len(word) + 1
    return " ".join(words)[:size]


def user_text(rng: random.Random) -> str:
    """A user's message: 20 to 400 characters."""
    return _text(rng, 20, 400)


def assistant_text(rng: random.Random) -> str:
    """An assistant's reply: 200 to 2000 characters."""
    return _text(rng, 200, 2000)


class StoreBackend:
    """The five operations through ChatStore."""

    kind = "chat"

    def __init__(
        self, url: str, *, pool_size: int, max_overflow: int, registry: Any = None
    ) -> None:
        self._url = url
        self._pool_size = pool_size
        self._max_overflow = max_overflow
        self._registry = registry
        self._store: Any = None
        self._metrics: Any = None

    def _get(self) -> Any:
        # Called inside the loop (single-threaded): no lock needed.
        if self._store is None:
            import chat_storage

            if self._metrics is None and self._registry is not None:
                self._metrics = chat_storage.StoreMetrics(self._registry)
            engine = chat_storage.create_engine(
                database_url=self._url,
                pool_size=self._pool_size,
                max_overflow=self._max_overflow,
            )
            self._store = chat_storage.ChatStore(engine, metrics=self._metrics)
        return self._store

    async def warm(self) -> None:
        """Build the store and open ``pool_size`` connections (before users start)."""
        engine = self._get().engine
        connections = [await engine.connect() for _ in range(self._pool_size)]
        for connection in connections:
            await connection.close()

    async def create(self, user_id: str) -> uuid.UUID:
        return (await self._get().create_conversation(user_id)).id  # type: ignore[no-any-return]

    async def list(self, user_id: str, limit: int) -> list[uuid.UUID]:
        page = await self._get().list_conversations(user_id, limit=limit)
        return [c.id for c in page.items]

    async def history(self, user_id: str, conversation: uuid.UUID, limit: int) -> int:
        page = await self._get().get_history(user_id, conversation, limit=limit)
        return len(page.items)

    async def append(self, user_id: str, conversation: uuid.UUID, role: str, text: str) -> None:
        await self._get().add_message(user_id, conversation, role, text)

    async def archive(self, user_id: str, conversation: uuid.UUID) -> None:
        await self._get().archive_conversation(user_id, conversation)

    async def close(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            await store.engine.dispose()


class RawBackend:
    """The same five statements on a plain asyncpg pool."""

    kind = "raw"

    def __init__(self, url: str, *, min_size: int, max_size: int) -> None:
        from sqlalchemy.engine import make_url

        # asyncpg takes the plain postgresql:// form and libpq's sslmode itself.
        parsed = make_url(url).set(drivername="postgresql")
        self._dsn = parsed.difference_update_query(["channel_binding"]).render_as_string(
            hide_password=False
        )
        self._min_size = min_size
        self._max_size = max_size
        self._pool_task: asyncio.Future[Any] | None = None

    async def _pool(self) -> Any:
        if self._pool_task is None:
            import asyncpg

            self._pool_task = asyncio.ensure_future(
                asyncpg.create_pool(
                    self._dsn, min_size=self._min_size, max_size=self._max_size, reset=_no_reset
                )
            )
        return await asyncio.shield(self._pool_task)

    async def warm(self) -> None:
        """Create the pool (it opens ``min_size`` connections) before users start."""
        await self._pool()

    async def _run(self, plan: Any) -> Any:
        sql, _ = plan.statement.compile()
        pool = await self._pool()
        async with pool.acquire() as conn:
            rows = await conn.fetch(sql, *plan.args())
        return plan.finish(rows)

    async def create(self, user_id: str) -> uuid.UUID:
        from chat_storage.queries.conversations import plan_create_conversation

        return (await self._run(plan_create_conversation(user_id=user_id))).id  # type: ignore[no-any-return]

    async def list(self, user_id: str, limit: int) -> list[uuid.UUID]:
        from chat_storage.queries.conversations import plan_list_conversations

        page = await self._run(plan_list_conversations(user_id=user_id, limit=limit))
        return [c.id for c in page.items]

    async def history(self, user_id: str, conversation: uuid.UUID, limit: int) -> int:
        from chat_storage.queries.messages import plan_get_history

        plan = plan_get_history(user_id=user_id, conversation_id=conversation, limit=limit)
        return len((await self._run(plan)).items)

    async def append(self, user_id: str, conversation: uuid.UUID, role: str, text: str) -> None:
        from chat_storage.queries.messages import plan_add_message

        plan = plan_add_message(
            user_id=user_id, conversation_id=conversation, role=role, content=text
        )
        await self._run(plan)

    async def archive(self, user_id: str, conversation: uuid.UUID) -> None:
        from chat_storage.models import ConversationStatus
        from chat_storage.queries.conversations import plan_set_status

        plan = plan_set_status(
            user_id=user_id, conversation_id=conversation, status=ConversationStatus.ARCHIVED
        )
        await self._run(plan)

    async def close(self) -> None:
        if self._pool_task is not None and self._pool_task.done():
            pool = self._pool_task.result()
            self._pool_task = None
            await pool.close()


async def _no_reset(_connection: Any) -> None:
    """The reference opens no transactions, listeners or session state, so there is
    nothing to reset; asyncpg's default reset is a round trip per release that
    ChatStore does not pay, and would make the reference look slower than the driver."""

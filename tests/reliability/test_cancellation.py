"""Cancelled callers: their statements end on the server, not after it.

50 callers append to one conversation whose row lock another session holds:
10 get connections and wait on the lock in the server, 40 wait for the pool.
All are cancelled. Before, the pool counted the 10 returned while their
statements went on waiting and committed when the lock went: appends stored
after the caller was told they were cancelled, more server sessions than the
pool's limit once it reconnected, and gaps in ``seq`` when a retry raced an
orphan.
"""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import ChatStore, create_engine

POOL_SIZE, MAX_OVERFLOW = 5, 5
LIMIT = POOL_SIZE + MAX_OVERFLOW
CALLERS = 50


class SessionSampler:
    """Counts the server sessions of one application_name, every few milliseconds."""

    def __init__(self, url: str, application_name: str) -> None:
        self.url = url
        self.name = application_name
        self.worst = 0
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None

    async def count(self, *, state: str | None = None) -> int:
        assert self._conn is not None
        sql = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        if state is None:
            return int(await self._conn.fetchval(sql, self.name))
        return int(await self._conn.fetchval(sql + " AND state = $2", self.name, state))

    async def __aenter__(self) -> SessionSampler:
        self._conn = await asyncpg.connect(self.url)
        self._task = asyncio.create_task(self._sample())
        return self

    async def _sample(self) -> None:
        assert self._conn is not None
        sampler = await asyncpg.connect(self.url)
        try:
            while True:
                found = await sampler.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    self.name,
                )
                self.worst = max(self.worst, int(found))
                await asyncio.sleep(0.002)
        finally:
            await sampler.close()

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._conn is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._conn.close()


@pytest.fixture
async def loop_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """What the event loop's exception handler saw during the test (unretrieved futures...)."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    loop.set_exception_handler(previous)


async def wait_for(predicate: Callable[[], Any], *, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_cancelled_appends_end_on_the_server(
    database_url: str, user_id: str, loop_errors: list[dict[str, Any]]
) -> None:
    """50 callers blocked on a lock and cancelled: no orphan statement, sessions within
    the pool's limit, and every retried append stored exactly once with no seq gap."""
    name = f"cancel50-{uuid.uuid4().hex[:8]}"
    engine: AsyncEngine = create_engine(
        database_url=database_url,
        pool_size=POOL_SIZE,
        max_overflow=MAX_OVERFLOW,
        application_name=name,
    )
    store = ChatStore(engine)
    try:
        conversation = await store.create_conversation(user_id)
        ids = [uuid.uuid4() for _ in range(CALLERS)]
        async with SessionSampler(database_url, name) as sessions:
            blocker = await asyncpg.connect(database_url)
            await blocker.execute("BEGIN")
            await blocker.execute(
                "SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation.id
            )
            try:
                calls = [
                    asyncio.create_task(
                        store.add_message(
                            user_id, conversation.id, "user", f"m{i}", message_id=ids[i]
                        )
                    )
                    for i in range(CALLERS)
                ]

                async def all_waiting_on_the_lock() -> bool:
                    return await sessions.count(state="active") == LIMIT

                assert await wait_for(all_waiting_on_the_lock, within=10)
                for call in calls:
                    call.cancel()
                results = await asyncio.gather(*calls, return_exceptions=True)
                assert all(isinstance(r, asyncio.CancelledError) for r in results)

                async def no_statement_left() -> bool:
                    return await sessions.count(state="active") == 0

                # Still holding the lock: an orphan would be waiting on it now.
                assert await wait_for(no_statement_left, within=1.0)
                assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
            finally:
                await blocker.execute("ROLLBACK")
                await blocker.close()
            await asyncio.sleep(0.2)  # an orphan would commit now
            assert await count_stored(blocker_url=database_url, ids=ids) == 0

            # Every caller retries with its message_id, all at once.
            retried = await asyncio.gather(
                *(
                    store.add_message(user_id, conversation.id, "user", f"m{i}", message_id=ids[i])
                    for i in range(CALLERS)
                )
            )
            worst = sessions.worst
        stored = await count_stored(blocker_url=database_url, ids=ids)
        seqs = sorted(m.seq for m in retried)
        last_seq = (await store.get_conversation(user_id, conversation.id)).last_seq
        print(
            f"\ncancellation: {CALLERS} cancelled, worst server sessions {worst} "
            f"(limit {LIMIT}); retried {len(retried)}, stored {stored}, "
            f"duplicated {len(retried) - len({m.id for m in retried})}, last_seq {last_seq}"
        )
        assert worst <= LIMIT
        assert stored == CALLERS
        assert seqs == list(range(1, CALLERS + 1)) and last_seq == CALLERS
        gc.collect()
        await asyncio.sleep(0)
        assert [c.get("message") for c in loop_errors] == []
    finally:
        await engine.dispose()


async def count_stored(*, blocker_url: str, ids: list[uuid.UUID]) -> int:
    conn = await asyncpg.connect(blocker_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM messages WHERE id = ANY($1)", ids))
    finally:
        await conn.close()

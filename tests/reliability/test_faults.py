"""Faults on a real PostgreSQL: timeouts, a saturated pool, cancellation, killed backends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import (
    ChatStore,
    DatabaseUnavailable,
    PoolTimeout,
    QueryTimeout,
    StoreMetrics,
    TransientError,
    create_engine,
)
from tests.conftest import MakeUser


@pytest.fixture
async def engine_factory(database_url: str) -> AsyncIterator[object]:
    """Build engines on the test database with a distinct application_name; disposes them."""
    made: list[AsyncEngine] = []

    def make(**overrides: object) -> AsyncEngine:
        engine = create_engine(database_url=database_url, **overrides)  # type: ignore[arg-type]
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.dispose()


async def hold_conversation_lock(admin_url: str, conversation_id: uuid.UUID) -> asyncpg.Connection:
    """An open transaction holding the conversation's row lock (appends will wait)."""
    conn = await asyncpg.connect(admin_url)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)
    return conn


async def idle_in_transaction(admin: asyncpg.Connection, application_name: str) -> int:
    return int(
        await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
            "AND state LIKE 'idle in transaction%'",
            application_name,
        )
    )


async def test_statement_timeout_is_typed_and_connection_reusable(
    engine_factory: object, database_url: str, user_id: str
) -> None:
    """A statement over statement_timeout raises QueryTimeout; the same connection works after."""
    engine = engine_factory(pool_size=1, max_overflow=0, statement_timeout_ms=200)  # type: ignore[operator]
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    blocker = await hold_conversation_lock(database_url, conversation.id)
    try:
        with pytest.raises(QueryTimeout) as raised:
            await store.add_message(user_id, conversation.id, "user", "waits for the lock")
        assert raised.value.sqlstate == "57014" and raised.value.retryable
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    message = await store.add_message(user_id, conversation.id, "user", "now it fits")
    assert message.seq == 1  # the timed-out append left nothing behind
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_pool_exhaustion_waits_then_times_out(
    engine_factory: object, database_url: str, user_id: str
) -> None:
    """More callers than size + overflow: the excess wait pool_timeout, then PoolTimeout."""
    engine = engine_factory(pool_size=2, max_overflow=1, pool_timeout=0.5)  # type: ignore[operator]
    store = ChatStore(engine, metrics=StoreMetrics(None))
    conversation = await store.create_conversation(user_id)
    blocker = await hold_conversation_lock(database_url, conversation.id)
    try:
        calls = [
            asyncio.create_task(store.add_message(user_id, conversation.id, "user", f"m{i}"))
            for i in range(6)
        ]
        done, pending = await asyncio.wait(calls, timeout=5)
        timeouts = [t for t in done if isinstance(t.exception(), PoolTimeout)]
        assert len(timeouts) == 3  # 6 callers, 3 connections (2 + 1 overflow)
        assert len(pending) == 3  # the three with connections wait on the row lock
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    stored = await asyncio.gather(*pending)
    assert sorted(m.seq for m in stored) == [1, 2, 3]
    assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    assert (await store.get_history(user_id, conversation.id)).items


async def test_saturated_pool_serves_callers_in_arrival_order(
    engine_factory: object, user_id: str
) -> None:
    """A caller waiting for the pool is served before a busy caller that asks again.

    SQLAlchemy's own asyncio pool lets the task that just returned a connection
    take it back before the woken waiter runs; under load that starved callers
    until pool_timeout (see chat_storage/pool.py).
    """
    engine = engine_factory(pool_size=1, max_overflow=0)  # type: ignore[operator]
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    busy_calls = 0
    stop = asyncio.Event()

    async def busy() -> None:
        nonlocal busy_calls
        while not stop.is_set():
            await store.get_conversation(user_id, conversation.id)
            busy_calls += 1

    looping = asyncio.create_task(busy())
    await asyncio.sleep(0.05)  # the busy caller now owns the only connection's rhythm
    before = busy_calls
    await asyncio.wait_for(store.get_conversation(user_id, conversation.id), timeout=5)
    served_ahead = busy_calls - before
    stop.set()
    await looping
    # FIFO: at most the call in flight when we arrived, and one that was queued first.
    assert served_ahead <= 2, served_ahead


async def test_cancelled_operations_leave_nothing_checked_out(
    engine_factory: object, database_url: str, admin: asyncpg.Connection, user_id: str
) -> None:
    """Cancelled appends waiting in the server return their connections; no open transaction."""
    name = f"cancel-{uuid.uuid4().hex[:8]}"
    engine = engine_factory(pool_size=4, max_overflow=0, application_name=name)  # type: ignore[operator]
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    blocker = await hold_conversation_lock(database_url, conversation.id)
    try:
        tasks = [
            asyncio.create_task(store.add_message(user_id, conversation.id, "user", f"c{i}"))
            for i in range(4)
        ]
        await asyncio.sleep(0.3)  # let them reach the server and block on the lock
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert await idle_in_transaction(admin, name) == 0
    message = await store.add_message(user_id, conversation.id, "user", "after")
    assert message.content == "after"


async def test_killed_backends_fail_only_in_flight_calls(
    engine_factory: object, admin: asyncpg.Connection, make_user: MakeUser
) -> None:
    """100 sessions append while their backends are killed: typed retryable errors, recovery,
    and every acknowledged message stored exactly once, in a gap-free sequence."""
    name = f"faults-{uuid.uuid4().hex[:8]}"
    engine = engine_factory(application_name=name)  # type: ignore[operator]
    store = ChatStore(engine)
    users = [await make_user() for _ in range(10)]
    conversations = [(u, (await store.create_conversation(u)).id) for u in users for _ in range(10)]
    acknowledged: dict[uuid.UUID, list[uuid.UUID]] = {c: [] for _, c in conversations}
    errors: list[type[BaseException]] = []
    stop = asyncio.Event()

    async def session(user: str, conversation: uuid.UUID) -> None:
        n = 0
        while not stop.is_set():
            message_id = uuid.uuid4()
            while True:  # retry with the same message_id until acknowledged
                try:
                    await store.add_message(
                        user, conversation, "user", f"n{n}", message_id=message_id
                    )
                    break
                except TransientError as exc:
                    errors.append(type(exc))
                    await asyncio.sleep(0.01)
            acknowledged[conversation].append(message_id)
            try:
                await store.get_history(user, conversation, limit=5)
            except TransientError as exc:
                errors.append(type(exc))
            n += 1

    async def killer() -> list[float]:
        recoveries = []
        for _ in range(3):
            await asyncio.sleep(0.4)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1",
                name,
            )
            killed_at = time.perf_counter()
            probe_user, probe_conversation = conversations[0]
            while True:
                try:
                    await store.get_conversation(probe_user, probe_conversation)
                    break
                except TransientError:
                    await asyncio.sleep(0.01)
            recoveries.append(time.perf_counter() - killed_at)
        stop.set()
        return recoveries

    sessions = [asyncio.create_task(session(u, c)) for u, c in conversations]
    recoveries = await killer()
    await asyncio.wait_for(asyncio.gather(*sessions), timeout=60)

    assert set(errors) <= {DatabaseUnavailable}, set(errors)
    total = sum(len(ids) for ids in acknowledged.values())
    print(
        f"\nkilled backends 3x under 100 sessions: {total} acknowledged appends, "
        f"{len(errors)} transient errors, recovery {max(recoveries) * 1000:.1f} ms at worst"
    )
    for conversation, ids in acknowledged.items():
        rows = await admin.fetch(
            "SELECT id, seq FROM messages WHERE conversation_id = $1 ORDER BY seq", conversation
        )
        assert [r["id"] for r in rows] == ids  # stored once each, in acknowledgement order
        assert [r["seq"] for r in rows] == list(range(1, len(ids) + 1))
    assert max(recoveries) < 5.0

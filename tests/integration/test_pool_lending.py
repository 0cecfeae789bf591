"""ChatStore's direct use of the pool (chat_storage/pool.py, ChatStore._fetch).

A ready idle connection is lent straight off the queue, without SQLAlchemy's
fairy, when nobody listens to the pool's checkout and checkin events; every
other case goes through ``pool.connect()``. Both must keep the pool's counts,
its events and its connections exactly as a normal checkout would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import base as pool_base
from sqlalchemy.util.queue import Empty

from chat_storage import ChatStore, StoreMetrics, create_engine

EngineFactory = Callable[..., AsyncEngine]


@pytest.fixture
async def make_engine(database_url: str) -> AsyncIterator[EngineFactory]:
    """Engines on the test database; disposed after the test."""
    made: list[AsyncEngine] = []

    def make(**overrides: Any) -> AsyncEngine:
        engine = create_engine(database_url=database_url, **overrides)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        await engine.dispose()


@pytest.fixture
def fairy_checkouts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts checkouts that build a SQLAlchemy fairy (``pool.connect()``)."""
    counter = [0]
    original = pool_base._ConnectionFairy._checkout

    def counting(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(pool_base._ConnectionFairy, "_checkout", counting)
    return counter


async def locked(database_url: str, conversation_id: uuid.UUID) -> asyncpg.Connection:
    """A transaction holding the conversation's row lock: appends to it wait."""
    conn = await asyncpg.connect(database_url)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)
    return conn


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in 5 s")


@asynccontextmanager
async def caller_in_line(
    store: ChatStore, database_url: str, user_id: str, conversation_id: uuid.UUID
) -> AsyncIterator[asyncio.Task[Any]]:
    """A pool of one connection, held by an append blocked on the conversation's row
    lock, and a second caller waiting in line for it (yielded). The lock is released
    on leaving; the append then completes."""
    pool: Any = store.engine.sync_engine.pool
    blocker = await locked(database_url, conversation_id)
    try:
        holder = asyncio.create_task(store.add_message(user_id, conversation_id, "user", "a"))
        await until(lambda: pool.checkedout() == 1)
        in_line = asyncio.create_task(store.get_conversation(user_id, conversation_id))
        await until(lambda: pool._pool.waiting() == 1)
        yield in_line
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    await holder


async def test_idle_connection_is_lent_without_a_fairy(
    make_engine: EngineFactory, database_url: str, user_id: str, fairy_checkouts: list[int]
) -> None:
    """Warm pool, no listeners: no fairy, and the pool counts the lent connection."""
    engine = make_engine(pool_size=2, max_overflow=0)
    pool: Any = engine.sync_engine.pool
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)  # opens the first connection
    fairy_checkouts[0] = 0
    for _ in range(5):
        await store.get_history(user_id, conversation.id)
    assert fairy_checkouts[0] == 0
    blocker = await locked(database_url, conversation.id)
    try:
        append = asyncio.create_task(store.add_message(user_id, conversation.id, "user", "x"))
        await until(lambda: pool.checkedout() == 1)
        assert pool.checkedin() == 0  # the only opened connection is lent
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert (await append).seq == 1
    assert pool.checkedout() == 0 and pool.checkedin() == 1
    assert fairy_checkouts[0] == 0


async def test_checkout_listeners_see_every_operation(
    make_engine: EngineFactory, user_id: str, fairy_checkouts: list[int]
) -> None:
    """With checkout/checkin listeners on the engine, every operation fires both once."""
    engine = make_engine(pool_size=2, max_overflow=0)
    seen: list[str] = []
    event.listen(engine.sync_engine, "checkout", lambda *_: seen.append("checkout"))
    event.listen(engine.sync_engine, "checkin", lambda *_: seen.append("checkin"))
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    seen.clear()
    fairy_checkouts[0] = 0
    for _ in range(3):
        await store.get_history(user_id, conversation.id)
    assert seen == ["checkout", "checkin"] * 3
    assert fairy_checkouts[0] == 3


async def server_connections(admin: asyncpg.Connection, name: str, expected: int) -> int:
    """The server's connections with application_name ``name``, once it shows
    ``expected`` (a closed connection leaves pg_stat_activity a moment later)."""
    opened = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
    for _ in range(100):
        if await admin.fetchval(opened, name) == expected:
            break
        await asyncio.sleep(0.02)
    count: int = await admin.fetchval(opened, name)
    return count


async def open_overflow(store: ChatStore, database_url: str, user_id: str) -> None:
    """Make a pool of size 1 open its overflow connection, then return both."""
    pool: Any = store.engine.sync_engine.pool
    conversation = await store.create_conversation(user_id)
    other = await store.create_conversation(user_id)
    blocker = await locked(database_url, conversation.id)
    try:
        waiting = asyncio.create_task(store.add_message(user_id, conversation.id, "user", "a"))
        await until(lambda: pool.checkedout() == 1)
        await store.add_message(user_id, other.id, "user", "b")  # opens the overflow one
        assert pool.overflow() == 1
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    await waiting


@pytest.mark.parametrize("fairy", [False, True], ids=["lent", "fairy"])
async def test_overflow_connection_stays_idle_after_a_burst(
    make_engine: EngineFactory,
    database_url: str,
    admin: asyncpg.Connection,
    user_id: str,
    fairy: bool,
) -> None:
    """By default (pool_overflow_idle_timeout 30 s) an overflow connection
    returned to a full idle queue stays open, and the next burst reuses it."""
    name = f"lend-{uuid.uuid4().hex[:8]}"
    engine = make_engine(pool_size=1, max_overflow=1, application_name=name)
    if fairy:  # a checkin listener: returns go through QueuePool's own checkin
        event.listen(engine.sync_engine, "checkin", lambda *_: None)
    connects: list[object] = []
    event.listen(engine.sync_engine, "connect", lambda *_: connects.append(None))
    pool: Any = engine.sync_engine.pool
    store = ChatStore(engine)
    await open_overflow(store, database_url, user_id)
    assert pool.checkedout() == 0 and pool.checkedin() == 2 and pool.overflow() == 1
    assert await server_connections(admin, name, 2) == 2
    connects.clear()
    await open_overflow(store, database_url, user_id)
    assert connects == []  # both were idle, neither was reopened
    assert pool.checkedin() == 2 and pool.overflow() == 1


async def test_idle_overflow_is_closed_once_the_pool_was_full_for_the_timeout(
    make_engine: EngineFactory, database_url: str, admin: asyncpg.Connection, user_id: str
) -> None:
    """Once the idle queue has held pool_size connections or more for
    pool_overflow_idle_timeout, a returned overflow connection is closed."""
    name = f"lend-{uuid.uuid4().hex[:8]}"
    engine = make_engine(
        pool_size=1, max_overflow=1, application_name=name, pool_overflow_idle_timeout=0.2
    )
    pool: Any = engine.sync_engine.pool
    store = ChatStore(engine)
    await open_overflow(store, database_url, user_id)
    conversation = await store.create_conversation(user_id)
    assert pool.checkedin() == 2 and pool.overflow() == 1  # returned within the timeout
    await asyncio.sleep(0.3)  # the queue has held 1 or 2 since the burst ended
    await store.get_history(user_id, conversation.id)
    assert pool.checkedout() == 0 and pool.checkedin() == 1 and pool.overflow() == 0
    assert await server_connections(admin, name, 1) == 1


async def test_overflow_connection_is_closed_when_returned_to_a_full_pool(
    make_engine: EngineFactory, database_url: str, admin: asyncpg.Connection, user_id: str
) -> None:
    """With pool_overflow_idle_timeout=0, an overflow connection returned with
    the pool's idle queue full is closed, as QueuePool's own checkin would."""
    name = f"lend-{uuid.uuid4().hex[:8]}"
    engine = make_engine(
        pool_size=1, max_overflow=1, application_name=name, pool_overflow_idle_timeout=0
    )
    pool: Any = engine.sync_engine.pool
    await open_overflow(ChatStore(engine), database_url, user_id)
    assert pool.checkedout() == 0 and pool.checkedin() == 1 and pool.overflow() == 0
    assert await server_connections(admin, name, 1) == 1


async def test_caller_cancelled_in_line_loses_no_connection(
    make_engine: EngineFactory, database_url: str, user_id: str
) -> None:
    """A caller cancelled while waiting for a connection leaves the pool whole."""
    engine = make_engine(pool_size=1, max_overflow=0)
    pool: Any = engine.sync_engine.pool
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    async with caller_in_line(store, database_url, user_id, conversation.id) as in_line:
        in_line.cancel()
        with pytest.raises(asyncio.CancelledError):
            await in_line
    assert pool.checkedout() == 0 and pool._pool.waiting() == 0
    got = await asyncio.wait_for(store.get_conversation(user_id, conversation.id), timeout=5)
    assert got.id == conversation.id


async def test_connection_past_pool_recycle_is_replaced(
    make_engine: EngineFactory, user_id: str
) -> None:
    """A lent connection older than pool_recycle is closed and reopened, not used."""
    engine = make_engine(pool_size=1, max_overflow=0, pool_recycle=1)
    pool: Any = engine.sync_engine.pool
    store = ChatStore(engine)
    await store.create_conversation(user_id)
    first = pool._pool.peek().driver_connection.get_server_pid()
    await asyncio.sleep(1.1)
    await store.list_conversations(user_id)
    assert pool._pool.peek().driver_connection.get_server_pid() != first


async def test_cancellation_racing_the_pool_timeout_stays_a_cancellation(
    make_engine: EngineFactory, database_url: str, user_id: str
) -> None:
    """A caller cancelled in the same turn as its wait expires gets CancelledError,
    not PoolTimeout, and no timeout is counted."""
    engine = make_engine(pool_size=1, max_overflow=0)
    pool: Any = engine.sync_engine.pool
    metrics = StoreMetrics(CollectorRegistry())
    store = ChatStore(engine, metrics=metrics)
    conversation = await store.create_conversation(user_id)
    async with caller_in_line(store, database_url, user_id, conversation.id) as in_line:
        pool._pool._waiters[0].set_exception(Empty())  # what the expiry timer does
        in_line.cancel()  # before the waiting task runs again
        with pytest.raises(asyncio.CancelledError):
            await in_line
    assert metrics.pool_timeouts._value.get() == 0
    assert pool.checkedout() == 0

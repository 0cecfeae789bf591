"""Every operation has a deadline: a silent connection, a lock, a full pool.

Before, ``command_timeout`` was None and nothing else bounded an operation: a
connection that went silent (a NAT or a cloud proxy dropping it without a FIN)
hung ``get_history`` for good, holding its pooled connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import (
    ChatStore,
    InvalidInput,
    OperationTimeout,
    StoreMetrics,
    TransientError,
    create_engine,
)

# How late a deadline may be met. What the tests tell apart is "met" from "never"
# (a hang) or "the 30 s default": a busy machine delays the loop's turn, so the
# margin is wide enough that load cannot fail a correct run.
MARGIN = 2.0


class BlackholeProxy:
    """A loopback TCP proxy whose open connections can be made to go silent.

    After :meth:`blackhole`, bytes already flowing on the connections open at
    that moment are swallowed in both directions and nothing is closed (no FIN,
    no RST), as a NAT that forgot the connection; new connections pass.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[dict[str, bool]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        for link in self._links:
            link["silent"] = True

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers += [writer, up_writer]
        link = {"silent": False}
        self._links.append(link)
        tasks = [
            asyncio.create_task(self._pipe(reader, up_writer, link)),
            asyncio.create_task(self._pipe(up_reader, writer, link)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, link: dict[str, bool]
    ) -> None:
        while data := await reader.read(65536):
            if not link["silent"]:
                writer.write(data)
                await writer.drain()
        if link["silent"]:
            await asyncio.Event().wait()  # a silent peer never says goodbye
        writer.close()


@pytest.fixture
async def proxy(pg_server: object, database_url: str) -> AsyncIterator[BlackholeProxy]:
    url = make_url(database_url)
    proxy = BlackholeProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


def via(proxy: BlackholeProxy, database_url: str) -> str:
    return (
        make_url(database_url)
        .set(host="127.0.0.1", port=proxy.port)
        .render_as_string(hide_password=False)
    )


@pytest.fixture
async def engines(database_url: str) -> AsyncIterator[list[AsyncEngine]]:
    made: list[AsyncEngine] = []
    yield made
    for engine in made:
        await engine.dispose()


async def test_silent_connection_meets_its_deadline(
    proxy: BlackholeProxy, database_url: str, user_id: str, engines: list[AsyncEngine]
) -> None:
    """A connection gone silent mid-operation: OperationTimeout at the deadline, the
    connection discarded, and the next operation succeeds on a fresh one."""
    engine = create_engine(
        database_url=via(proxy, database_url), pool_size=1, max_overflow=1, operation_timeout=1.0
    )
    engines.append(engine)
    registry = CollectorRegistry()
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    store = ChatStore(engine, metrics=StoreMetrics(registry), tracer_provider=provider)
    conversation = await store.create_conversation(user_id)
    await store.add_message(user_id, conversation.id, "user", "hello")
    exporter.clear()

    proxy.blackhole()
    started = time.perf_counter()
    with pytest.raises(OperationTimeout) as raised:
        await asyncio.wait_for(store.get_history(user_id, conversation.id), timeout=10)
    overshoot = time.perf_counter() - started - 1.0
    print(f"\nsilent connection: deadline 1.0 s met {overshoot * 1000:+.0f} ms late")
    assert isinstance(raised.value, TransientError) and raised.value.retryable
    assert -0.01 < overshoot < MARGIN

    labels = {"operation": "get_history", "error_type": "OperationTimeout"}
    assert registry.get_sample_value("chat_storage_errors_total", labels) == 1
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None and span.attributes["error.type"] == "OperationTimeout"

    # The silent connection is not handed out again: the next call succeeds.
    page = await store.get_history(user_id, conversation.id, timeout=2.0)
    assert [m.content for m in page.items] == ["hello"]
    pool = engine.sync_engine.pool
    for _ in range(100):  # the silent one is dropped after its settle bound
        if pool.checkedout() == 0:  # type: ignore[attr-defined]
            break
        await asyncio.sleep(0.1)
    assert pool.checkedout() == 0  # type: ignore[attr-defined]
    assert (await store.get_history(user_id, conversation.id)).items
    provider.shutdown()


async def hold_lock(url: str, conversation_id: uuid.UUID) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)
    return conn


async def active_statements(url: str, application_name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE application_name = $1 AND state = 'active'",
                application_name,
            )
        )
    finally:
        await conn.close()


async def test_per_call_timeout_cancels_the_statement_on_the_server(
    database_url: str, user_id: str, engines: list[AsyncEngine]
) -> None:
    """``timeout=`` overrides operation_timeout; the timed-out append is cancelled on the
    server (not stored when the lock goes) and its retry is stored once."""
    name = f"deadline-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        database_url=database_url, pool_size=1, max_overflow=0, application_name=name
    )
    engines.append(engine)
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    message_id = uuid.uuid4()
    blocker = await hold_lock(database_url, conversation.id)
    try:
        started = time.perf_counter()
        with pytest.raises(OperationTimeout):
            await store.add_message(
                user_id, conversation.id, "user", "late", message_id=message_id, timeout=0.3
            )
        overshoot = time.perf_counter() - started - 0.3
        print(f"\nlocked append: deadline 0.3 s met {overshoot * 1000:+.0f} ms late")
        assert -0.01 < overshoot < MARGIN
        await asyncio.sleep(0.2)  # the settle: one round trip
        assert await active_statements(database_url, name) == 0
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    await asyncio.sleep(0.1)
    assert (await store.get_history(user_id, conversation.id)).items == []
    stored = await store.add_message(
        user_id, conversation.id, "user", "late", message_id=message_id
    )
    again = await store.add_message(user_id, conversation.id, "user", "late", message_id=message_id)
    assert stored.seq == again.seq == 1


async def test_deadline_covers_the_wait_for_a_connection(
    database_url: str, user_id: str, engines: list[AsyncEngine]
) -> None:
    """A deadline shorter than pool_timeout ends the wait for a connection."""
    engine = create_engine(database_url=database_url, pool_size=1, max_overflow=0, pool_timeout=30)
    engines.append(engine)
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    blocker = await hold_lock(database_url, conversation.id)
    try:
        holder = asyncio.create_task(store.add_message(user_id, conversation.id, "user", "a"))
        await asyncio.sleep(0.2)  # it holds the only connection, waiting on the lock
        started = time.perf_counter()
        with pytest.raises(OperationTimeout):
            await store.get_history(user_id, conversation.id, timeout=0.3)
        overshoot = time.perf_counter() - started - 0.3
        assert -0.01 < overshoot < MARGIN
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert (await holder).seq == 1


async def test_timeout_must_be_positive(store: ChatStore, user_id: str) -> None:
    """A zero or negative per-call timeout is refused as a caller mistake."""
    with pytest.raises(InvalidInput):
        await store.create_conversation(user_id, timeout=0)


async def test_pooled_connections_keep_alive(database_url: str, engines: list[AsyncEngine]) -> None:
    """Both ends probe a silent peer: the client's socket and the server's session."""
    engine = create_engine(database_url=database_url, pool_size=1, max_overflow=0)
    engines.append(engine)
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("SHOW tcp_keepalives_idle")).scalar() == "30"
        raw = await conn.get_raw_connection()
        transport = raw.driver_connection._transport  # type: ignore[union-attr]
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        with contextlib.suppress(AttributeError):  # Linux only
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30


async def test_shorter_deadline_than_one_in_flight(
    database_url: str, user_id: str, engines: list[AsyncEngine]
) -> None:
    """A call whose deadline comes before one already in flight still meets it."""
    name = f"deadline-{uuid.uuid4().hex[:8]}"
    engine = create_engine(
        database_url=database_url, pool_size=2, max_overflow=0, application_name=name
    )
    engines.append(engine)
    store = ChatStore(engine)
    conversation = await store.create_conversation(user_id)
    blocker = await hold_lock(database_url, conversation.id)
    try:
        patient = asyncio.create_task(store.add_message(user_id, conversation.id, "user", "a"))
        await asyncio.sleep(0.2)  # in flight, its deadline 30 s away
        started = time.perf_counter()
        with pytest.raises(OperationTimeout):
            await store.add_message(user_id, conversation.id, "user", "b", timeout=0.3)
        overshoot = time.perf_counter() - started - 0.3
        assert -0.01 < overshoot < MARGIN
        assert not patient.done()
    finally:
        await blocker.execute("ROLLBACK")
        await blocker.close()
    assert (await patient).seq == 1
    # The timed-out caller gets its error at once while the cancel is still on its
    # way; if the lock goes first, "b" commits. That is the documented contract (a
    # timed-out append may or may not be stored; a retry with its message_id
    # stores it once), so "b" is allowed once, after "a", never twice.
    stored = [m.content for m in (await store.get_history(user_id, conversation.id)).items]
    assert stored in (["a"], ["a", "b"])

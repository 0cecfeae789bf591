"""Metrics and spans: exact samples on a fresh registry, span names, parentage, attributes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import (
    LATENCY_BUCKETS,
    ChatStore,
    ContentTooLong,
    ConversationNotFound,
    PoolTimeout,
    StoreMetrics,
    UserNotFound,
    create_engine,
    instrument_statements,
    queries,
)
from tests.conftest import MakeUser


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
async def small_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of one connection, no overflow, 0.2 s pool timeout."""
    engine = create_engine(database_url=database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    yield engine
    await engine.dispose()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_bucket_edges_sit_on_the_targets() -> None:
    """0.05 s and 0.1 s are bucket edges, with at least five edges below 10 ms."""
    assert 0.05 in LATENCY_BUCKETS and 0.1 in LATENCY_BUCKETS
    assert len([b for b in LATENCY_BUCKETS if b < 0.01]) >= 5
    assert {0.002, 0.004} <= set(LATENCY_BUCKETS)


def test_importing_registers_nothing() -> None:
    """Creating metrics needs an explicit StoreMetrics; the global registry holds none of ours."""
    from prometheus_client import REGISTRY

    assert not any(m.name.startswith("chat_storage") for m in REGISTRY.collect()), (
        "import registered metrics"
    )


async def test_latency_and_outcomes_are_counted_exactly(
    engine: AsyncEngine, registry: CollectorRegistry, make_user: MakeUser
) -> None:
    """Each call is one observation, labelled by operation and outcome; errors by class."""
    store = ChatStore(engine, metrics=StoreMetrics(registry))
    user = await make_user()
    conversation = await store.create_conversation(user)
    message_id = uuid.uuid4()
    for _ in range(2):
        await store.add_message(user, conversation.id, "user", "hi", message_id=message_id)
    await store.add_message(user, conversation.id, "assistant", "hello")
    with pytest.raises(ConversationNotFound):
        await store.get_conversation(user, uuid.uuid4())
    with pytest.raises(ContentTooLong):
        await store.add_message(user, conversation.id, "user", "x" * 1001)
    with pytest.raises(UserNotFound):
        await store.create_conversation("nobody-" + str(uuid.uuid4()))

    name = "chat_storage_operation_duration_seconds_count"
    assert sample(registry, name, operation="add_message", outcome="ok") == 3
    assert sample(registry, name, operation="create_conversation", outcome="ok") == 1
    assert sample(registry, name, operation="create_conversation", outcome="error") == 1
    assert sample(registry, name, operation="get_conversation", outcome="error") == 1
    # Rejected before the database: counted as an error and a reject, not timed.
    assert sample(registry, name, operation="add_message", outcome="error") == 0
    errors = "chat_storage_errors_total"
    assert (
        sample(registry, errors, operation="get_conversation", error_type="ConversationNotFound")
        == 1
    )
    assert sample(registry, errors, operation="add_message", error_type="ContentTooLong") == 1
    assert sample(registry, errors, operation="create_conversation", error_type="UserNotFound") == 1
    rejects = "chat_storage_validation_rejects_total"
    assert sample(registry, rejects, operation="add_message", error_type="ContentTooLong") == 1
    assert sample(registry, "chat_storage_idempotent_replays_total") == 1
    inf_bucket = sample(
        registry,
        "chat_storage_operation_duration_seconds_bucket",
        operation="add_message",
        outcome="ok",
        le="+Inf",
    )
    assert inf_bucket == 3


async def test_pool_gauges_follow_a_held_checkout(
    small_engine: AsyncEngine, registry: CollectorRegistry
) -> None:
    """While a connection is held the gauges say 1 checked out, 0 idle; after, 0 and 1."""
    ChatStore(small_engine, metrics=StoreMetrics(registry))
    assert sample(registry, "chat_storage_pool_size") == 1
    assert sample(registry, "chat_storage_pool_max_overflow") == 0
    state = "chat_storage_pool_connections"
    async with small_engine.connect() as conn:
        await conn.get_raw_connection()
        assert sample(registry, state, state="checked_out") == 1
        assert sample(registry, state, state="idle") == 0
    assert sample(registry, state, state="checked_out") == 0
    assert sample(registry, state, state="idle") == 1
    assert sample(registry, "chat_storage_pool_connect_seconds_count") == 1


async def test_a_connection_lent_at_once_is_a_wait_of_zero(
    small_engine: AsyncEngine, registry: CollectorRegistry, user_id: str
) -> None:
    """An idle connection lent without waiting counts a wait of exactly 0 (first
    bucket, the sum unchanged); a caller who waits for it counts the wait."""
    store = ChatStore(small_engine, metrics=StoreMetrics(registry))
    conversation = await store.create_conversation(user_id)  # connects: a real wait
    count = sample(registry, "chat_storage_pool_wait_seconds_count")
    total = sample(registry, "chat_storage_pool_wait_seconds_sum")
    first = sample(registry, "chat_storage_pool_wait_seconds_bucket", le="0.0001")
    for _ in range(3):
        await store.get_conversation(user_id, conversation.id)
    assert sample(registry, "chat_storage_pool_wait_seconds_count") == count + 3
    assert sample(registry, "chat_storage_pool_wait_seconds_sum") == total
    assert sample(registry, "chat_storage_pool_wait_seconds_bucket", le="0.0001") == first + 3

    async def hold_briefly() -> None:
        async with small_engine.connect() as held:
            await held.get_raw_connection()
            await asyncio.sleep(0.05)

    holder = asyncio.create_task(hold_briefly())
    await asyncio.sleep(0.01)  # the holder has the only connection
    await store.get_conversation(user_id, conversation.id)
    await holder
    assert sample(registry, "chat_storage_pool_wait_seconds_count") == count + 4
    assert sample(registry, "chat_storage_pool_wait_seconds_sum") >= total + 0.03


async def test_saturated_pool_waits_then_times_out(
    small_engine: AsyncEngine, registry: CollectorRegistry, user_id: str
) -> None:
    """With the only connection held, a call waits pool_timeout, then raises PoolTimeout."""
    store = ChatStore(small_engine, metrics=StoreMetrics(registry))
    conversation = await store.create_conversation(user_id)
    async with small_engine.connect() as held:
        await held.get_raw_connection()
        with pytest.raises(PoolTimeout):
            await store.get_conversation(user_id, conversation.id)
    assert sample(registry, "chat_storage_pool_timeouts_total") == 1
    assert sample(registry, "chat_storage_pool_wait_seconds_count") == 2
    assert sample(registry, "chat_storage_pool_wait_seconds_sum") >= 0.2
    assert (
        sample(
            registry,
            "chat_storage_errors_total",
            operation="get_conversation",
            error_type="PoolTimeout",
        )
        == 1
    )
    # The pool is healthy afterwards.
    assert (await store.get_conversation(user_id, conversation.id)).id == conversation.id


async def test_operation_span_names_and_attributes(
    engine: AsyncEngine,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    user_id: str,
) -> None:
    """One CLIENT span per operation, named after it, with the stable db attributes."""
    provider, exporter = spans
    store = ChatStore(engine, tracer_provider=provider)
    conversation = await store.create_conversation(user_id)
    await store.add_message(user_id, conversation.id, "user", "private words")
    await store.get_history(user_id, conversation.id)
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["create_conversation", "add_message", "get_history"]
    add = exporter.get_finished_spans()[1]
    assert add.attributes is not None
    assert add.attributes["db.system.name"] == "postgresql"
    assert add.attributes["db.operation.name"] == "add_message"
    assert add.attributes["db.collection.name"] == "messages"


async def test_failed_operation_span_carries_sqlstate(
    engine: AsyncEngine, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """A database error marks the span failed with db.response.status_code = SQLSTATE."""
    provider, exporter = spans
    store = ChatStore(engine, tracer_provider=provider)
    with pytest.raises(UserNotFound):
        await store.create_conversation("ghost-" + str(uuid.uuid4()))
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["db.response.status_code"] == "23503"
    assert span.attributes["error.type"] == "UserNotFound"
    assert not span.status.is_ok


async def test_statement_spans_are_children_of_the_callers_span(
    database_url: str, spans: tuple[TracerProvider, InMemorySpanExporter], user_id: str
) -> None:
    """Query functions on an instrumented engine give one child span per statement."""
    provider, exporter = spans
    engine = create_engine(database_url=database_url, pool_size=1)
    tracer = instrument_statements(engine, tracer_provider=provider)
    try:
        with provider.get_tracer("test").start_as_current_span("handler") as handler:
            async with engine.begin() as conn:
                conversation = await queries.create_conversation(conn, user_id=user_id)
                await queries.get_conversation(
                    conn, user_id=user_id, conversation_id=conversation.id
                )
        statements = [s for s in exporter.get_finished_spans() if s.name != "handler"]
        names = [s.name.split()[0] for s in statements]
        assert names.count("INSERT") == 1 and names.count("SELECT") == 1, names
        assert all(
            s.parent is not None and s.parent.span_id == handler.get_span_context().span_id
            for s in statements
        )
    finally:
        tracer.remove()
        await engine.dispose()


async def test_hot_path_operation_span_carries_the_statement(
    engine: AsyncEngine, spans: tuple[TracerProvider, InMemorySpanExporter], user_id: str
) -> None:
    """ChatStore's one statement is described on its operation span, placeholders only."""
    provider, exporter = spans
    store = ChatStore(engine, tracer_provider=provider)
    await store.list_conversations(user_id)
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    text = str(span.attributes["db.query.text"])
    assert text.startswith("SELECT") and "$1" in text and user_id not in text


async def test_query_function_gets_one_statement_span(
    database_url: str, spans: tuple[TracerProvider, InMemorySpanExporter], user_id: str
) -> None:
    """A plain query function on an instrumented engine yields one span per statement."""
    provider, exporter = spans
    engine = create_engine(database_url=database_url, pool_size=1)
    tracer = instrument_statements(engine, tracer_provider=provider)
    try:
        async with engine.connect() as conn:
            await queries.list_conversations(conn, user_id=user_id)
        assert len(exporter.get_finished_spans()) == 1
    finally:
        tracer.remove()
        await engine.dispose()


async def test_no_user_data_in_labels_or_attributes(
    engine: AsyncEngine,
    registry: CollectorRegistry,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    user_id: str,
) -> None:
    """User ids, conversation ids and message text never appear in samples or spans."""
    provider, exporter = spans
    store = ChatStore(engine, metrics=StoreMetrics(registry), tracer_provider=provider)
    conversation = await store.create_conversation(user_id)
    secret = "my card number is 4111"
    await store.add_message(user_id, conversation.id, "user", secret)
    with pytest.raises(ConversationNotFound):
        await store.get_history(user_id, uuid.uuid4())
    exposition = generate_latest(registry).decode()
    forbidden = (user_id, str(conversation.id), secret)
    for value in forbidden:
        assert value not in exposition
    for span in exporter.get_finished_spans():
        text = repr(dict(span.attributes or {})) + span.name + repr(span.status.description)
        for value in forbidden:
            assert value not in text


async def test_exemplars_carry_the_trace_id(
    engine: AsyncEngine,
    registry: CollectorRegistry,
    spans: tuple[TracerProvider, InMemorySpanExporter],
    user_id: str,
) -> None:
    """Inside a sampled trace, the latency observation carries its trace id as an exemplar."""
    provider, exporter = spans
    store = ChatStore(engine, metrics=StoreMetrics(registry), tracer_provider=provider)
    await store.create_conversation(user_id)
    (span,) = exporter.get_finished_spans()
    trace_id = format(span.context.trace_id, "032x")
    exposition = generate_latest(registry).decode()
    assert f'trace_id="{trace_id}"' in exposition


async def test_cancelled_calls_leave_no_connection_checked_out(
    small_engine: AsyncEngine, registry: CollectorRegistry, user_id: str
) -> None:
    """Cancelling an operation mid-flight returns its connection; the pool keeps working."""
    store = ChatStore(small_engine, metrics=StoreMetrics(registry))
    conversation = await store.create_conversation(user_id)
    for _ in range(5):
        task = asyncio.create_task(store.get_history(user_id, conversation.id))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sample(registry, "chat_storage_pool_connections", state="checked_out") == 0
    assert (await store.get_conversation(user_id, conversation.id)).id == conversation.id


GLOBAL_SDK_SCRIPT = """
import asyncio, sys, time
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from chat_storage import ChatStore, create_engine

async def main(url, user):
    store = ChatStore(create_engine(database_url=url, pool_size=1))
    await store.list_conversations(user)  # no SDK yet: nothing to record it
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    deadline = time.monotonic() + 10
    while not exporter.get_finished_spans() and time.monotonic() < deadline:
        await store.list_conversations(user)
        await asyncio.sleep(0.05)
    print(sorted({s.name for s in exporter.get_finished_spans()}))
    await store.engine.dispose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def test_global_sdk_installed_after_the_store_is_picked_up(store_url: str, user_id: str) -> None:
    """A store built before the application installs its global SDK starts
    tracing once it is installed (looked up again at most once a second).

    In a subprocess: the global provider can be set only once per process.
    """
    done = subprocess.run(
        [sys.executable, "-c", GLOBAL_SDK_SCRIPT, store_url, user_id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['list_conversations']"


def _caller(sampled: bool) -> trace.Span:
    """A caller's span as it arrives from another service (a remote parent)."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(
        SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=flags)
    )


async def test_no_span_under_an_unsampled_caller(
    engine: AsyncEngine, spans: tuple[TracerProvider, InMemorySpanExporter], user_id: str
) -> None:
    """Under a caller's unsampled span no operation span is started; under a
    sampled one it is a child of the caller's; opting in traces both."""
    provider, exporter = spans
    store = ChatStore(engine, tracer_provider=provider)
    with trace.use_span(_caller(sampled=False)):
        await store.list_conversations(user_id)
    assert exporter.get_finished_spans() == ()
    with trace.use_span(_caller(sampled=True)):
        await store.list_conversations(user_id)
    (child,) = exporter.get_finished_spans()
    assert child.parent is not None and child.parent.span_id == 0x5678
    # A sampler that records children of unsampled parents needs the opt-in.
    always = TracerProvider(sampler=ALWAYS_ON)
    always.add_span_processor(SimpleSpanProcessor(exporter))
    eager = ChatStore(engine, tracer_provider=always, spans_under_unsampled_parents=True)
    with trace.use_span(_caller(sampled=False)):
        await eager.list_conversations(user_id)
    always.shutdown()
    assert len(exporter.get_finished_spans()) == 2


def test_unsampled_check_reads_the_context_as_the_api_does() -> None:
    """The fast read of the current span (the API's private context key) gives
    the public get_current_span()'s answer, and is the one in use."""
    from opentelemetry import context

    from chat_storage import tracing

    assert tracing._FAST, "the API moved its context, span key or SpanContext: fast path lost"
    provider = TracerProvider()
    recording = provider.get_tracer("test").start_span("caller")
    cases = {
        "no span": (None, False),
        "unsampled caller": (_caller(sampled=False), True),
        "sampled caller": (_caller(sampled=True), False),
        "invalid span": (trace.INVALID_SPAN, False),
        "recording SDK span": (recording, False),
    }
    for name, (span, expected) in cases.items():
        ctx = context.Context() if span is None else trace.set_span_in_context(span)
        token = context.attach(ctx)
        try:
            assert tracing.under_unsampled_span() is expected, name
            assert tracing.under_unsampled_span(fast=False) is expected, name
        finally:
            context.detach(token)
    recording.end()
    provider.shutdown()


def test_store_observes_into_the_series_of_the_thread_it_runs_on(
    database_url: str, registry: CollectorRegistry, user_id: str
) -> None:
    """A store whose engine moves to another thread's event loop observes into
    that thread's series; the counts add up across both."""
    from chat_storage.histogram import ShardedHistogram

    metrics = StoreMetrics(registry)
    engine = create_engine(database_url=database_url)
    store = ChatStore(engine, metrics=metrics)
    first_done, finished = threading.Event(), threading.Event()

    async def one_call() -> None:
        await store.list_conversations(user_id)
        await engine.dispose()  # its connections belong to this thread's loop

    def first() -> None:
        asyncio.run(one_call())
        first_done.set()
        finished.wait()  # stays alive, so the second thread gets another id

    def second() -> None:
        asyncio.run(one_call())
        finished.set()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_done.wait(timeout=30)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=30)
    labels = {"operation": "list_conversations", "outcome": "ok"}
    assert sample(registry, "chat_storage_operation_duration_seconds_count", **labels) == 2
    assert sample(registry, "chat_storage_pool_wait_seconds_count") == 2
    family = metrics.operation_duration
    assert isinstance(family, ShardedHistogram)
    # One series per thread that observed: none was written by two threads (the
    # building thread's series, made at zero so the first call counts, stays empty).
    shards = family._series[("list_conversations", "ok")]
    assert len([s for s in shards if sum(s.counts)]) == 2

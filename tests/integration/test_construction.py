"""Building a ChatStore per request, and StoreMetrics more than once, duplicates nothing.

Web frameworks and agent SDKs build their storage object per request or per
session; the metrics and pool listeners belong to the engine and the registry,
so the ten-thousandth store must leave them as the first one did.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import ChatStore, StoreMetrics, create_engine, observe_pool
from tests.conftest import MakeUser

CONSTRUCTIONS = 10_000
WARM_UP = 100
#: Growth allowed from store WARM_UP to store CONSTRUCTIONS: a leak of even
#: 100 bytes per store would be a megabyte.
MAX_GROWTH_BYTES = 1_000_000
#: The pool's events that observe_pool may listen to.
POOL_EVENTS = ("connect", "checkout", "checkin", "close", "invalidate", "soft_invalidate")


@pytest.fixture
async def small_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine of its own (pool of 5), so its gauges are this test's alone."""
    engine = create_engine(database_url, pool_size=5, max_overflow=3)
    yield engine
    await engine.dispose()


def listener_count(engine: AsyncEngine) -> int:
    """Listeners on the engine's pool and dialect events (connect timing included)."""
    pool = engine.sync_engine.pool
    dialect = engine.sync_engine.dialect
    return sum(len(getattr(pool.dispatch, name)) for name in POOL_EVENTS) + len(
        dialect.dispatch.do_connect
    )


def pool_gauges(registry: CollectorRegistry) -> dict[str, float | None]:
    return {
        "size": registry.get_sample_value("chat_storage_pool_size"),
        "max_overflow": registry.get_sample_value("chat_storage_pool_max_overflow"),
        "idle": registry.get_sample_value("chat_storage_pool_connections", {"state": "idle"}),
        "checked_out": registry.get_sample_value(
            "chat_storage_pool_connections", {"state": "checked_out"}
        ),
    }


def real_pool(engine: AsyncEngine) -> dict[str, float | None]:
    pool: Any = engine.sync_engine.pool
    return {
        "size": float(pool.size()),
        "max_overflow": float(pool._max_overflow),
        "idle": float(pool.checkedin()),
        "checked_out": float(pool.checkedout()),
    }


async def test_store_per_request_keeps_gauges_equal_to_the_pool(
    small_engine: AsyncEngine, make_user: MakeUser
) -> None:
    """10,000 stores on one engine and registry: the pool gauges still read the pool."""
    registry = CollectorRegistry()
    metrics = StoreMetrics(registry)
    user = await make_user()
    for _ in range(CONSTRUCTIONS):
        ChatStore(small_engine, metrics=metrics)
    store = ChatStore(small_engine, metrics=metrics)
    await store.create_conversation(user)  # one connection opened, now idle
    assert pool_gauges(registry) == real_pool(small_engine)
    assert pool_gauges(registry)["size"] == 5.0
    assert pool_gauges(registry)["idle"] == 1.0
    # Every store's operations are still counted once, on the one registry.
    assert (
        registry.get_sample_value(
            "chat_storage_operation_duration_seconds_count",
            {"operation": "create_conversation", "outcome": "ok"},
        )
        == 1.0
    )
    assert (
        registry.get_sample_value("chat_storage_pool_connect_seconds_count") == 1.0
    )  # one connect observed once, not once per store


async def test_store_per_request_adds_no_listeners(small_engine: AsyncEngine) -> None:
    """The pool's and dialect's listener count after the first store stays constant."""
    metrics = StoreMetrics(CollectorRegistry())
    ChatStore(small_engine, metrics=metrics)
    after_first = listener_count(small_engine)
    for _ in range(CONSTRUCTIONS):
        ChatStore(small_engine, metrics=metrics)
    assert listener_count(small_engine) == after_first


async def test_store_per_request_keeps_memory_flat(small_engine: AsyncEngine) -> None:
    """Memory held after 10,000 stores is within 1 MB of what 100 stores left."""
    metrics = StoreMetrics(CollectorRegistry())
    tracemalloc.start()
    try:
        for _ in range(WARM_UP):
            ChatStore(small_engine, metrics=metrics)
        gc.collect()
        baseline, _ = tracemalloc.get_traced_memory()
        for _ in range(CONSTRUCTIONS - WARM_UP):
            ChatStore(small_engine, metrics=metrics)
        gc.collect()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held - baseline < MAX_GROWTH_BYTES, f"grew {held - baseline} bytes"


def test_observing_an_engine_twice_counts_its_pool_once(small_engine: AsyncEngine) -> None:
    """observe_pool on an engine already observed by the same metrics does nothing."""
    registry = CollectorRegistry()
    metrics = StoreMetrics(registry)
    observe_pool(small_engine, metrics)
    listeners = listener_count(small_engine)
    observe_pool(small_engine, metrics)
    assert listener_count(small_engine) == listeners
    assert registry.get_sample_value("chat_storage_pool_size") == 5.0


def test_store_metrics_twice_on_one_registry_is_the_same_object() -> None:
    """A second StoreMetrics on a registry returns the registered one, which works."""
    registry = CollectorRegistry()
    first = StoreMetrics(registry)
    second = StoreMetrics(registry)
    assert second is first
    second.idempotent_replays.inc()
    assert registry.get_sample_value("chat_storage_idempotent_replays_total") == 1.0


DEFAULT_REGISTRY_CHECK = """
import prometheus_client
from prometheus_client import REGISTRY
import chat_storage
from chat_storage import StoreMetrics

ours = [m for m in REGISTRY.collect() if m.name.startswith("chat_storage")]
assert not ours, "import registered metrics"
first = StoreMetrics()
second = StoreMetrics()
assert second is first
second.idempotent_replays.inc()
assert REGISTRY.get_sample_value("chat_storage_idempotent_replays_total") == 1.0
text = prometheus_client.generate_latest(REGISTRY).decode()
assert text.count("# TYPE chat_storage_pool_size gauge") == 1
print("ok")
"""


def test_store_metrics_twice_on_the_default_registry() -> None:
    """``StoreMetrics()`` twice on the global registry: no DuplicateTimeseries, one set.

    In a fresh interpreter, so the global registry of this test run stays empty.
    """
    done = subprocess.run(
        [sys.executable, "-c", DEFAULT_REGISTRY_CHECK],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_unregistered_metrics_are_separate() -> None:
    """``StoreMetrics(None)`` registers nothing, so each call is a new set."""
    assert StoreMetrics(None) is not StoreMetrics(None)


def test_separate_registries_get_separate_metrics() -> None:
    """Each registry has its own families and values."""
    one, two = CollectorRegistry(), CollectorRegistry()
    StoreMetrics(one).idempotent_replays.inc()
    assert StoreMetrics(one) is not StoreMetrics(two)
    assert one.get_sample_value("chat_storage_idempotent_replays_total") == 1.0
    assert two.get_sample_value("chat_storage_idempotent_replays_total") == 0.0

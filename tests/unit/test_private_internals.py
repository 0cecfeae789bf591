"""The dependencies' private names the product relies on exist and behave as assumed.

One test per name (or per pair used together), on the installed versions: an
upgrade that renames or changes one fails here, by name, rather than as a
wrong pool count, a missing span or a skipped sample somewhere else. Each
module that uses such names lists them at its top (pool.py, tracing.py,
histogram.py); nothing else in chat_storage touches them.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import prometheus_client
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import metrics as prometheus_metrics
from sqlalchemy.pool import QueuePool
from sqlalchemy.pool.base import _ConnectionRecord

from chat_storage import tracing
from chat_storage.pool import FairAsyncQueuePool, FairQueue, capacity, max_overflow


def _creator() -> Any:
    raise AssertionError("no connection is opened in these tests")


def _pool(**kw: Any) -> FairAsyncQueuePool:
    return FairAsyncQueuePool(_creator, **kw)


# -- SQLAlchemy's pool (chat_storage/pool.py) ---------------------------------------


def test_queue_pool_builds_its_queue_from_queue_class() -> None:
    """QueuePool._queue_class is the class of QueuePool._pool (FairQueue goes in so)."""
    pool = _pool(pool_size=2, max_overflow=1)
    assert isinstance(pool._pool, FairQueue)
    assert pool._pool.maxsize == 2


def test_queue_pool_limits_live_in_max_overflow_overflow_and_timeout() -> None:
    """_max_overflow, _overflow and _timeout hold the constructor's limits and the count."""
    pool = _pool(pool_size=3, max_overflow=2, timeout=7.5)
    assert pool._max_overflow == 2
    assert pool._timeout == 7.5
    assert pool._overflow == pool.overflow() == -3  # QueuePool counts from -pool_size
    assert max_overflow(pool) == 2 and capacity(pool) == 5
    assert max_overflow(QueuePool(_creator, pool_size=1, max_overflow=-1)) == 0


def test_pool_checkout_settings_live_in_recycle_pre_ping_and_invalidate_time() -> None:
    """_recycle, _pre_ping and _invalidate_time are what a checkout consults."""
    pool = _pool(recycle=30, pre_ping=True)
    assert pool._recycle == 30
    assert pool._pre_ping is True
    assert pool._invalidate_time == 0
    assert isinstance(pool._should_log_debug(), bool)
    assert callable(pool._return_conn)


def test_connection_record_keeps_its_soft_invalidation_time() -> None:
    """_ConnectionRecord._soft_invalidate_time moves when the record is soft-invalidated."""
    record = _ConnectionRecord(_pool(), connect=False)
    assert record._soft_invalidate_time == 0
    assert record.dbapi_connection is None
    record.dbapi_connection = object()  # type: ignore[assignment]  # needs one to mark
    record.invalidate(soft=True)
    assert record._soft_invalidate_time > 0


def test_sqlalchemy_greenlet_and_queue_helpers_are_importable() -> None:
    """The undocumented helpers pool.py and _execution.py import are still there."""
    from sqlalchemy.util import await_only, greenlet_spawn
    from sqlalchemy.util.queue import Empty, Full

    assert callable(await_only) and callable(greenlet_spawn)
    assert issubclass(Empty, Exception) and issubclass(Full, Exception)


# -- OpenTelemetry's context (chat_storage/tracing.py) -------------------------------


def test_span_key_is_where_set_span_in_context_stores_the_span() -> None:
    """trace.propagation._SPAN_KEY is the key trace.set_span_in_context() writes."""
    from opentelemetry.trace.propagation import _SPAN_KEY

    span = NonRecordingSpan(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0)))
    assert trace.set_span_in_context(span).get(_SPAN_KEY) is span


def test_runtime_context_keeps_the_current_context_in_a_context_var() -> None:
    """context._RUNTIME_CONTEXT._current_context is a ContextVar holding the attached Context."""
    var = otel_context._RUNTIME_CONTEXT._current_context  # type: ignore[attr-defined]
    assert isinstance(var, ContextVar)
    span = NonRecordingSpan(SpanContext(1, 2, is_remote=True, trace_flags=TraceFlags(0)))
    with trace.use_span(span):
        assert var.get() is otel_context.get_current()
        assert tracing.under_unsampled_span() is tracing.under_unsampled_span(fast=False) is True


def test_the_fast_sampled_flag_check_is_in_use() -> None:
    """On the installed API the private layout was found (no silent fall-back)."""
    assert tracing._FAST


def test_engine_tracer_registers_through_its_hook() -> None:
    """EngineTracer._register_event_listener is the hook instrument_statements overrides."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    assert callable(EngineTracer._register_event_listener)


# -- prometheus-client (chat_storage/histogram.py) -----------------------------------


def test_use_created_follows_disable_created_metrics() -> None:
    """metrics._use_created is the flag disable/enable_created_metrics() switch."""
    assert prometheus_metrics._use_created is True
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    try:
        assert prometheus_metrics._use_created is False
    finally:
        prometheus_client.enable_created_metrics()  # type: ignore[no-untyped-call]
    assert prometheus_metrics._use_created is True

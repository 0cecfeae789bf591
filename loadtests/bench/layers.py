"""What each layer of ChatStore's path costs in client CPU, one at a time.

cProfile blurs attribution across greenlet switches, so ``--profile`` also times
each layer the store adds on top of the driver in isolation (a tight loop of
``n`` calls, ``time.process_time``): the greenlet per operation, the SQLAlchemy
pool checkout and checkin, the span (no-op and SDK), the metric observations,
and the listeners that the pool gauges and the statement instrumentation hang
on every checkout and checkin. No database round trip is involved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry
from sqlalchemy.util import greenlet_spawn

from chat_storage import StoreMetrics, create_engine
from chat_storage.metrics import observe_pool
from chat_storage.pool import FairAsyncQueuePool
from chat_storage.queries.messages import plan_add_message
from chat_storage.tracing import get_tracer, instrument_statements


class _Discard(SpanExporter):
    def export(self, spans: Any) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _per_call_us(fn: Callable[[], None], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        fn()
    return 1e6 * (time.process_time() - started) / n


async def _per_greenlet_us(fn: Callable[[], Any], n: int) -> float:
    started = time.process_time()
    for _ in range(n):
        await greenlet_spawn(fn)
    return 1e6 * (time.process_time() - started) / n


def _span_cost(tracer: trace.Tracer, attributes: dict[str, str], n: int) -> float:
    def one() -> None:
        # As ChatStore._run opens it: started, not made current, ended.
        span = tracer.start_span(
            "add_message",
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        span.get_span_context()
        span.end()

    return _per_call_us(one, n)


async def layer_costs(url: str, n: int = 5000) -> dict[str, float]:
    """Client CPU (us) per call of each layer, measured in isolation."""
    costs: dict[str, float] = {}
    engine = create_engine(database_url=url, pool_size=1, max_overflow=0)
    pool = engine.sync_engine.pool
    if not isinstance(pool, FairAsyncQueuePool):
        raise TypeError("create_engine() gives a FairAsyncQueuePool")
    async with engine.connect():
        pass  # one idle connection in the pool

    def checkout_checkin() -> None:
        fairy = pool.connect()
        driver: Any = fairy.driver_connection
        driver.is_closed()
        fairy.close()

    def lend_give_back() -> None:
        # ChatStore's path when nobody listens to pool events (chat_storage/pool.py).
        record = pool.lend()
        if record is None or not pool.give_back(record):
            raise RuntimeError("the idle connection was not lent directly")

    try:
        noop = await _per_greenlet_us(lambda: None, n)
        costs["greenlet_spawn per operation"] = noop
        plain = await _per_greenlet_us(checkout_checkin, n)
        costs["pool checkout + checkin (fairy)"] = plain - noop
        costs["pool lend + give back (ChatStore, no listeners)"] = _per_call_us(lend_give_back, n)
        attributes = plan_add_message(
            user_id="u", conversation_id="00000000-0000-0000-0000-000000000000",
            role="user", content="x",
        ).statement.span_attributes()  # fmt: skip
        costs["span, no-op tracer (ChatStore skips it)"] = _span_cost(
            get_tracer(None), attributes, n
        )
        unsampled = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0)))
        costs["span, SDK not sampled (99% of calls at 1%)"] = _span_cost(
            get_tracer(unsampled), attributes, n
        )
        unsampled.shutdown()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_Discard()))
        costs["span, SDK sampled + SimpleSpanProcessor"] = _span_cost(
            get_tracer(provider), attributes, n
        )
        provider.shutdown()
        metrics = StoreMetrics(CollectorRegistry())
        ok = metrics.duration("add_message", "ok")
        exemplar = {"trace_id": "0" * 32, "span_id": "0" * 16}

        def observe() -> None:
            ok.observe(0.001, exemplar=exemplar)
            metrics.pool_wait.observe(0.0001)

        costs["StoreMetrics: duration + pool wait observations"] = _per_call_us(observe, n)
        observe_pool(engine, metrics)
        gauges = await _per_greenlet_us(checkout_checkin, n)
        costs["StoreMetrics pool gauges (checkout/checkin listeners)"] = gauges - plain
        tracer = instrument_statements(engine)
        try:
            both = await _per_greenlet_us(checkout_checkin, n)
        finally:
            tracer.remove()
        costs["instrument_statements on checkout + checkin"] = both - gauges
    finally:
        await engine.dispose()
    return {k: round(v, 1) for k, v in costs.items()}

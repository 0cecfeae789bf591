"""``instrumentation``: ChatStore with metrics and tracing on vs off, interleaved.

On: ``StoreMetrics`` on a fresh ``CollectorRegistry``, an OpenTelemetry SDK
``TracerProvider`` configured as production would be (``--sample-ratio``,
default 1%, parent-based, and a ``BatchSpanProcessor``; ``--sample-ratio 1
--processor simple`` measures every span exported synchronously) over an
exporter that drops the spans (so the cost measured is the instrumentation's,
not an exporter's), and the SQLAlchemy statement
instrumentation on the engine (``schema.tracing.instrument_statements``: the
hot path bypasses SQLAlchemy's execute, but its pool listeners still run).
Off: ``metrics=None`` and the default (no-op) global tracer.

Target: at most 5% fewer operations per second and 5% more CPU per operation.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from prometheus_client import CollectorRegistry

from loadtests.bench.backends import StoreBackend
from loadtests.bench.comparison import Limits, add_common_arguments, compare_pair, config
from loadtests.bench.database import bench_database, seed_messages
from loadtests.bench.report import report_dir, write_report
from loadtests.bench.sessions import Texts
from schema import StoreMetrics

LIMITS = Limits(min_ops_ratio=0.95, max_cpu_ratio=1.05)
OPERATIONS = ("get_history", "add_message", "list_conversations")


class DiscardingExporter(SpanExporter):
    """Counts spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, sessions="10,100")
    parser.add_argument(
        "--sample-ratio", type=float, default=0.01, help="traces sampled (0.01; 1 = all)"
    )
    parser.add_argument(
        "--processor", choices=("batch", "simple"), default="batch", help="span processor (batch)"
    )


async def measure(url: str, args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    await seed_messages(url, "bench", args.messages)
    texts = Texts.draw()
    exporter = DiscardingExporter()
    sampler = (
        ALWAYS_ON if args.sample_ratio >= 1 else ParentBased(TraceIdRatioBased(args.sample_ratio))
    )
    provider = TracerProvider(sampler=sampler)
    processor = BatchSpanProcessor if args.processor == "batch" else SimpleSpanProcessor
    provider.add_span_processor(processor(exporter))
    registry = CollectorRegistry()
    pool = {"pool_size": args.pool_size, "max_overflow": args.max_overflow}
    on = StoreBackend(
        "on",
        url,
        **pool,
        metrics=StoreMetrics(registry),
        tracer_provider=provider,
        trace_statements=True,
    )
    off = StoreBackend("off", url, **pool)
    results: dict[str, Any] = {"benchmark": "instrumentation", "config": config(args)}
    try:
        compared, text = await compare_pair(url, on, off, args, texts, LIMITS, out)
        results.update(compared)
    finally:
        provider.shutdown()  # flushes the batch processor: every sampled span is counted
    observed = sum(
        registry.get_sample_value(
            "chat_storage_operation_duration_seconds_count", {"operation": op, "outcome": "ok"}
        )
        or 0.0
        for op in OPERATIONS
    )
    # Proof that the "on" variant really recorded: every operation is a span and a sample.
    results["sample_ratio"] = args.sample_ratio
    results["processor"] = args.processor
    results["spans_exported"] = exporter.spans
    results["operations_observed"] = int(observed)
    text += (
        f"\n\nspans exported (and dropped): {exporter.spans}; "
        f"operations observed by the histogram: {int(observed)}"
    )
    return results, text


def main(args: argparse.Namespace) -> int:
    out = report_dir("instrumentation", args.reports_dir)
    with bench_database(args.server_url) as url:
        results, text = asyncio.run(measure(url, args, out))
    write_report(out, results, text)
    print(text)
    print(f"\nreport: {out}")
    return 0

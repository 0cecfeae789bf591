"""``instrumentation``: ChatStore with metrics and tracing on vs off, interleaved.

On: ``StoreMetrics`` on a fresh ``CollectorRegistry``, an OpenTelemetry SDK
``TracerProvider`` configured as production would be (``--sample-ratio``,
default 1%, parent-based, and a ``BatchSpanProcessor``; ``--sample-ratio 1
--processor simple`` measures every span exported synchronously) over an
exporter that drops the spans (so the cost measured is the instrumentation's,
not an exporter's), and the SQLAlchemy statement
instrumentation on the engine (``chat_storage.tracing.instrument_statements``: the
hot path bypasses SQLAlchemy's execute, but its pool listeners still run).
Off: ``metrics=None`` and the default (no-op) global tracer.

``--caller request`` (the default) runs every operation, in both variants, as
a service does: inside the context of a request that arrived with a W3C
``traceparent`` (a remote parent, sampled with ``--sample-ratio``), so the
operation spans are children of the caller's trace. ``--caller root`` runs
them with no caller span: each operation is a root span and the SDK's sampler
decides for it (a background job's case).

Target: at most 5% fewer operations per second, judged in the closed loop (the
capacity), and at most 5% more CPU per operation, judged at equal offered load
(``--equal-load``, default 0.7 of the slower variant's closed-loop
throughput): the same workload for both variants, what a service below
saturation pays (comparison.py). The closed loop's CPU per operation is
printed but not judged: there the costlier variant also runs at a lower rate,
and CPU per operation rises as the rate falls for any code, so it reads the
instrumentation 2-4 points higher than equal load or the count do
(loadtests/bench/README.md). ``--busy-us`` replaces
"on" with a known cost per operation, to see how each measurement reports it.
``--instructions`` counts instead of timing: instructions per operation of
one session under Valgrind's cachegrind (instructions.py), a figure that does
not move with the machine's load or the rate.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import json
import random
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client import CollectorRegistry

from chat_storage import StoreMetrics
from loadtests.bench import instructions
from loadtests.bench.comparison import Limits, add_common_arguments, compare_pair, config
from loadtests.bench.duet import DuetVariant
from loadtests.bench.report import publish, report_dir
from loadtests.bench.sessions import OPERATIONS, Target, Texts, load_targets
from loadtests.core.backends import Backend, StoreBackend
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages

LIMITS = Limits(min_ops_ratio=0.95, max_cpu_ratio=1.05)
#: --instructions' exit status when a ratio is over the target (1: it failed to count).
OVER_TARGET = 3
#: Turns both runs of an --instructions count do (the difference is counted).
BASE_TURNS = 20


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
    parser.set_defaults(equal_load=0.7)
    parser.add_argument(
        "--sample-ratio", type=float, default=0.01, help="traces sampled (0.01; 1 = all)"
    )
    parser.add_argument(
        "--processor", choices=("batch", "simple"), default="batch", help="span processor (batch)"
    )
    parser.add_argument(
        "--caller",
        choices=("request", "root"),
        default="request",
        help="operations inside a remote caller's trace (request) or as root spans (root)",
    )

    parser.add_argument(
        "--a-a",
        action="store_true",
        help="A/A calibration: run 'off' against itself (the ratio is the machine's noise)",
    )
    parser.add_argument(
        "--busy-us",
        type=float,
        default=None,
        metavar="US",
        help="calibration: 'off' plus US microseconds of busy work per operation, against 'off'",
    )
    parser.add_argument(
        "--duet",
        action="store_true",
        help="run both variants at the same time, each in its own process (see duet.py)",
    )
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per operation under Valgrind's cachegrind instead of "
        "timing: one session, deterministic (see instructions.py; exits 3 over the target)",
    )
    parser.add_argument(
        "--turns",
        type=int,
        default=1000,
        help="with --instructions: turns counted per variant (1000)",
    )


class AroundEach:
    """A backend that runs each of ``inner``'s operations inside :meth:`around`."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.name = inner.name

    def around(self) -> AbstractContextManager[None]:
        raise NotImplementedError

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def final_figures(self) -> dict[str, float]:
        final = getattr(self.inner, "final_figures", None)
        return final() if callable(final) else {}

    async def get_history(self, user_id: str, conversation_id: uuid.UUID, limit: int) -> int:
        with self.around():
            return await self.inner.get_history(user_id, conversation_id, limit)

    async def add_message(
        self, user_id: str, conversation_id: uuid.UUID, role: str, text: str
    ) -> None:
        with self.around():
            await self.inner.add_message(user_id, conversation_id, role, text)

    async def create_conversation(self, user_id: str) -> uuid.UUID:
        with self.around():
            return await self.inner.create_conversation(user_id)

    async def list_conversations(self, user_id: str, limit: int) -> list[uuid.UUID]:
        with self.around():
            return await self.inner.list_conversations(user_id, limit)

    async def archive_conversation(self, user_id: str, conversation_id: uuid.UUID) -> None:
        with self.around():
            await self.inner.archive_conversation(user_id, conversation_id)


class BusyWork(AroundEach):
    """Spins ``us`` microseconds of CPU after every operation: a known cost, to
    see how each measurement reports it."""

    def __init__(self, inner: Backend, us: float) -> None:
        super().__init__(inner)
        self.name = f"busy {us:g} us"
        self._seconds = us / 1e6

    @contextmanager
    def around(self) -> Iterator[None]:
        yield
        clock = time.perf_counter
        until = clock() + self._seconds
        while clock() < until:
            pass


class InCallerTrace(AroundEach):
    """Every operation runs inside a remote caller's trace context, sampled with
    probability ``ratio`` (what a request's traceparent carries).

    Wraps both variants alike, so the context switch costs them the same."""

    def __init__(self, inner: Backend, ratio: float) -> None:
        super().__init__(inner)
        self._ratio = ratio
        self._rng = random.Random(11)

    @contextmanager
    def around(self) -> Iterator[None]:
        rng = self._rng
        flags = TraceFlags.SAMPLED if rng.random() < self._ratio else TraceFlags.DEFAULT
        caller = NonRecordingSpan(
            SpanContext(
                trace_id=rng.getrandbits(128) or 1,
                span_id=rng.getrandbits(64) or 1,
                is_remote=True,
                trace_flags=TraceFlags(flags),
            )
        )
        with trace.use_span(caller):
            yield


@dataclass(frozen=True)
class Options:
    """How to build the variants (picklable: a duet builds them in other processes)."""

    url: str
    sample_ratio: float
    processor: str
    caller: str
    pool_size: int
    max_overflow: int
    busy_us: float | None = None
    a_a: bool = False

    @classmethod
    def from_args(cls, url: str, args: argparse.Namespace) -> Options:
        return cls(
            url, args.sample_ratio, args.processor, args.caller, args.pool_size,
            args.max_overflow, args.busy_us, args.a_a,
        )  # fmt: skip


class Telemetry:
    """The "on" variant's SDK tracer provider, over a span-dropping exporter, and
    its metrics registry; :meth:`finish` flushes them and counts what they saw."""

    def __init__(self, options: Options) -> None:
        ratio = options.sample_ratio
        sampler = ALWAYS_ON if ratio >= 1 else ParentBased(TraceIdRatioBased(ratio))
        self.exporter = DiscardingExporter()
        self.provider = TracerProvider(sampler=sampler)
        processor = BatchSpanProcessor if options.processor == "batch" else SimpleSpanProcessor
        self.provider.add_span_processor(processor(self.exporter))
        self.registry = CollectorRegistry()

    def finish(self) -> dict[str, float]:
        self.provider.shutdown()  # flushes the batch processor: every sampled span is counted
        observed = sum(
            self.registry.get_sample_value(
                "chat_storage_operation_duration_seconds_count", {"operation": op, "outcome": "ok"}
            )
            or 0.0
            for op in OPERATIONS
        )
        return {"spans_exported": self.exporter.spans, "operations_observed": observed}


def build_pair(options: Options, telemetry: Telemetry) -> tuple[Backend, Backend]:
    """The subject ("on", or a calibration variant) and the reference ("off")."""
    url, size, overflow = options.url, options.pool_size, options.max_overflow
    on: Backend
    if options.busy_us is not None:
        on = BusyWork(
            StoreBackend(url, name="off-busy", pool_size=size, max_overflow=overflow),
            options.busy_us,
        )
    elif options.a_a:
        on = StoreBackend(url, name="off-again", pool_size=size, max_overflow=overflow)
    else:
        on = StoreBackend(
            url,
            name="on",
            pool_size=size,
            max_overflow=overflow,
            metrics=StoreMetrics(telemetry.registry),
            tracer_provider=telemetry.provider,
            trace_statements=True,
            final_figures=telemetry.finish,
        )
    off: Backend = StoreBackend(url, name="off", pool_size=size, max_overflow=overflow)
    if options.caller == "request":
        return InCallerTrace(on, options.sample_ratio), InCallerTrace(off, options.sample_ratio)
    return on, off


def duet_variant(index: int, options: Options) -> Backend:
    """Variant ``index`` of :func:`build_pair`, built in a duet's process."""
    return build_pair(options, Telemetry(options))[index]


async def measure(url: str, args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    await seed_messages(url, "bench", args.messages)
    texts = Texts.draw()
    options = Options.from_args(url, args)
    results: dict[str, Any] = {"benchmark": "instrumentation", "config": config(args)}
    telemetry = Telemetry(options)
    subject: Backend
    reference: Backend
    subject, reference = build_pair(options, telemetry)
    duet: list[DuetVariant] = []
    if args.duet:
        duet = [
            DuetVariant(backend.name, functools.partial(duet_variant, i, options))
            for i, backend in enumerate((subject, reference))
        ]
        subject, reference = duet
    try:
        compared, text = await compare_pair(url, subject, reference, args, texts, LIMITS, out)
        results.update(compared)
    finally:
        figures = telemetry.finish()
    if duet:
        figures = {k: duet[0].figures.get(k, 0.0) for k in figures}
    spans, observed = int(figures["spans_exported"]), int(figures["operations_observed"])
    # Proof that the "on" variant really recorded: every operation is a span and a sample.
    results["sample_ratio"] = args.sample_ratio
    results["processor"] = args.processor
    results["caller"] = args.caller
    results["duet"] = args.duet
    results["spans_exported"] = spans
    results["operations_observed"] = observed
    text += (
        f"\n\ncaller: {args.caller}; sample ratio {args.sample_ratio}; "
        f"spans exported (and dropped): {spans}; "
        f"operations observed by the histogram: {observed}"
    )
    return results, text


def count_instructions(url: str, args: argparse.Namespace) -> tuple[dict[str, Any], str, bool]:
    """The ``--instructions`` figures: each variant counted by cachegrind, one session."""
    asyncio.run(seed_messages(url, "bench", args.messages))
    targets = asyncio.run(load_targets(url, 2))  # a conversation per variant
    options = Options.from_args(url, args)
    telemetry = Telemetry(options)  # the variants are built in the counted processes;
    try:  # here only their names are needed
        names = [backend.name for backend in build_pair(options, telemetry)]
    finally:
        telemetry.provider.shutdown()
    on, off = instructions.count(
        dataclasses.asdict(options),
        names,
        targets,
        base=BASE_TURNS,
        turns=args.turns,
        child=counted_child_command,
    )
    results, text, ok = instructions.verdict(on, off, LIMITS.max_cpu_ratio)
    results = {
        "benchmark": "instrumentation",
        "mode": "instructions",
        "config": {
            "turns": args.turns, "base_turns": BASE_TURNS, "sample_ratio": args.sample_ratio,
            "processor": args.processor, "caller": args.caller, "pool_size": args.pool_size,
            "max_overflow": args.max_overflow, "messages": args.messages,
        },
        **results,
    }  # fmt: skip
    text += (
        f"\n\none session, turns {BASE_TURNS} .. {BASE_TURNS + args.turns} counted "
        f"(cachegrind); caller: {args.caller}; sample ratio {args.sample_ratio}"
    )
    return results, text, ok


def counted_child_command(order: str) -> list[str]:
    """The command of one process counted by ``--instructions``: :func:`counted_child`."""
    run = "import sys; from loadtests.bench.instrumentation import counted_child; "
    return [sys.executable, "-c", run + "counted_child(sys.argv[1])", order]


def counted_child(order: str) -> None:
    """One counted process: variant ``index`` of the order's options runs its turns,
    then writes the spans it exported to the order's ``figures`` file."""
    spec = json.loads(order)
    backend = duet_variant(spec["index"], Options(**spec["options"]))
    target = Target(spec["user_id"], uuid.UUID(spec["conversation_id"]))
    figures = asyncio.run(instructions.run_turns(backend, target, spec["turns"]))
    Path(spec["figures"]).write_text(
        json.dumps({"spans_exported": figures.get("spans_exported", 0)})
    )


def main(args: argparse.Namespace) -> int:
    if args.duet and args.profile:
        raise SystemExit("--profile profiles both variants in this process: not with --duet")
    if args.instructions:
        if args.busy_us is not None or args.duet or args.profile:
            # Busy work spins on the wall clock, which runs at another pace under Valgrind.
            raise SystemExit(
                "--instructions counts one session: not with --busy-us, --duet or --profile"
            )
        instructions.valgrind()  # before starting a server: say what is missing first
        out = report_dir("instrumentation", args.reports_dir)
        with scratch_database_migrated(args.server_url) as url:
            results, text, ok = count_instructions(url, args)
        publish(out, results, text)
        return 0 if ok else OVER_TARGET
    out = report_dir("instrumentation", args.reports_dir)
    with scratch_database_migrated(args.server_url) as url:
        results, text = asyncio.run(measure(url, args, out))
    return publish(out, results, text)

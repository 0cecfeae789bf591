"""``pool``: latency and pool wait of paced sessions on two pool sizes.

Each session runs one turn per second on its own random-phase schedule (an
open, realistic load, unlike the closed loop of ``driver``), at 100, 200 and 500
sessions, on the plan's pool (10 + 20) and a larger one (50 + 50). The pool wait
comes from StoreMetrics' ``chat_storage_pool_wait_seconds`` histogram (bucket
bounds, so its p95 is an upper edge).

Sizing: by Little's law the connections busy at once are the operation rate
times how long each operation holds its connection (latency minus pool wait);
a pool needs that plus headroom for bursts, and the server's
``max_connections`` must cover every process's pool plus administration.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry

from chat_storage import StoreMetrics
from loadtests.bench.report import publish, report_dir, table
from loadtests.bench.sessions import OPERATIONS, OPS_PER_TURN, Texts, load_targets, run_paced
from loadtests.bench.stats import fmt, percentile_or_nan
from loadtests.core.backends import StoreBackend
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages
from loadtests.core.stats import percentile

#: Pool wait (p95) above which the pool, not the database or the client, is the bottleneck.
WAIT_BOTTLENECK_MS = 1.0
#: Connections the benchmark leaves for others on the server.
SPARE_CONNECTIONS = 10
HEADROOM = 1.5
#: Below this share of the offered rate, the process itself is the limit.
CLIENT_BOUND_SHARE = 0.95


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sessions", default="100,200,500,1000", help="paced sessions (100,200,500,1000)"
    )
    parser.add_argument("--pools", default="10+20,50+50", help="size+overflow list (10+20,50+50)")
    parser.add_argument("--rate", type=float, default=1.0, help="turns/s per session (1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")
    parser.add_argument("--messages", type=int, default=20_000, help="seeded messages (20000)")
    parser.add_argument(
        "--overflow-idle-timeout",
        type=float,
        default=None,
        metavar="S",
        help="pool_overflow_idle_timeout (default: the setting's; 0: SQLAlchemy's rule)",
    )


def parse_pools(text: str) -> list[tuple[int, int]]:
    pools = []
    for item in text.split(","):
        size, _, overflow = item.partition("+")
        pools.append((int(size), int(overflow or 0)))
    return pools


async def server_setting(url: str, name: str) -> str:
    """``SHOW <name>`` on the benchmark's server."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()


HistogramState = tuple[dict[float, float], float, float]


def histogram_state(registry: CollectorRegistry, name: str) -> HistogramState:
    """(cumulative count per bucket edge, sum, count) of an unlabelled histogram."""
    buckets: dict[float, float] = {}
    total = count = 0.0
    for metric in registry.collect():
        if metric.name != name:
            continue
        for sample in metric.samples:
            if sample.name == f"{name}_bucket":
                buckets[float(sample.labels["le"])] = sample.value
            elif sample.name == f"{name}_sum":
                total = sample.value
            elif sample.name == f"{name}_count":
                count = sample.value
    return buckets, total, count


def window_quantile(
    before: HistogramState, after: HistogramState, q: float
) -> tuple[float, float, int]:
    """(upper bucket edge holding quantile ``q``, mean, count) of what was observed
    between the two states."""
    count = after[2] - before[2]
    if count <= 0:
        return math.nan, math.nan, 0
    mean = (after[1] - before[1]) / count
    for edge in sorted(after[0]):
        if after[0][edge] - before[0].get(edge, 0.0) >= q * count:
            return edge, mean, int(count)
    return math.inf, mean, int(count)


async def measure(url: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    await seed_messages(url, "bench", args.messages)
    texts = Texts.draw()
    max_connections = int(await server_setting(url, "max_connections"))
    reserved = int(await server_setting(url, "superuser_reserved_connections"))
    usable = max_connections - reserved - SPARE_CONNECTIONS
    notes = [
        f"server max_connections = {max_connections} "
        f"({reserved} reserved for superusers, {SPARE_CONNECTIONS} left for others)"
    ]
    results: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    for sessions in (int(s) for s in args.sessions.split(",")):
        targets = await load_targets(url, sessions)
        for size, overflow in parse_pools(args.pools):
            if size + overflow > usable:
                capped = max(0, usable - size)
                note = f"{size}+{overflow} does not fit in max_connections: ran {size}+{capped}"
                if note not in notes:
                    notes.append(note)
                overflow = capped
            registry = CollectorRegistry()
            backend = StoreBackend(
                url,
                name=f"{size}+{overflow}",
                pool_size=size,
                max_overflow=overflow,
                metrics=StoreMetrics(registry),
                overflow_idle_timeout=args.overflow_idle_timeout,
            )
            await backend.open()
            try:
                await run_paced(backend, targets, args.warmup, texts, rate=args.rate)
                wait_metric = "chat_storage_pool_wait_seconds"
                connect_metric = "chat_storage_pool_connect_seconds"
                before = histogram_state(registry, wait_metric)
                connects_before = histogram_state(registry, connect_metric)[2]
                in_use: list[int] = []
                sampler = asyncio.create_task(sample_in_use(backend, in_use))
                try:
                    rnd = await run_paced(backend, targets, args.seconds, texts, rate=args.rate)
                finally:
                    sampler.cancel()
                wait_p95, wait_mean, waits = window_quantile(
                    before, histogram_state(registry, wait_metric), 0.95
                )
                # Connections opened while measured (a steady load opens none).
                connects = int(histogram_state(registry, connect_metric)[2] - connects_before)
            finally:
                await backend.close()
            latencies = {op: sorted(rnd.latencies[op]) for op in OPERATIONS}
            all_ops = [v for op in OPERATIONS for v in latencies[op]]
            mean_latency = sum(all_ops) / len(all_ops) if all_ops else math.nan
            ops_per_s = rnd.ops / rnd.seconds
            held = max(mean_latency - wait_mean, 0.0)
            busy = ops_per_s * held
            offered = sessions * args.rate * OPS_PER_TURN
            bottleneck = 1000 * wait_p95 > WAIT_BOTTLENECK_MS
            in_use.sort()
            use_p95 = int(percentile(in_use, 95) or 0)
            use_max = in_use[-1] if in_use else 0
            p95 = {op: 1000 * percentile_or_nan(latencies[op], 95) for op in OPERATIONS}
            results.append(
                {
                    "sessions": sessions,
                    "pool": backend.name,
                    "ops": rnd.ops,
                    "ops_per_second": round(ops_per_s, 1),
                    "offered_ops_per_second": round(offered, 1),
                    "p95_ms": {op: round(v, 3) for op, v in p95.items()},
                    "pool_wait": {
                        "p95_upper_edge_ms": round(1000 * wait_p95, 3),
                        "mean_ms": round(1000 * wait_mean, 3),
                        "count": waits,
                    },
                    "mean_held_ms": round(1000 * held, 3),
                    "busy_connections": round(busy, 2),
                    "connections_in_use": {"p95": use_p95, "max": use_max},
                    "connects": connects,
                    "pool_bottleneck": bottleneck,
                }
            )
            rows.append(
                [
                    str(sessions),
                    backend.name,
                    fmt(ops_per_s, 0),
                    *(fmt(p95[op]) for op in OPERATIONS),
                    "<= " + fmt(1000 * wait_p95, 1),
                    fmt(1000 * wait_mean, 3),
                    fmt(busy, 1),
                    f"{use_p95}/{use_max}",
                    str(connects),
                    "YES" if bottleneck else "no",
                ]
            )
    text = "\n\n".join(
        [
            table(
                [
                    "sessions",
                    "pool",
                    "ops/s",
                    *(f"p95 {op} ms" for op in OPERATIONS),
                    "p95 pool wait ms",
                    "mean wait ms",
                    "mean busy",
                    "in use p95/max",
                    "connects",
                    "pool bottleneck",
                ],
                rows,
            ),
            *notes,
            advice(results),
        ]
    )
    keys = ("sessions", "pools", "rate", "seconds", "messages", "overflow_idle_timeout")
    config = {k: getattr(args, k) for k in keys}
    return {
        "benchmark": "pool",
        "config": config,
        "max_connections": max_connections,
        "runs": results,
        "notes": notes,
    }, text


async def sample_in_use(backend: StoreBackend, samples: list[int]) -> None:
    """Connections checked out, every 5 ms (until cancelled)."""
    pool: Any = backend.store.engine.sync_engine.pool
    while True:
        samples.append(int(pool.checkedout()))
        await asyncio.sleep(0.005)


def diagnose(small: dict[str, Any], large: dict[str, Any]) -> str:
    """What limits one level: nothing, the small pool, or the client process.

    If the larger pool also waits, or the process cannot even start the offered
    operations, more connections would not help: the event loop (client CPU) is
    the limit and the load needs more processes.
    """
    client_bound = large["pool_bottleneck"] or (
        large["ops_per_second"] < CLIENT_BOUND_SHARE * large["offered_ops_per_second"]
    )
    if client_bound:
        return "client-bound"
    return "pool-bound" if small["pool_bottleneck"] else "ok"


def advice(results: list[dict[str, Any]]) -> str:
    """Where the plan's pool became the bottleneck, and a sizing rule with numbers."""
    pools = list(dict.fromkeys(r["pool"] for r in results))
    if len(pools) < 2:
        return ""
    small_name, large_name = pools[0], pools[-1]
    by_level: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_level.setdefault(r["sessions"], {})[r["pool"]] = r
    lines = []
    fine: dict[str, Any] | None = None
    for sessions, runs in sorted(by_level.items()):
        small, large = runs[small_name], runs[large_name]
        verdict = diagnose(small, large)
        capacity = sum(int(n) for n in small_name.split("+"))
        if verdict == "ok" and small["connections_in_use"]["max"] >= capacity:
            verdict = f"ok, but {small_name} used all {capacity} connections in bursts"
        offered = large["offered_ops_per_second"]
        lines.append(
            f"{sessions} sessions: {verdict} ({large['ops_per_second']:.0f} of {offered:.0f} "
            f"offered ops/s done on {large_name})"
        )
        if not verdict.startswith("client-bound"):
            fine = large
    if fine is None:
        lines.append("every level was client-bound: fewer sessions per process, or more processes")
        return "\n".join(lines)
    peak = fine["connections_in_use"]["max"]
    lines.append(
        f"Sizing: connections ~ ops/s x time each op holds its connection (Little's law: "
        f"{fine['ops_per_second']:.0f} ops/s x {fine['mean_held_ms']:.2f} ms = "
        f"{fine['busy_connections']:.1f} busy on average at {fine['sessions']} sessions), but "
        f"random arrivals come in bursts: up to {peak} were in use, "
        f"so ~{math.ceil(peak * HEADROOM)} "
        f"per process ({HEADROOM:.1f}x headroom). Past the client-bound level, add processes, "
        f"not connections; the sum of all processes' pools must stay under max_connections."
    )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    out = report_dir("pool", args.reports_dir)
    with scratch_database_migrated(args.server_url) as url:
        results, text = asyncio.run(measure(url, args))
    return publish(out, results, text)

"""``network``: the workload through a proxy adding a fixed delay per direction.

Shows that each ChatStore operation costs one round trip: an operation's p50
through the proxy should be its p50 without it plus one proxy round trip
(2 x delay, measured by calibration with ``SELECT 1``). Sessions are paced
(a turn per session every 1/rate s, random phases) so that queueing in the
client does not blur the comparison; direct and proxied rounds alternate.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from loadtests.bench.proxy import delay_proxy
from loadtests.bench.report import publish, report_dir, table
from loadtests.bench.sessions import OPERATIONS, Texts, load_targets, run_paced
from loadtests.bench.stats import Summary, fmt, percentile_or_nan
from loadtests.core.backends import StoreBackend
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--delay-ms", type=float, default=1.0, help="delay per direction (1)")
    parser.add_argument("--sessions", type=int, default=10, help="paced sessions (10)")
    parser.add_argument("--rate", type=float, default=5.0, help="turns/s per session (5)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (3)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round (3)")
    parser.add_argument("--messages", type=int, default=20_000, help="seeded messages (20000)")
    parser.add_argument("--pool-size", type=int, default=10, help="pool size (10)")
    parser.add_argument("--max-overflow", type=int, default=20, help="overflow (20)")


def via(url: str, port: int) -> str:
    """``url`` pointed at the proxy on 127.0.0.1:``port``."""
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


async def round_trip_ms(url: str, n: int = 300) -> float:
    """p50 of a prepared ``SELECT 1`` on one connection: one bare round trip."""
    conn = await asyncpg.connect(url)
    try:
        stmt = await conn.prepare("SELECT 1")
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await stmt.fetchval()
            times.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return 1000 * percentile_or_nan(sorted(times), 50)


async def measure(
    url: str, proxied_url: str, args: argparse.Namespace
) -> tuple[dict[str, Any], str]:
    await seed_messages(url, "bench", args.messages)
    texts = Texts.draw()
    rtt_direct = await round_trip_ms(url)
    rtt_proxied = await round_trip_ms(proxied_url)
    proxy_rtt = rtt_proxied - rtt_direct
    backends = [
        StoreBackend(url, name="direct", pool_size=args.pool_size, max_overflow=args.max_overflow),
        StoreBackend(
            proxied_url, name="proxied", pool_size=args.pool_size, max_overflow=args.max_overflow
        ),
    ]
    for backend in backends:
        await backend.open()
    targets = await load_targets(url, args.sessions)
    summaries = {b.name: Summary() for b in backends}
    try:
        for backend in backends:  # warm-up: statements prepared, pools filled
            await run_paced(backend, targets, 1.0, texts, rate=args.rate)
        for r in range(args.rounds):
            for backend in backends if r % 2 == 0 else list(reversed(backends)):
                rnd = await run_paced(backend, targets, args.seconds, texts, rate=args.rate)
                summaries[backend.name].add(rnd)
    finally:
        for backend in backends:
            await backend.close()
    two_delays = 2 * args.delay_ms
    ops: dict[str, Any] = {}
    rows = []
    for op in OPERATIONS:
        direct = summaries["direct"].quantiles_ms(op)["p50"]
        proxied = summaries["proxied"].quantiles_ms(op)["p50"]
        extra = proxied - direct
        trips = extra / proxy_rtt if proxy_rtt > 0 else math.nan
        ops[op] = {
            "count": len(summaries["proxied"].latencies[op]),
            "p50_direct_ms": round(direct, 3),
            "p50_proxied_ms": round(proxied, 3),
            "expected_ms": round(direct + two_delays, 3),
            "extra_ms": round(extra, 3),
            "round_trips": None if math.isnan(trips) else round(trips, 2),
        }
        rows.append(
            [
                op,
                str(ops[op]["count"]),
                fmt(direct),
                fmt(proxied),
                fmt(direct + two_delays),
                fmt(extra),
                fmt(trips),
            ]
        )
    text = "\n\n".join(
        [
            f"delay {args.delay_ms} ms per direction; SELECT 1 p50: direct {rtt_direct:.3f} ms, "
            f"proxied {rtt_proxied:.3f} ms: one proxy round trip costs {proxy_rtt:.3f} ms "
            f"(asked: {two_delays:.3f} ms)",
            table(
                [
                    "operation",
                    "n",
                    "p50 direct ms",
                    "p50 proxied ms",
                    "direct + 2 x delay",
                    "extra ms",
                    "round trips",
                ],
                rows,
            ),
        ]
    )
    results = {
        "benchmark": "network",
        "config": {
            k: getattr(args, k)
            for k in ("delay_ms", "sessions", "rate", "rounds", "seconds", "messages")
        },
        "select1_p50_ms": {
            "direct": round(rtt_direct, 3),
            "proxied": round(rtt_proxied, 3),
            "proxy_round_trip": round(proxy_rtt, 3),
        },
        "operations": ops,
        "variants": {name: s.to_json() for name, s in summaries.items()},
    }
    return results, text


def main(args: argparse.Namespace) -> int:
    out = report_dir("network", args.reports_dir)
    with scratch_database_migrated(args.server_url) as url:
        parsed = make_url(url)
        with delay_proxy(
            parsed.host or "127.0.0.1", parsed.port or 5432, args.delay_ms / 1000
        ) as port:
            results, text = asyncio.run(measure(url, via(url, port), args))
    return publish(out, results, text)

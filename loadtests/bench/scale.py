"""``scale``: history-read and append p95, and the history query's buffers, as
the messages table grows (100k and 1M messages by default; 10M via ``--sizes``).

The database grows in place: each size seeds the difference with new users
(COPY and server-side generate_series, loadtests/seed.py). At each size, paced
sessions on conversations drawn at random measure p95, and ``EXPLAIN (ANALYZE,
BUFFERS)`` of the history statement shows the pages it touches for the longest
conversation and a median one: with the (conversation_id, seq) index they stay
a handful whatever the table's size.

Target: p95 at the largest size within 1.2x of the smallest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
from typing import Any

import asyncpg

from chat_storage.queries.messages import plan_get_history
from loadtests.bench.report import publish, report_dir, table
from loadtests.bench.sessions import Target, Texts, run_paced
from loadtests.bench.stats import Summary, fmt, ratio
from loadtests.core.backends import StoreBackend
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages
from loadtests.core.workload import ADD_MESSAGE, GET_HISTORY, HISTORY_LIMIT

MAX_P95_RATIO = 1.2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes", default="100000,1000000", help="message counts, ascending (100000,1000000)"
    )
    parser.add_argument("--sessions", type=int, default=20, help="paced sessions (20)")
    parser.add_argument("--rate", type=float, default=5.0, help="turns/s per session (5)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds (10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds (2)")


async def random_targets(conn: Any, n: int) -> list[Target]:
    rows = await conn.fetch("SELECT user_id, id FROM conversations ORDER BY random() LIMIT $1", n)
    return [Target(r[0], r[1]) for r in rows]


def _nodes(plan: dict[str, Any]) -> list[str]:
    """The plan's node types (with the index used), depth first."""
    name = plan["Node Type"] + (f" on {plan['Index Name']}" if "Index Name" in plan else "")
    return [name] + [n for child in plan.get("Plans", []) for n in _nodes(child)]


async def explain_history(conn: Any, user_id: str, conversation_id: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE, BUFFERS) of the history statement for one conversation."""
    plan = plan_get_history(user_id=user_id, conversation_id=conversation_id, limit=HISTORY_LIMIT)
    sql, _ = plan.statement.compile()
    raw = await conn.fetchval("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + sql, *plan.args())
    doc = (json.loads(raw) if isinstance(raw, str) else raw)[0]
    top = doc["Plan"]
    return {
        "shared_hit": top.get("Shared Hit Blocks", 0),
        "shared_read": top.get("Shared Read Blocks", 0),
        "execution_ms": doc.get("Execution Time"),
        "planning_ms": doc.get("Planning Time"),
        "nodes": _nodes(top),
    }


async def measure(url: str, args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    sizes = sorted(int(s) for s in args.sizes.split(","))
    texts = Texts.draw()
    seeded = 0
    levels: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    conn = await asyncpg.connect(url)
    try:
        for i, size in enumerate(sizes):
            if size > seeded:
                await seed_messages(url, f"scale{i}", size - seeded)
                seeded = int(await conn.fetchval("SELECT count(*) FROM messages"))
            targets = await random_targets(conn, args.sessions)
            backend = StoreBackend(url, pool_size=10, max_overflow=20)
            await backend.open()
            try:
                await run_paced(backend, targets, args.warmup, texts, rate=args.rate)
                summary = Summary()
                summary.add(await run_paced(backend, targets, args.seconds, texts, rate=args.rate))
            finally:
                await backend.close()
            longest = await conn.fetchrow(
                "SELECT user_id, id, last_seq FROM conversations ORDER BY last_seq DESC LIMIT 1"
            )
            median = await conn.fetchrow(
                "SELECT user_id, id, last_seq FROM conversations ORDER BY last_seq "
                "OFFSET (SELECT count(*) / 2 FROM conversations) LIMIT 1"
            )
            explains = {
                "longest": {"messages": longest[2], **await explain_history(conn, *longest[:2])},
                "median": {"messages": median[2], **await explain_history(conn, *median[:2])},
            }
            history = summary.quantiles_ms(GET_HISTORY)
            append = summary.quantiles_ms(ADD_MESSAGE)
            levels.append(
                {
                    "messages": seeded,
                    "conversations": int(await conn.fetchval("SELECT count(*) FROM conversations")),
                    "workload": summary.to_json(),
                    "explain_history": explains,
                }
            )
            rows.append(
                [
                    f"{seeded:,}",
                    str(len(summary.latencies[GET_HISTORY])),
                    fmt(history["p50"]),
                    fmt(history["p95"]),
                    fmt(append["p50"]),
                    fmt(append["p95"]),
                    *(
                        f"{e['shared_hit'] + e['shared_read']} ({e['messages']} msgs, "
                        f"{e['execution_ms']:.3f} ms)"
                        for e in explains.values()
                    ),
                ]
            )
    finally:
        await conn.close()
    first, last = levels[0]["workload"]["latency_ms"], levels[-1]["workload"]["latency_ms"]
    ratios = {
        op: round(ratio(last[op]["p95"] or math.nan, first[op]["p95"] or math.nan), 3)
        for op in (GET_HISTORY, ADD_MESSAGE)
    }
    met = {op: r <= MAX_P95_RATIO for op, r in ratios.items()}
    text = "\n\n".join(
        [
            table(
                [
                    "messages",
                    "reads",
                    "get_history p50 ms",
                    "get_history p95 ms",
                    "add_message p50 ms",
                    "add_message p95 ms",
                    "buffers: longest conv",
                    "buffers: median conv",
                ],
                rows,
            ),
            "p95 largest/smallest: "
            + ", ".join(
                f"{op} {fmt(r)} ({'ok' if met[op] else 'ABOVE'} {MAX_P95_RATIO}x)"
                for op, r in ratios.items()
            ),
            "plan of the history query (longest conversation, largest size): "
            + " > ".join(levels[-1]["explain_history"]["longest"]["nodes"]),
        ]
    )
    config = {k: getattr(args, k) for k in ("sizes", "sessions", "rate", "seconds", "warmup")}
    return {
        "benchmark": "scale",
        "config": config,
        "levels": levels,
        "p95_ratio_largest_to_smallest": ratios,
        "targets_met": met,
    }, text


def main(args: argparse.Namespace) -> int:
    out = report_dir("scale", args.reports_dir)
    with scratch_database_migrated(args.server_url) as url:
        results, text = asyncio.run(measure(url, args))
    return publish(out, results, text)

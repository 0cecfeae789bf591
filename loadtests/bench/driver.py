"""``driver``: ChatStore against raw asyncpg running the same SQL, interleaved.

Both use 30 connections (ChatStore: the plan's pool, 10 + 20; raw: 30 asyncpg
connections in a fair handoff, see core/backends.py). Closed loop, alternating short
rounds at each concurrency level, in one process.

Targets: ChatStore at least 0.8x raw's operations per second and at most 1.3x
its client CPU per operation. ``--profile`` then profiles one round of each at
the highest level and says, by library, where the extra CPU goes.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import Any

from loadtests.bench.comparison import Limits, add_common_arguments, compare_pair, config
from loadtests.bench.report import publish, report_dir
from loadtests.bench.sessions import Texts
from loadtests.core.backends import RawBackend, StoreBackend
from loadtests.core.database import scratch_database_migrated
from loadtests.core.seed import seed_messages

LIMITS = Limits(min_ops_ratio=0.8, max_cpu_ratio=1.3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser, sessions="10,100,200")


async def measure(url: str, args: argparse.Namespace, out: Path) -> tuple[dict[str, Any], str]:
    await seed_messages(url, "bench", args.messages)
    texts = Texts.draw()
    store = StoreBackend(url, pool_size=args.pool_size, max_overflow=args.max_overflow)
    raw = RawBackend(url, connections=args.pool_size + args.max_overflow)
    results: dict[str, Any] = {"benchmark": "driver", "config": config(args)}
    compared, text = await compare_pair(url, store, raw, args, texts, LIMITS, out)
    results.update(compared)
    return results, text


def main(args: argparse.Namespace) -> int:
    out = report_dir("driver", args.reports_dir)
    with scratch_database_migrated(args.server_url) as url:
        results, text = asyncio.run(measure(url, args, out))
    return publish(out, results, text)

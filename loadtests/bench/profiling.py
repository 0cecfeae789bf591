"""``--profile``: one closed-loop round per variant under cProfile, summarised as
own CPU per operation by library, so two variants can be compared line by line."""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from loadtests.bench.layers import layer_costs
from loadtests.bench.report import table
from loadtests.bench.sessions import Texts, load_targets, run_closed
from loadtests.bench.stats import fmt
from loadtests.core.backends import Backend

# Where a profiled function lives, by the first matching path fragment.
_CATEGORIES = (
    ("asyncpg", "asyncpg"),
    ("sqlalchemy/pool", "sqlalchemy pool"),
    ("sqlalchemy", "sqlalchemy other"),
    ("opentelemetry/sdk", "opentelemetry sdk"),
    ("opentelemetry", "opentelemetry api"),
    ("prometheus_client", "prometheus_client"),
    ("greenlet", "greenlet"),
    ("asyncio", "asyncio"),
    ("/chat_storage/", "chat_storage"),
    ("/loadtests/", "benchmark harness"),
)


def _category(filename: str, function: str) -> str:
    where = filename if filename != "~" else function
    for fragment, name in _CATEGORIES:
        if fragment in where:
            return name
    if "socket" in function or "epoll" in function:
        return "socket syscalls"
    return "other"


def _by_category(profiler: cProfile.Profile, ops: int) -> dict[str, float]:
    """Own CPU per operation (us) summed by library: where the time goes."""
    # {(file, line, function): (calls, primitive calls, own time, cumulative, callers)}
    stats: Any = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    totals: dict[str, float] = {}
    for (filename, _, function), (_, _, own, _, _) in stats.items():
        if "gc.collect" in function:
            continue  # the explicit collection before the round, not the workload
        key = _category(filename, function)
        totals[key] = totals.get(key, 0.0) + own
    return {k: round(1e6 * v / max(ops, 1), 1) for k, v in sorted(totals.items())}


async def profile_variants(
    backends: Sequence[Backend],
    url: str,
    sessions: int,
    args: argparse.Namespace,
    texts: Texts,
    out: Path,
) -> tuple[str, dict[str, Any]]:
    """One closed-loop round of each backend under cProfile, timed in CPU seconds
    (not wall time: a send() preempted by the server would look expensive).

    cProfile's cumulative times are unreliable across greenlet switches; its own
    (tottime) times are not, so the summary is own CPU per operation by library.
    """
    targets = await load_targets(url, sessions)
    per_variant: dict[str, dict[str, float]] = {}
    buffer = io.StringIO()
    for backend in backends:
        profiler = cProfile.Profile(time.process_time)
        profiler.enable()
        try:
            rnd = await run_closed(backend, targets, args.seconds, texts, lead_in=args.lead_in)
        finally:
            profiler.disable()
        profiler.dump_stats(str(out / f"profile-{backend.name}.pstats"))
        per_variant[backend.name] = _by_category(profiler, rnd.ops)
        buffer.write(f"==== {backend.name}: {rnd.ops} operations ====\n")
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats("tottime").print_stats(35)
    (out / "profile.txt").write_text(buffer.getvalue())
    layers = await layer_costs(url)
    per_variant["layers_us_per_call"] = layers
    names = [b.name for b in backends]
    categories = sorted({k for n in names for k in per_variant[n]})
    rows = [[c, *(fmt(per_variant[n].get(c, 0.0), 1) for n in names)] for c in categories]
    rows.append(["total", *(fmt(sum(per_variant[n].values()), 1) for n in names)])
    text = (
        f"profiled CPU us/op by library at {sessions} sessions "
        f"(under cProfile, so inflated; compare the columns):\n"
        + table(["library", *names], rows)
        + f"\ntop functions: {out / 'profile.txt'}\n\n"
        + "each layer alone, client CPU us per call (no profiler, no round trip):\n"
        + table(["layer", "us"], [[k, fmt(v, 1)] for k, v in layers.items()])
    )
    return text, per_variant

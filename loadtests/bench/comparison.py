"""Two backends on the same closed-loop workload, interleaved, at several
concurrency levels: the shared core of ``driver`` and ``instrumentation``."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench.backends import Backend
from loadtests.bench.database import load_targets
from loadtests.bench.interleave import interleave
from loadtests.bench.profiling import profile_variants
from loadtests.bench.report import table
from loadtests.bench.sessions import APPEND, HISTORY, LIST, Texts
from loadtests.bench.stats import Summary, fmt, paired_ratios, percentile, ratio

LATENCY_HEADERS = ("history p50/p95/p99 ms", "append p50/p95/p99 ms", "list p50/p95/p99 ms")


@dataclass(frozen=True)
class Limits:
    """The subject's targets relative to the reference."""

    min_ops_ratio: float
    max_cpu_ratio: float


def add_common_arguments(parser: argparse.ArgumentParser, *, sessions: str) -> None:
    parser.add_argument("--sessions", default=sessions, help=f"concurrency levels ({sessions})")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per variant and level (5)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per round (3)")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per variant (1)")
    parser.add_argument(
        "--pace",
        type=float,
        default=None,
        help="turns per second per session instead of a closed loop (equal offered load)",
    )
    parser.add_argument(
        "--lead-in",
        type=float,
        default=0.5,
        help="seconds of each round run before counting starts (0.5)",
    )
    parser.add_argument("--messages", type=int, default=20_000, help="seeded messages (20000)")
    parser.add_argument("--pool-size", type=int, default=10, help="pool size (10)")
    parser.add_argument("--max-overflow", type=int, default=20, help="pool overflow (20)")
    parser.add_argument(
        "--profile", action="store_true", help="also profile both variants (cProfile)"
    )


def config(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "sessions", "rounds", "seconds", "warmup", "lead_in", "pace", "messages", "pool_size",
        "max_overflow",
    )  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def latency_cells(summary: Summary) -> list[str]:
    cells = []
    for op in (HISTORY, APPEND, LIST):
        q = summary.quantiles_ms(op)
        cells.append("/".join(fmt(q[k]) for k in ("p50", "p95", "p99")))
    return cells


async def compare(
    url: str,
    subject: Backend,
    reference: Backend,
    args: argparse.Namespace,
    texts: Texts,
    limits: Limits,
) -> tuple[list[dict[str, Any]], str]:
    """Per level: both variants' figures, the subject/reference ratios, the verdicts."""
    levels: list[dict[str, Any]] = []
    rows: list[list[str]] = []
    ratio_rows: list[list[str]] = []
    for sessions in (int(s) for s in args.sessions.split(",")):
        targets = await load_targets(url, sessions)
        summaries = await interleave(
            [subject, reference],
            targets,
            rounds=args.rounds,
            seconds=args.seconds,
            warmup=args.warmup,
            texts=texts,
            lead_in=args.lead_in,
            pace=args.pace,
        )
        a, b = summaries[subject.name], summaries[reference.name]
        ops_ratio = ratio(a.ops_per_second, b.ops_per_second)
        cpu_ratio = ratio(a.cpu_us_per_op, b.cpu_us_per_op)
        met = {"ops": ops_ratio >= limits.min_ops_ratio, "cpu": cpu_ratio <= limits.max_cpu_ratio}
        pairs = paired_ratios(a.round_cpu_us, b.round_cpu_us)
        levels.append(
            {
                "sessions": sessions,
                "variants": {name: v.to_json() for name, v in summaries.items()},
                "ratios": {
                    "ops_per_second": round(ops_ratio, 3),
                    "cpu_per_op": round(cpu_ratio, 3),
                    "cpu_per_op_by_round": [round(r, 3) for r in pairs],
                },
                "targets_met": met,
            }
        )
        for name, v in summaries.items():
            rows.append(
                [
                    str(sessions),
                    name,
                    fmt(v.ops_per_second, 0),
                    fmt(v.cpu_us_per_op, 0),
                    *latency_cells(v),
                ]
            )
        ratio_rows.append(
            [
                str(sessions),
                fmt(ops_ratio, 3),
                fmt(cpu_ratio, 3),
                f"{fmt(percentile(pairs, 0.5), 3)} ({fmt(pairs[0], 2)}-{fmt(pairs[-1], 2)})",
                "yes" if met["ops"] else "NO",
                "yes" if met["cpu"] else "NO",
            ]
        )
    pair = f"{subject.name}/{reference.name}"
    text = "\n\n".join(
        [
            table(["sessions", "variant", "ops/s", "CPU us/op", *LATENCY_HEADERS], rows),
            table(
                [
                    "sessions",
                    f"ops/s {pair}",
                    f"CPU/op {pair}",
                    "per round: median (range)",
                    f">= {limits.min_ops_ratio}x ops",
                    f"<= {limits.max_cpu_ratio}x CPU",
                ],
                ratio_rows,
            ),
        ]
    )
    return levels, text


async def compare_pair(
    url: str,
    subject: Backend,
    reference: Backend,
    args: argparse.Namespace,
    texts: Texts,
    limits: Limits,
    out: Path,
) -> tuple[dict[str, Any], str]:
    """Open both backends, :func:`compare` them (and profile both with
    ``--profile``), close them; the results entries and the printed text."""
    results: dict[str, Any] = {}
    try:
        await subject.open()
        await reference.open()
        results["levels"], text = await compare(url, subject, reference, args, texts, limits)
        if args.profile:
            sessions = max(int(s) for s in args.sessions.split(","))
            note, results["profile_cpu_us_per_op"] = await profile_variants(
                [subject, reference], url, sessions, args, texts, out
            )
            text += "\n\n" + note
    finally:
        await subject.close()
        await reference.close()
    return results, text

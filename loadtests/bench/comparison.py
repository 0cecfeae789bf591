"""Two backends on the same closed-loop workload, interleaved, at several
concurrency levels: the shared core of ``driver`` and ``instrumentation``.

With ``--equal-load F`` each level is then run again, paced so that both
variants serve the same load (F times the slower one's closed-loop
throughput), and CPU per operation is compared there too. In a closed loop
each variant runs at its own throughput and CPU per operation depends on the
load (fewer responses per event-loop wake-up at a lower rate: 66 us per
operation at 10 closed-loop sessions, 84-90 us at 70% of that rate); at equal
load both do the same work at the same rate, as a service below saturation
does.

The verdict (``targets_met["target"]``): operations per second from the
closed loop (the capacity), CPU per operation from the equal-load runs when
they were made (the same workload for both variants), else from the closed
loop. An equal-load comparison counts only if both variants kept up with the
offered load (``MIN_SERVED``): a variant that fell behind finished its rounds
in a backlog, at saturation, not at the rate compared.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.bench.duet import DuetVariant, run_duet
from loadtests.bench.interleave import interleave
from loadtests.bench.profiling import profile_variants
from loadtests.bench.report import table, verdict_cell
from loadtests.bench.sessions import OPERATIONS, OPS_PER_TURN, Target, Texts, load_targets
from loadtests.bench.stats import Summary, fmt, paired_ratios, percentile_or_nan, ratio
from loadtests.core.backends import Backend

LATENCY_HEADERS = tuple(f"{op} p50/p95/p99 ms" for op in OPERATIONS)
#: At equal load, the share of the offered operations per second each variant
#: must have served for the comparison to count (paced sessions that fall behind
#: do their late turns at once, so the round ends in a backlog).
MIN_SERVED = 0.97


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
        "--equal-load",
        type=float,
        default=None,
        metavar="F",
        help="also compare CPU/op at equal offered load: F x the slower closed-loop rate (0: off)",
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
        "sessions", "rounds", "seconds", "warmup", "lead_in", "pace", "equal_load", "messages",
        "pool_size", "max_overflow",
    )  # fmt: skip
    return {k: getattr(args, k) for k in keys}


def latency_cells(summary: Summary) -> list[str]:
    cells = []
    for op in OPERATIONS:
        q = summary.quantiles_ms(op)
        cells.append("/".join(fmt(q[k]) for k in ("p50", "p95", "p99")))
    return cells


async def _run_pair(
    subject: Backend,
    reference: Backend,
    targets: list[Target],
    args: argparse.Namespace,
    texts: Texts,
    pace: float | None,
) -> tuple[Summary, Summary]:
    schedule: dict[str, Any] = {
        "rounds": args.rounds,
        "seconds": args.seconds,
        "warmup": args.warmup,
        "texts": texts,
        "lead_in": args.lead_in,
        "pace": pace,
    }
    if isinstance(subject, DuetVariant) and isinstance(reference, DuetVariant):
        summaries = await asyncio.to_thread(run_duet, [subject, reference], targets, **schedule)
    else:
        summaries = await interleave([subject, reference], targets, **schedule)
    return summaries[subject.name], summaries[reference.name]


def spread(pairs: list[float]) -> str:
    """Per-round ratios as "median (lowest-highest)"."""
    return f"{fmt(percentile_or_nan(pairs, 50), 3)} ({fmt(pairs[0], 2)}-{fmt(pairs[-1], 2)})"


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
    # Paced is equal load already; 0 turns the second comparison off.
    equal_load = args.equal_load if args.pace is None and args.equal_load else None
    # A duet runs both variants at once, each with its own sessions.
    duet = isinstance(subject, DuetVariant)
    for sessions in (int(s) for s in args.sessions.split(",")):
        targets = await load_targets(url, 2 * sessions if duet else sessions)
        a, b = await _run_pair(subject, reference, targets, args, texts, args.pace)
        ops_ratio = ratio(a.ops_per_second, b.ops_per_second)
        cpu_ratio = ratio(a.cpu_us_per_op, b.cpu_us_per_op)
        pairs = paired_ratios(a.round_cpu_us, b.round_cpu_us)
        level: dict[str, Any] = {
            "sessions": sessions,
            "variants": {subject.name: a.to_json(), reference.name: b.to_json()},
            "ratios": {
                "ops_per_second": round(ops_ratio, 3),
                "cpu_per_op": round(cpu_ratio, 3),
                "cpu_per_op_by_round": [round(r, 3) for r in pairs],
            },
        }
        equal_cells: list[str] = []
        equal: tuple[float, float] | None = None
        if equal_load is not None:
            offered = equal_load * min(a.ops_per_second, b.ops_per_second)  # ops/s
            pace = offered / sessions / OPS_PER_TURN
            a_eq, b_eq = await _run_pair(subject, reference, targets, args, texts, pace)
            equal_cpu = ratio(a_eq.cpu_us_per_op, b_eq.cpu_us_per_op)
            equal_pairs = paired_ratios(a_eq.round_cpu_us, b_eq.round_cpu_us)
            served = served_share(offered, a_eq, b_eq)
            level["equal_load"] = {
                "pace_turns_per_session": round(pace, 1),
                "variants": {subject.name: a_eq.to_json(), reference.name: b_eq.to_json()},
                "cpu_per_op": round(equal_cpu, 3),
                "cpu_per_op_by_round": [round(r, 3) for r in equal_pairs],
                "served": round(served, 3),
            }
            equal = (equal_cpu, served)
        met = judge(limits, ops_ratio, cpu_ratio, equal)
        if equal is not None:
            equal_cells = [
                fmt(equal[0], 3),
                spread(equal_pairs),
                fmt(equal[1], 3),
                verdict_cell(met["cpu_equal_load"]),
            ]
        level["targets_met"] = met
        level["cpu_judged"] = (
            "equal_load" if equal is not None else "paced" if args.pace else "closed_loop"
        )
        levels.append(level)
        measured = [("", a, b)]
        if equal_load is not None:
            measured.append((" (equal load)", a_eq, b_eq))
        for suffix, a_run, b_run in measured:
            for name, v in ((subject.name, a_run), (reference.name, b_run)):
                rows.append(
                    [
                        str(sessions),
                        name + suffix,
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
                spread(pairs),
                verdict_cell(met["ops"]),
                verdict_cell(met["cpu"]),
                *equal_cells,
                verdict_cell(met["target"]),
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
                    f"<= {limits.max_cpu_ratio}x CPU"
                    + (" (not judged)" if equal_load is not None else ""),
                    *(
                        [
                            "CPU/op at equal load",
                            "per round: median (range)",
                            "served",
                            f"<= {limits.max_cpu_ratio}x CPU at equal load",
                        ]
                        if equal_load is not None
                        else []
                    ),
                    "target met",
                ],
                ratio_rows,
            ),
        ]
    )
    if equal_load is not None:
        text += (
            f"\n\nequal load: both variants paced at {equal_load:g} x the slower one's "
            "closed-loop throughput; served: the lower of the two variants' operations "
            f"per second over the offered (>= {MIN_SERVED} for the comparison to count).\n"
            "target met: ops/s from the closed loop (capacity), CPU/op at equal load "
            "(the same operations at the same rate for both). The closed loop's CPU/op "
            "is shown but not judged: there the costlier variant also runs at a lower "
            "rate, and CPU per operation rises as the rate falls for any code (fewer "
            "responses per event-loop wake-up), so its cost is counted twice "
            "(loadtests/bench/README.md)."
        )
    return levels, text


def judge(
    limits: Limits, ops_ratio: float, cpu_ratio: float, equal: tuple[float, float] | None
) -> dict[str, bool]:
    """Each target's verdict and the overall one (``target``).

    ``equal``: the CPU-per-operation ratio at equal load and the share of the
    offered load served (:func:`served_share`), when equal-load runs were made;
    then they judge CPU per operation, and the closed loop's ratio is reported
    only. (A NaN ratio fails every comparison, so it is never a pass.)
    """
    met = {"ops": ops_ratio >= limits.min_ops_ratio, "cpu": cpu_ratio <= limits.max_cpu_ratio}
    if equal is None:
        met["target"] = met["ops"] and met["cpu"]
        return met
    equal_cpu, served = equal
    met["cpu_equal_load"] = equal_cpu <= limits.max_cpu_ratio and served >= MIN_SERVED
    met["target"] = met["ops"] and met["cpu_equal_load"]
    return met


def served_share(offered: float, *runs: Summary) -> float:
    """The lowest of ``runs``' operations per second as a share of ``offered``."""
    return min(run.ops_per_second for run in runs) / offered if offered > 0 else math.nan


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

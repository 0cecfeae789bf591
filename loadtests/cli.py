"""``python -m loadtests <command>``: the one entry point of the harness, the gate
and the benchmarks.

Commands::

    run [options]                          Locust load test, p95 verdict (make loadtest)
    honesty [options]                      what the Locust harness adds to its p95s
    gate check|update-baseline [options]   the statistical latency gate (make gate)
    gate prove slow-query|quiet            the gate fails on a regression, passes without
    bench driver|instrumentation|network|pool|scale [options]
    compare A B [options]                  this release's run (B) against the last (A)
    capacity [options]                     raise the load step by step, report the knee

Exit status: 0 pass, 1 a target missed, 2 the run could not be made (a bad
option value included: one error line), 3 ``bench instrumentation
--instructions`` over its target.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from loadtests.core.options import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser (each subsystem adds its own options)."""
    from loadtests import bench
    from loadtests.gate import commands as gate
    from loadtests.harness import run

    parser = OneLineParser(
        prog="python -m loadtests",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run.add_run_arguments(
        sub.add_parser("run", help="migrate, seed, run Locust headless, report the p95 verdict")
    )
    run.add_honesty_arguments(
        sub.add_parser(
            "honesty",
            help="the harness's p95 against a pure-asyncio driver of the same calls (< 2 ms)",
        )
    )
    gate.add_arguments(sub.add_parser("gate", help="the statistical latency gate"))
    bench.add_arguments(sub.add_parser("bench", help="the performance benchmarks"))
    from loadtests.release import capacity, compare

    compare.add_arguments(
        sub.add_parser("compare", help="two report directories side by side, verdict per operation")
    )
    capacity.add_arguments(
        sub.add_parser("capacity", help="step the load up until a target is missed; the knee")
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the command; its exit status."""
    from chat_storage.migrations import MigrationError
    from loadtests.core.database import SetupError
    from loadtests.core.seed import SeedError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "gate":
            from loadtests.gate import commands as gate

            return gate.main(args)
        if args.command == "bench":
            from loadtests import bench

            return bench.main(args)
        if args.command == "compare":
            from loadtests.release import compare

            return compare.main(args)
        if args.command == "capacity":
            from loadtests.release import capacity

            return capacity.main(args)
        from loadtests.harness import run

        return run.honesty(args) if args.command == "honesty" else run.run(args)
    except (SetupError, SeedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MigrationError as exc:
        print(f"error: migrations refused: {exc}", file=sys.stderr)
        return 2

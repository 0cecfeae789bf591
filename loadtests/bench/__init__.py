"""Performance benchmarks: ``python -m loadtests bench <name> [options]``.

Each command runs in its own scratch database (created, migrated, seeded,
dropped), prints a plain table and writes ``reports/bench-<name>-<UTC
timestamp>/results.json`` and ``table.md``. Figures are for comparison within
one run (variants are interleaved so drift hits all of them); absolute numbers
depend on the machine. Each benchmark's figures are cited in the documentation
(``loadtests/README.md``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from loadtests.bench import driver, instrumentation, network, pool, scale

BENCHMARKS: dict[
    str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
] = {
    "driver": (
        "ChatStore vs raw asyncpg, same SQL, interleaved",
        driver.add_arguments,
        driver.main,
    ),
    "instrumentation": (
        "ChatStore with metrics and tracing on vs off, interleaved",
        instrumentation.add_arguments,
        instrumentation.main,
    ),
    "network": (
        "the workload through a proxy that delays each direction: one round trip per op",
        network.add_arguments,
        network.main,
    ),
    "pool": (
        "p95 and pool wait of paced sessions on the plan's pool and a larger one",
        pool.add_arguments,
        pool.main,
    ),
    "scale": (
        "history and append p95 and the history query's buffers as messages grow",
        scale.add_arguments,
        scale.main,
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` command's subcommands (one per benchmark) and their options."""
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (help_text, add_benchmark_arguments, _) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_benchmark_arguments(p)
        p.add_argument(
            "--server-url",
            default=None,
            help="a server where CREATE DATABASE is allowed "
            "(default: DATABASE_URL, else an embedded PostgreSQL)",
        )
        p.add_argument(
            "--reports-dir",
            type=Path,
            default=None,
            help="where bench-<name>-<ts>/ goes (reports/)",
        )


def main(args: argparse.Namespace) -> int:
    """Run the parsed benchmark; its exit status."""
    _, _, run = BENCHMARKS[args.benchmark]
    return run(args)

"""``python -m loadtests.bench <name> [options]``: the performance benchmarks."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loadtests.bench", description="chat-storage performance benchmarks"
    )
    sub = parser.add_subparsers(dest="benchmark", required=True)
    for name, (help_text, add_arguments, _) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, _, run = BENCHMARKS[args.benchmark]
    return run(args)

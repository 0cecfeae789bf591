"""``python -m loadtests gate``: the statistical latency gate.

Commands::

    python -m loadtests gate check                  # run the short load, judge it
    python -m loadtests gate check --summary S.json # judge an existing run
    python -m loadtests gate update-baseline        # 5 runs -> baseline.json
    python -m loadtests gate update-baseline --summary A.json --summary B.json
    python -m loadtests gate prove slow-query       # the gate must fail (prove.py)
    python -m loadtests gate prove quiet --runs 3   # the gate must pass every time
    python -m loadtests gate client-cost check      # instructions per call (cachegrind)
    python -m loadtests gate client-cost update-baseline
    python -m loadtests gate server-work check      # rows, buffers, WAL per operation
    python -m loadtests gate server-work update-budget
    python -m loadtests gate sensitivity            # each regression fails its guard

``check`` runs ``python -m loadtests run --driver both --mode paced --users 100
--duration 60 --warmup 10`` (half the users on ChatStore, half on the raw
asyncpg reference running the same SQL), then compares each operation's
normalised p95 (store p95 / raw p95, same run) with baseline.json; see
compare.py for the rule. Exit status: 0 pass, 1 fail, 2 the run could
not be made.

``update-baseline`` is the only command that writes baseline.json: the
median normalised p95 per operation over its runs, their spread, the machine
(platform, CPUs, Python, PostgreSQL) and the date. The threshold and slack are
kept from the existing file: they are a decision (reasoning recorded in the
file), not a by-product of the latest runs.

What the normalised figure does and does not see: the raw reference runs the
same compiled SQL, so the quotient measures what ChatStore adds on top of the
driver (pool, greenlet, spans, metrics, result building) and is blind to a
statement that got slower for both paths. Those are the deterministic guards'
job: round trips per operation (tests/integration/test_round_trips.py), plans
(tests/integration/test_query_plans.py) and buffers per history read at 100k
and 1M messages (tests/gate/test_history_buffers.py); the absolute targets
catch what is left if it is large.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import statistics
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadtests.core.database import loop_safe_url
from loadtests.core.options import at_least, positive
from loadtests.core.workload import ADD_MESSAGE, GET_HISTORY, RAW, STORE
from loadtests.gate import prove
from loadtests.gate.compare import (
    BASELINE,
    Driven,
    by_driver,
    compare,
    format_result,
    load_json,
    normalised_p95,
)

ROOT = BASELINE.parents[2]
LOAD = ("--driver", "both", "--mode", "paced", "--metrics-port", "0")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``gate`` command's subcommands and options."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="gate_command", required=True)
    for name, help_text in (
        ("check", "judge a run (made now, or --summary) against the baseline"),
        ("update-baseline", "rewrite baseline.json from fresh runs (or --summary files)"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--baseline", type=Path, default=BASELINE, help="(loadtests/gate/...)")
        p.add_argument(
            "--summary",
            type=Path,
            action="append",
            help="an existing summary.json instead of a new run (repeatable for update)",
        )
        p.add_argument(
            "--users", type=at_least(2), default=100, help="Locust users, half per driver"
        )
        p.add_argument("--duration", type=positive, default=60.0, help="measured seconds (60)")
        p.add_argument("--warmup", type=at_least(0.0), default=10.0, help="warm-up seconds (10)")
        p.add_argument(
            "--reports-dir", type=Path, default=ROOT / "reports" / "gate", help="(reports/gate)"
        )
        if name == "update-baseline":
            p.add_argument("--runs", type=at_least(1), default=5, help="fresh runs to take (5)")
    prove.add_arguments(
        sub.add_parser("prove", help="show the gate fails on a regression and passes without")
    )
    from loadtests.gate import client_cost, sensitivity, server_work

    client_cost.add_arguments(
        sub.add_parser("client-cost", help="instructions per call of each operation (cachegrind)")
    )
    server_work.add_arguments(
        sub.add_parser("server-work", help="rows, buffers, WAL records per operation")
    )
    sensitivity.add_arguments(
        sub.add_parser("sensitivity", help="each injected regression fails its guard")
    )


def main(args: argparse.Namespace) -> int:
    """Run the parsed ``gate`` subcommand; its exit status."""
    try:
        if args.gate_command == "check":
            return check(args)
        if args.gate_command == "update-baseline":
            return update_baseline(args)
        if args.gate_command in ("client-cost", "server-work", "sensitivity"):
            from loadtests.gate import client_cost, sensitivity, server_work

            if args.gate_command == "client-cost":
                return client_cost.main(args)
            if args.gate_command == "server-work":
                return server_work.main(args)
            return sensitivity.main(args)
        return prove.main(args)
    except RunFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


class RunFailed(RuntimeError):
    """The load run could not be made (exit status 2)."""


def run_load(args: argparse.Namespace) -> Path:
    """Run the load harness once; the path of the summary.json it wrote."""
    reports: Path = args.reports_dir
    reports.mkdir(parents=True, exist_ok=True)
    before = set(reports.iterdir())
    cmd = [
        sys.executable, "-m", "loadtests", "run", *LOAD,
        "--users", str(args.users), "--duration", str(args.duration),
        "--warmup", str(args.warmup), "--reports-dir", str(reports),
    ]  # fmt: skip
    print("$ " + " ".join(cmd[1:]), flush=True)
    load_before = os.getloadavg()[0]
    # Exit status 1 (a target missed) still wrote a summary: the gate judges it.
    code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
    print(
        f"machine load average: {load_before:.2f} before the run, "
        f"{os.getloadavg()[0]:.2f} after (2 cores shared: other jobs skew timings)"
    )
    new = [d / "summary.json" for d in set(reports.iterdir()) - before]
    found = [p for p in new if p.exists()]
    if code not in (0, 1) or len(found) != 1:
        raise RunFailed(f"the load run exited {code} without one summary.json")
    return found[0]


def check(args: argparse.Namespace) -> int:
    baseline = load_json(args.baseline)
    if args.summary and len(args.summary) > 1:
        raise SystemExit("check takes one --summary")
    path = args.summary[0] if args.summary else run_load(args)
    summary = load_json(path)
    result = compare(summary, baseline)
    print(f"\ngate: {path} against {args.baseline}")
    print(
        f"baseline of {baseline['recorded_at']} on {baseline['machine']['platform']}, "
        f"{baseline['machine']['cpus']} CPUs, PostgreSQL {baseline['machine']['postgresql']}"
    )
    print(format_result(result, baseline))
    return 0 if result.passed else 1


def postgres_version(summary: dict[str, Any]) -> str:
    """The server's version: from the run's description, else asked of DATABASE_URL."""
    found = re.search(r"PostgreSQL (\d+(?:\.\d+)?)", str(summary.get("database", "")))
    if found:
        return found.group(1)
    url = os.environ.get("DATABASE_URL")
    if not url:
        return "unknown"

    async def ask() -> str:
        import asyncpg

        dsn = loop_safe_url(url).replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(dsn)
        try:
            return str(await conn.fetchval("SHOW server_version"))
        finally:
            await conn.close()

    return asyncio.run(ask())


def update_baseline(args: argparse.Namespace) -> int:
    old = load_json(args.baseline) if args.baseline.exists() else {}
    paths = list(args.summary or [])
    if not paths:
        paths = [run_load(args) for _ in range(args.runs)]
    summaries = [load_json(p) for p in paths]
    for path, summary in zip(paths, summaries, strict=True):
        if summary.get("driver") != "both" or int(summary.get("task_errors", 0)):
            raise SystemExit(f"{path}: not a clean --driver both run")
    per_run = [normalised_p95(s) for s in summaries]
    tables = [by_driver(s) for s in summaries]
    operations: dict[str, Any] = {}
    for name in per_run[0]:
        ratios = [r[name] for r in per_run if name in r]
        median = statistics.median(ratios)
        operations[name] = {
            "ratio": round(median, 3),
            "store_p95_ms": _median_p95(tables, STORE, name),
            "raw_p95_ms": _median_p95(tables, RAW, name),
            "runs": [round(r, 3) for r in ratios],
            "spread": round(max(abs(r / median - 1) for r in ratios), 3),
        }
    baseline = {
        "_comment": old.get("_comment", "Written by `python -m loadtests gate update-baseline`."),
        "threshold": old.get("threshold", 0.5),
        "spread_multiplier": old.get("spread_multiplier", 1.5),
        "slack_ms": old.get("slack_ms", 2.0),
        "reasoning": old.get("reasoning", ""),
        "targets_p95_ms": old.get("targets_p95_ms", {GET_HISTORY: 100.0, ADD_MESSAGE: 50.0}),
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": postgres_version(summaries[0]),
        },
        "load": {"users": summaries[0]["users"], "duration_s": summaries[0]["duration_s"]},
        "source_runs": [str(s.get("run_id", p)) for s, p in zip(summaries, paths, strict=True)],
        "operations": operations,
    }
    args.baseline.write_text(json.dumps(baseline, indent=2) + "\n")
    print(f"wrote {args.baseline} from {len(paths)} run(s):")
    for name, entry in operations.items():
        print(
            f"  {name:22} ratio {entry['ratio']:.3f}  runs {entry['runs']}  "
            f"spread {entry['spread']:.0%}"
        )
    return 0


def _median_p95(tables: Sequence[dict[tuple[str, str], Driven]], driver: str, name: str) -> float:
    values = [t[(driver, name)].p95_ms for t in tables if (driver, name) in t]
    return round(statistics.median(v for v in values if v is not None), 2)

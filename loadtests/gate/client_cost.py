"""Client cost per operation, counted: instructions per call of each public
ChatStore operation under Valgrind's cachegrind, against a committed baseline.

Why instructions: the latency gate's reference shares ChatStore's process,
SQL and row building, so CPU added to the store cancels out of its ratio. An
instruction count is absolute and does not move with the machine's load: the
same code counts the same within a fraction of a percent.

How: one process per run, under cachegrind, prepares the same data (a user of
its own, :func:`loadtests.gate.operations.prepare`), warms every operation up
:data:`WARMUP` times, freezes the heap (``gc.freeze()``, so a full collection
walks only what the calls keep alive) and then calls the operations the run
asks for. A base run calls none; run ``op`` calls ``op`` :data:`CALLS` times
more. ``(run op - base) / CALLS`` is ``op``'s instructions per call: start-up,
imports, connecting, preparing and warming up are in both and cancel.
``PYTHONHASHSEED=0`` fixes the order of sets and dicts of strings.

The baseline (client_instructions.json) holds the median of several repeats,
their largest relative spread, and the machine, versions and date it was
recorded on; ``python -m loadtests gate client-cost update-baseline`` is the
only writer. A figure fails above ``baseline * (1 + tolerance)``; the
tolerance is recorded with the baseline, chosen from the repeats' spread.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from loadtests.bench.instructions import Counts, valgrind
from loadtests.gate import machine, regressions
from loadtests.gate.operations import OPERATIONS, add_user, prepare
from loadtests.gate.verdict import Finding, report

BASELINE: Final = Path(__file__).with_name("client_instructions.json")
#: Calls of each operation before the heap is frozen and counting differs.
WARMUP: Final = 20
#: Extra calls of the measured operation in its run.
CALLS: Final = 100
#: Tolerance never below this, however quiet the repeats were.
MIN_TOLERANCE: Final = 0.03
#: Tolerance = this many times the largest spread seen between repeats.
SPREAD_FACTOR: Final = 3


async def _child(order: dict[str, Any]) -> None:
    from chat_storage import ChatStore, create_engine

    regressions.apply(regressions.named(order["regression"]))
    counts: dict[str, int] = order["counts"]
    engine = create_engine(database_url=order["url"], pool_size=1, max_overflow=0)
    store = ChatStore(engine)
    try:
        calls = await prepare(store, order["user"], WARMUP + CALLS)
        for name in OPERATIONS:
            for i in range(WARMUP):
                await calls[name](i)
        gc.collect()
        gc.freeze()
        for name in OPERATIONS:
            call = calls[name]
            for i in range(WARMUP, WARMUP + counts.get(name, 0)):
                await call(i)
    finally:
        await engine.dispose()


def _counted(url: str, user: str, counts: dict[str, int], regression: str | None) -> int:
    order = {"url": url, "user": user, "counts": counts, "regression": regression}
    asyncio.run(add_user(url, user))
    with tempfile.TemporaryDirectory(prefix="gate-client-cost-") as scratch:
        out = Path(scratch) / "cachegrind.out"
        command = [
            valgrind(),
            "--tool=cachegrind",
            "--cache-sim=no",
            "-q",
            f"--cachegrind-out-file={out}",
            sys.executable,
            "-m",
            "loadtests.gate.client_cost",
            json.dumps(order),
        ]
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"counted run {counts} exited {done.returncode}:\n{done.stderr}")
        return _instructions(out)


def _instructions(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    return Counts.read(path).instructions  # raises with the reason


def count_per_operation(
    url: str, *, regression: str | None = None, parallel: int = 2, tag: str = "run"
) -> dict[str, float]:
    """Instructions per call of every operation, counted once.

    Raises:
        RuntimeError: a counted process failed.
    """
    runs: list[tuple[str, dict[str, int]]] = [("", {})]
    runs += [(name, {name: CALLS}) for name in OPERATIONS]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = [
            pool.submit(_counted, url, f"cost-{tag}-{i}", counts, regression)
            for i, (_, counts) in enumerate(runs)
        ]
        totals = [f.result() for f in futures]
    base = totals[0]
    return {
        name: (total - base) / CALLS for (name, _), total in zip(runs[1:], totals[1:], strict=True)
    }


def judge(measured: dict[str, float], baseline: dict[str, Any]) -> list[Finding]:
    """One finding per operation: its figure against the baseline's."""
    tolerance = float(baseline["tolerance"])
    findings = []
    for name in OPERATIONS:
        expected = float(baseline["operations"][name])
        got = measured[name]
        findings.append(
            Finding(
                operation=name,
                measure="client instructions/call",
                baseline=expected,
                measured=got,
                limit=expected * (1 + tolerance),
                where="ChatStore's Python on the call's path (profile it: bench profiling)",
            )
        )
    return findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gate client-cost check|update-baseline``."""
    sub = parser.add_subparsers(dest="cost_command", required=True)
    check = sub.add_parser("check", help="count every operation, judge against the baseline")
    check.add_argument("--regression", choices=sorted(regressions.REGRESSIONS), default=None)
    check.add_argument("--baseline", type=Path, default=BASELINE)
    update = sub.add_parser("update-baseline", help="count REPEATS times, rewrite the baseline")
    update.add_argument("--repeats", type=int, default=3, help="counts to take (3)")
    update.add_argument("--baseline", type=Path, default=BASELINE)


def main(args: argparse.Namespace) -> int:
    """Run ``gate client-cost``; 0 pass, 1 over the baseline."""
    regression = regressions.named(getattr(args, "regression", None))
    with machine.scratch_database(regression) as url:
        if args.cost_command == "check":
            baseline = json.loads(args.baseline.read_text())
            measured = count_per_operation(url, regression=getattr(args, "regression", None))
            return report("client cost", judge(measured, baseline), baseline["recorded"])
        repeats = []
        for i in range(args.repeats):
            repeats.append(count_per_operation(url, tag=f"r{i}"))
            print(f"repeat {i + 1}: {json.dumps({k: round(v) for k, v in repeats[-1].items()})}")
    medians = {name: statistics.median(r[name] for r in repeats) for name in OPERATIONS}
    spread = max(
        abs(r[name] - medians[name]) / medians[name] for r in repeats for name in OPERATIONS
    )
    tolerance = max(MIN_TOLERANCE, SPREAD_FACTOR * spread)
    document = {
        "_comment": (
            "Instructions per call of each ChatStore operation under cachegrind "
            "(loadtests/gate/client_cost.py). Written only by `python -m loadtests gate "
            "client-cost update-baseline`; a raise needs a reason in the commit message."
        ),
        "recorded": machine.describe(repeats=args.repeats, spread=spread),
        "tolerance": round(tolerance, 4),
        "operations": {name: round(medians[name]) for name in OPERATIONS},
    }
    args.baseline.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.baseline}: largest spread {spread:.3%}, tolerance {tolerance:.1%}")
    for name in OPERATIONS:
        print(f"  {name:32} {medians[name]:>12,.0f}  {[round(r[name]) for r in repeats]}")
    return 0


if __name__ == "__main__":
    asyncio.run(_child(json.loads(sys.argv[1])))

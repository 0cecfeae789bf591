"""``python -m loadtests gate prove``: show the statistical gate is sensitive and quiet.

* ``slow-query``: one gate run in which ChatStore's history read is slower on
  the server by its p95 (so its p95 roughly doubles; see slow_query.py):
  the baseline's store p95 of get_history, or with ``--delay-from-latest`` the
  one measured by the newest run in reports/gate (CI runs ``make gate`` first).
  Passes (exit 0) only if the gate FAILED, on get_history's normalised p95.
* ``quiet --runs N``: N gate runs of the unchanged code. Passes only if every
  run passed; prints each run's largest normalised change.

Each run is a real ``python -m loadtests gate check`` (about 90 s).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from loadtests.core.options import at_least, positive
from loadtests.core.workload import GET_HISTORY, STORE
from loadtests.gate.compare import BASELINE, by_driver, load_json

ROOT = BASELINE.parents[2]

_CHANGE = re.compile(r"largest normalised change ([+-]\d+)%")


def gate(extra_env: dict[str, str], argv: Sequence[str]) -> tuple[int, str]:
    """Run ``python -m loadtests gate check``; (exit status, its output), output echoed."""
    cmd = [sys.executable, "-m", "loadtests", "gate", "check", *argv]
    env = dict(os.environ, **extra_env)
    lines = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
    return proc.returncode, "".join(lines)


def latest_store_p95(reports: Path) -> tuple[float, Path] | None:
    """ChatStore's get_history p95 in the newest gate run under ``reports``, if any."""
    runs = sorted(reports.glob("*/summary.json"))
    if not runs:
        return None
    p95 = by_driver(load_json(runs[-1])).get((STORE, GET_HISTORY))
    return (p95.p95_ms, runs[-1]) if p95 is not None and p95.p95_ms else None


def prove_slow_query(delay_ms: float | None, from_latest: bool, argv: Sequence[str]) -> int:
    baseline = load_json(BASELINE)
    delay = float(baseline["operations"][GET_HISTORY]["store_p95_ms"])
    source = "the baseline's store p95"
    latest = latest_store_p95(ROOT / "reports" / "gate") if from_latest else None
    if latest is not None:
        delay, run = latest
        source = f"the store p95 of the latest unchanged run ({run})"
    if delay_ms:
        delay, source = delay_ms, "--delay-ms"
    print(
        f"== injected: ChatStore history read + {delay:.2f} ms on the server (pg_sleep), {source}"
    )
    with tempfile.TemporaryDirectory(prefix="gate-inject-") as inject:
        shutil.copy(Path(__file__).with_name("slow_query.py"), Path(inject, "sitecustomize.py"))
        pythonpath = os.pathsep.join(p for p in (inject, os.environ.get("PYTHONPATH")) if p)
        code, out = gate({"PYTHONPATH": pythonpath, "GATE_SLOW_QUERY_MS": f"{delay}"}, argv)
    caught = [line for line in out.splitlines() if line.startswith(f"FAIL {GET_HISTORY}")]
    if code == 1 and any("normalised p95" in line for line in caught):
        print(f"PROVED: the gate failed on the injected slow query: {caught[0]}")
        return 0
    print(f"NOT PROVED: the gate exited {code} without failing {GET_HISTORY}'s normalised p95")
    return 1


def prove_quiet(runs: int, argv: Sequence[str]) -> int:
    results: list[tuple[int, str]] = []
    for n in range(1, runs + 1):
        print(f"== quiet run {n}/{runs}: unchanged code")
        code, out = gate({}, argv)
        found = _CHANGE.search(out)
        results.append((code, found.group(1) + "%" if found else "?"))
    passed = sum(1 for code, _ in results if code == 0)
    changes = ", ".join(change for _, change in results)
    print(f"quiet runs: {passed}/{runs} passed; largest normalised change per run: {changes}")
    return 0 if passed == runs else 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gate prove``'s subcommands and options."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="prove_command", required=True)
    slow = sub.add_parser("slow-query", help="inject a slower history read; expect FAIL")
    slow.add_argument(
        "--delay-ms", type=positive, help="default: baseline store p95 of get_history"
    )
    slow.add_argument(
        "--delay-from-latest",
        action="store_true",
        help="delay = store p95 of get_history in the newest reports/gate run (same machine, "
        "same hour: twice as slow as measured now)",
    )
    quiet = sub.add_parser("quiet", help="unchanged code N times; expect PASS each time")
    quiet.add_argument("--runs", type=at_least(1), default=3)
    for p in (slow, quiet):
        p.add_argument("--duration", type=positive, default=60.0, help="measured s per run (60)")


def main(args: argparse.Namespace) -> int:
    """Run the parsed ``gate prove`` subcommand; its exit status."""
    gate_args = ["--duration", f"{args.duration:g}"]
    if args.prove_command == "slow-query":
        return prove_slow_query(args.delay_ms, args.delay_from_latest, gate_args)
    return prove_quiet(args.runs, gate_args)

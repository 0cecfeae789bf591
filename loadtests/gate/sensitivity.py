"""``gate sensitivity``: every regression in regressions.py, applied in turn,
must fail the guard meant for it; unchanged code must pass each guard.

The product measured is a snapshot of the committed tree (``git archive HEAD
schema``, extracted to a temporary directory and put first on PYTHONPATH), so
that neither the suite nor the regressions touch the checkout, and work in
progress in the checkout does not decide the suite's verdict. ``--tree
working`` measures the checkout as it is instead.

Guards: ``server-work`` (rows, buffers, WAL records, statements, triggers,
plan nodes), ``client-cost`` (instructions per call under cachegrind, slow:
``--skip-client-cost`` leaves it out) and, for the pool's order, the unit tests
of the pool run with a short per-test timeout (a lost wake-up hangs them, and
the timeout turns the hang into a failure naming the test).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from loadtests.gate import regressions

ROOT: Final = Path(__file__).resolve().parents[2]
#: The pool tests' timeout under the suite: a hang fails in this many seconds.
POOL_TIMEOUT: Final = 20
_GUARDS: Final = {
    "server work": ("server-work", "check"),
    "client instructions": ("client-cost", "check"),
}


@dataclass(frozen=True)
class Outcome:
    """One guard run: its exit status, its verdict lines, its duration."""

    regression: str
    guard: str
    status: int
    lines: list[str]
    seconds: float

    @property
    def caught(self) -> bool:
        return self.status != 0


def _snapshot(into: Path) -> Path:
    archive = into / "schema.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", "HEAD", "schema"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "schema"


def _run(regression: str | None, guard: str, schema: Path | None, quiet_lines: int = 3) -> Outcome:
    env = dict(os.environ)
    if schema is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(schema), str(ROOT)])
    if regression:
        env[regressions.ENV] = regression
    else:
        env.pop(regressions.ENV, None)
    if guard.startswith("tests/unit/test_pool.py"):
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                   "-p", "loadtests.gate.regressions", "tests/unit/test_pool.py",
                   f"--timeout={POOL_TIMEOUT}"]  # fmt: skip
    else:
        command = [sys.executable, "-m", "loadtests", "gate", *_GUARDS[guard]]
        if regression:
            command += ["--regression", regression]
    started = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - started
    out = done.stdout.splitlines()
    if guard.startswith("tests/unit"):
        lines = [line for line in out if line.startswith(("FAILED", "E  ")) or "passed" in line]
    else:
        lines = [line.strip() for line in out if line.startswith(("FAIL", "PASS", "  "))]
    if done.returncode not in (0, 1):
        lines += done.stderr.splitlines()[-3:]
    return Outcome(
        regression or "(none)", guard, done.returncode, lines[: quiet_lines + 1], seconds
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``gate sensitivity`` options."""
    parser.add_argument(
        "--tree", choices=("head", "working"), default="head",
        help="measure a snapshot of HEAD (default) or the checkout as it is",
    )  # fmt: skip
    parser.add_argument("--skip-client-cost", action="store_true", help="(cachegrind: minutes)")
    parser.add_argument("--quiet-runs", type=int, default=1, help="unchanged runs per guard (1)")
    parser.add_argument("--only", action="append", help="run only this regression (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the suite; 0 when every regression failed its guard and every quiet run passed."""
    chosen = [regressions.REGRESSIONS[name] for name in (args.only or regressions.REGRESSIONS)]
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="gate-sensitivity-") as scratch:
        schema = _snapshot(Path(scratch)) if args.tree == "head" else None
        for regression in chosen:
            if args.skip_client_cost and regression.guard == "client instructions":
                print(f"{regression.name:22} (its guard, the client count, skipped)")
                continue
            outcomes.append(_run(regression.name, regression.guard, schema))
            print(_row(outcomes[-1]), flush=True)
        quiet_guards = ["server work"] + ([] if args.skip_client_cost else ["client instructions"])
        for guard in quiet_guards:
            for _ in range(args.quiet_runs):
                outcomes.append(_run(None, guard, schema))
                print(_row(outcomes[-1]), flush=True)
    missed = [o for o in outcomes if o.regression != "(none)" and not o.caught]
    noisy = [o for o in outcomes if o.regression == "(none)" and o.caught]
    print(f"\n{len(outcomes) - len(missed) - len(noisy)} of {len(outcomes)} as expected")
    for o in missed:
        print(f"MISSED: {o.regression} passed {o.guard}")
    for o in noisy:
        print(f"NOISY: unchanged code failed {o.guard}")
    return 1 if missed or noisy else 0


def _row(o: Outcome) -> str:
    verdict = "caught" if o.caught else "passed"
    if o.regression == "(none)":
        verdict = "quiet" if not o.caught else "FAILED (noise)"
    detail = "\n      ".join(o.lines)
    return f"{o.regression:22} {o.guard:22} {verdict:8} {o.seconds:6.0f} s\n      {detail}"

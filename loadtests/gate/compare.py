"""The statistical gate's arithmetic: a load run's summary.json against the baseline.

Each operation's ChatStore p95 is divided by the raw-asyncpg p95 of the same
operation in the same run (``--driver both``: both paths share the process,
the event loop, the server and whatever else the machine is doing at that
moment), so machine speed and load cancel out to first order. The quotient is
the *normalised p95*; the baseline holds its expected value per operation.

An operation regresses when both hold:

* its normalised p95 exceeds the baseline's by more than its limit: the
  larger of ``threshold`` and ``spread_multiplier`` x the run-to-run spread
  measured for that operation when the baseline was recorded (operations with
  few samples, such as archive, have a wider spread and so a wider limit), and
* its p95 exceeds what the baseline predicts for this run (raw p95 x baseline
  ratio) by more than ``slack_ms`` (absolute).

The second condition is the floor: at p95s of a few milliseconds a single
scheduler hiccup moves the quotient by tens of percent while costing a user
nothing. Both numbers, and the spread they were chosen from, are recorded in
``baseline.json``.

Independently of the baseline, a run fails when any request failed, a task
raised, a required operation has no sample, or an absolute target is missed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.core.workload import RAW, REQUIRED, STORE

#: Fewer samples than this on either driver and the operation's p95 is not compared
#: (shown n/a; failures and targets still count). At 100 users for 60 s the archive
#: operation gets ~100 samples a driver: its p95 is the ~5th slowest request, and
#: its normalised p95 ranged 0.37 to 1.75 over ten unchanged runs. The deterministic
#: guards (round trips, plans) cover it instead.
MIN_SAMPLES = 200
#: The baseline: written only by ``python -m loadtests gate update-baseline``.
BASELINE = Path(__file__).resolve().with_name("baseline.json")


@dataclass(frozen=True, slots=True)
class Driven:
    """One operation on one driver in one run."""

    count: int
    failures: int
    p95_ms: float | None


@dataclass(frozen=True, slots=True)
class GateRow:
    """One operation's comparison (None where a figure cannot be computed)."""

    name: str
    store_p95_ms: float | None
    raw_p95_ms: float | None
    ratio: float | None
    baseline_ratio: float | None
    change: float | None
    limit: float
    excess_ms: float | None
    target_ms: float | None
    problems: tuple[str, ...]

    @property
    def status(self) -> str:
        """FAIL, ok, or n/a when the operation could not be compared."""
        if self.problems:
            return "FAIL"
        return "ok" if self.change is not None else "n/a"


@dataclass(frozen=True, slots=True)
class GateResult:
    """Every row, plus run-level problems (failed requests, task errors)."""

    rows: tuple[GateRow, ...]
    run_problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        """True when no row and nothing in the run failed."""
        return not self.run_problems and not any(row.problems for row in self.rows)

    @property
    def problems(self) -> list[str]:
        """Every failure, one line each, in table order."""
        return [*self.run_problems, *(p for row in self.rows for p in row.problems)]

    @property
    def largest_change(self) -> float | None:
        """The largest normalised change of any compared operation."""
        changes = [row.change for row in self.rows if row.change is not None]
        return max(changes) if changes else None


def load_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``."""
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def by_driver(summary: Mapping[str, Any]) -> dict[tuple[str, str], Driven]:
    """(driver, operation) -> count, failures, p95 from a summary.json."""
    table = {}
    for op in summary["operations"]:
        p95 = op.get("p95_ms")
        table[(str(op["driver"]), str(op["name"]))] = Driven(
            count=int(op["count"]),
            failures=int(op["failures"]),
            p95_ms=None if p95 is None else float(p95),
        )
    return table


def normalised_p95(summary: Mapping[str, Any]) -> dict[str, float]:
    """Operation -> store p95 / raw p95, for operations with enough samples on both."""
    table = by_driver(summary)
    out = {}
    for (driver, name), store in table.items():
        if driver != STORE:
            continue
        raw = table.get((RAW, name))
        if raw is None or min(store.count, raw.count) < MIN_SAMPLES:
            continue
        if store.p95_ms is None or not raw.p95_ms:
            continue
        out[name] = store.p95_ms / raw.p95_ms
    return out


def compare(summary: Mapping[str, Any], baseline: Mapping[str, Any]) -> GateResult:
    """Judge one run's summary against the baseline."""
    threshold = float(baseline["threshold"])
    multiplier = float(baseline["spread_multiplier"])
    slack = float(baseline["slack_ms"])
    targets: Mapping[str, float] = baseline["targets_p95_ms"]
    expected: Mapping[str, Any] = baseline["operations"]
    table = by_driver(summary)
    ratios = normalised_p95(summary)

    run_problems = []
    if summary.get("driver") != "both":
        run_problems.append("the run must use --driver both (the raw reference normalises)")
    if int(summary.get("task_errors", 0)):
        run_problems.append(f"{summary['task_errors']} exception(s) inside Locust tasks")
    for (driver, name), driven in sorted(table.items()):
        if driven.failures:
            run_problems.append(f"{driver} {name}: {driven.failures} failed request(s)")

    names = [str(op["name"]) for op in summary["operations"] if op["driver"] == STORE]
    rows = []
    for name in names:
        store = table[(STORE, name)]
        raw = table.get((RAW, name))
        target = targets.get(name)
        problems = []
        if name in REQUIRED and store.count == 0:
            problems.append(f"{name}: no sample (the run measured nothing)")
        if target is not None and store.p95_ms is not None and store.p95_ms > target:
            saturated = raw is not None and raw.p95_ms is not None and raw.p95_ms > target
            hint = (
                f" (the raw reference misses it too, {raw.p95_ms:.1f} ms: the machine was "
                "saturated during the run; rerun on a quiet machine)"
                if saturated and raw is not None and raw.p95_ms is not None
                else ""
            )
            problems.append(
                f"{name}: p95 {store.p95_ms:.1f} ms misses the absolute target {target:g} ms" + hint
            )
        ratio = ratios.get(name)
        entry = expected.get(name, {})
        base = entry.get("ratio")
        limit = max(threshold, multiplier * float(entry.get("spread", 0.0)))
        change = excess = None
        if ratio is not None and base is not None and raw is not None and raw.p95_ms:
            change = ratio / float(base) - 1
            assert store.p95_ms is not None
            excess = store.p95_ms - raw.p95_ms * float(base)
            if change > limit and excess > slack:
                problems.append(
                    f"{name}: normalised p95 {ratio:.2f} vs baseline {float(base):.2f} "
                    f"({change:+.0%}, limit +{limit:.0%}); {excess:+.1f} ms over the "
                    f"expected {raw.p95_ms * float(base):.1f} ms (slack {slack:g} ms)"
                )
        rows.append(
            GateRow(
                name=name,
                store_p95_ms=store.p95_ms,
                raw_p95_ms=raw.p95_ms if raw is not None else None,
                ratio=ratio,
                baseline_ratio=None if base is None else float(base),
                change=change,
                limit=limit,
                excess_ms=excess,
                target_ms=target,
                problems=tuple(problems),
            )
        )
    return GateResult(tuple(rows), tuple(run_problems))


def format_result(result: GateResult, baseline: Mapping[str, Any]) -> str:
    """The table and the verdict, as printed."""

    def num(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (
        "operation", "store p95", "raw p95", "norm", "baseline", "change", "limit", "excess ms",
        "target", "",
    )  # fmt: skip
    lines: list[Sequence[str]] = [header]
    for r in result.rows:
        lines.append(
            (
                r.name,
                num(r.store_p95_ms, ".1f"),
                num(r.raw_p95_ms, ".1f"),
                num(r.ratio, ".2f"),
                num(r.baseline_ratio, ".2f"),
                num(r.change, "+.0%"),
                f"+{r.limit:.0%}",
                num(r.excess_ms, "+.1f"),
                "-" if r.target_ms is None else f"<{r.target_ms:g}",
                r.status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    out.append("")
    out.append(
        "rule: FAIL when normalised p95 (store p95 / raw p95) > baseline x (1 + limit), limit = "
        f"max({baseline['threshold']:g}, {baseline['spread_multiplier']:g} x measured spread), "
        f"and store p95 > raw p95 x baseline + {baseline['slack_ms']:g} ms; "
        "or any failed request; or an absolute target missed"
    )
    for problem in result.problems:
        out.append(f"FAIL {problem}")
    largest = result.largest_change
    tail = "" if largest is None else f" (largest normalised change {largest:+.0%})"
    out.append(f"gate: {'PASS' if result.passed else 'FAIL'}{tail}")
    return "\n".join(out)

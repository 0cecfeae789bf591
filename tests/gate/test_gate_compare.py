"""The statistical gate's rule, on summaries shaped like the harness's summary.json.

No load is run here (the real runs are `python -m loadtests gate prove`, in CI):
these pin the arithmetic, the floor and the always-fail conditions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadtests.core.workload import OPERATIONS
from loadtests.gate.compare import BASELINE, compare, format_result, load_json


def baseline(threshold: float = 0.5, slack_ms: float = 2.0) -> dict[str, Any]:
    return {
        "threshold": threshold,
        "spread_multiplier": 1.5,
        "slack_ms": slack_ms,
        "targets_p95_ms": {"get_history": 100.0, "add_message": 50.0},
        "operations": {name: {"ratio": 0.5, "spread": 0.2} for name in OPERATIONS},
    }


def summary(
    store_p95: dict[str, float] | None = None, raw_ms: float = 8.0, **changes: Any
) -> dict[str, Any]:
    """A --driver both summary: raw p95 ``raw_ms``, store p95 half that unless given."""
    store_p95 = {name: raw_ms / 2 for name in OPERATIONS} | (store_p95 or {})
    raw_p95 = {name: raw_ms for name in OPERATIONS}
    operations = []
    for driver, p95s in (("store", store_p95), ("raw", raw_p95)):
        for name in OPERATIONS:
            operations.append(
                {"name": name, "driver": driver, "count": 1000, "failures": 0, "p95_ms": p95s[name]}
            )
    return {"operations": operations, "driver": "both", "task_errors": 0} | changes


def test_unchanged_run_passes() -> None:
    """A run matching the baseline passes with a 0% change everywhere."""
    result = compare(summary(), baseline())
    assert result.passed, result.problems
    assert result.largest_change == 0


def test_doubled_history_p95_fails() -> None:
    """Store p95 twice the expected (raw unchanged) fails on the normalised p95."""
    result = compare(summary({"get_history": 8.0}), baseline())
    assert [p.split(":")[0] for p in result.problems] == ["get_history"]
    assert "normalised p95 1.00 vs baseline 0.50 (+100%, limit +50%)" in result.problems[0]


def test_machine_twice_as_slow_passes() -> None:
    """Both drivers twice as slow: the normalised p95 is unchanged, so no failure."""
    assert compare(summary(raw_ms=16.0), baseline()).passed


def test_small_absolute_change_is_under_the_floor() -> None:
    """+75% normalised but only 1.5 ms over the expected 2 ms p95: within the slack."""
    assert compare(summary({"get_history": 3.5}, raw_ms=4.0), baseline()).passed
    assert not compare(summary({"get_history": 3.5}, raw_ms=4.0), baseline(slack_ms=1.0)).passed


def test_limit_widens_with_measured_spread() -> None:
    """An operation whose baseline spread is 60% is allowed 90% (1.5 x spread)."""
    wide = baseline()
    wide["operations"]["archive_conversation"]["spread"] = 0.6
    assert compare(summary({"archive_conversation": 7.2}), wide).passed  # +80%
    assert not compare(summary({"archive_conversation": 8.0}), wide).passed  # +100%


def test_missed_absolute_target_always_fails() -> None:
    """add_message p95 over 50 ms fails even when the normalised p95 is unchanged."""
    slow = summary({"add_message": 60.0}, raw_ms=120.0)
    result = compare(slow, baseline())
    assert result.problems[0].startswith(
        "add_message: p95 60.0 ms misses the absolute target 50 ms (the raw reference"
    )
    assert len(result.problems) == 1


def test_any_failed_request_fails() -> None:
    """A single failed request (either driver) fails the gate."""
    run = summary()
    run["operations"][-1]["failures"] = 1
    result = compare(run, baseline())
    assert result.problems == ["raw archive_conversation: 1 failed request(s)"]


def test_task_errors_and_wrong_driver_fail() -> None:
    """Exceptions inside tasks, or a run without the raw reference, fail."""
    assert not compare(summary(task_errors=2), baseline()).passed
    assert not compare(summary(driver="store"), baseline()).passed


def test_too_few_samples_are_not_compared() -> None:
    """An operation with under 200 samples shows n/a instead of a noisy verdict."""
    run = summary({"archive_conversation": 40.0})
    for op in run["operations"]:
        if op["name"] == "archive_conversation":
            op["count"] = 120
    result = compare(run, baseline())
    assert result.passed
    assert "n/a" in format_result(result, baseline())


def test_committed_baseline_is_complete() -> None:
    """gate_baseline.json records every operation, the machine, the date and its reasoning."""
    data = load_json(Path(BASELINE))
    assert {"get_history", "add_message", "create_conversation", "list_conversations"} <= set(
        data["operations"]
    )
    assert {"platform", "cpus", "python", "postgresql"} <= set(data["machine"])
    assert data["recorded_at"] and data["reasoning"]
    assert data["targets_p95_ms"] == {"get_history": 100.0, "add_message": 50.0}
    assert 0 < data["threshold"] < 1, "a limit of 100% or more would miss a doubled p95"

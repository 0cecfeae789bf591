"""The harness's arithmetic: percentiles, verdicts, seed shapes, URLs (no database)."""

from __future__ import annotations

import pytest

from loadtests.core.database import loop_safe_url
from loadtests.core.seed import history_lengths
from loadtests.core.stats import percentile
from loadtests.harness.report import OperationStats, Sample, format_table, summarize, verdict

TARGETS = {
    "get_history": 100.0,
    "add_message": 50.0,
    "create_conversation": 100.0,
    "list_conversations": 100.0,
    "archive_conversation": None,
}


def _samples(name: str, values: list[float], failed: int = 0) -> list[Sample]:
    return [Sample(float(i), "store", name, v, i < failed) for i, v in enumerate(values)]


def _row(name: str, **changes: object) -> OperationStats:
    values: dict[str, object] = {
        "name": name,
        "driver": "store",
        "count": 10,
        "failures": 0,
        "p50_ms": 1.0,
        "p95_ms": 40.0,
        "p99_ms": 60.0,
        "target_p95_ms": 50.0,
    }
    values.update(changes)
    return OperationStats(**values)  # type: ignore[arg-type]


def test_percentile_is_nearest_rank() -> None:
    """p50/p95/p99 of 1..100 are 50, 95 and 99; of 1..20, p95 is 19."""
    hundred = [float(v) for v in range(1, 101)]
    assert [percentile(hundred, q) for q in (50, 95, 99, 100)] == [50.0, 95.0, 99.0, 100.0]
    assert percentile([float(v) for v in range(1, 21)], 95) == 19.0
    ten = [float(v) for v in range(1, 11)]
    assert (percentile(ten, 50), percentile(ten, 95)) == (5.0, 10.0)


def test_percentile_of_nothing_is_none() -> None:
    """An operation without samples has no percentile."""
    assert percentile([], 95) is None


def test_percentile_of_one_sample_is_that_sample() -> None:
    """A single sample is every percentile."""
    assert percentile([7.5], 1) == percentile([7.5], 99) == 7.5


def test_summarize_computes_counts_failures_and_percentiles() -> None:
    """Rows carry count, failures and percentiles per operation, in the fixed order."""
    samples = _samples("get_history", [float(v) for v in range(100, 0, -1)], failed=2)
    rows = summarize(samples, TARGETS)
    assert [r.name for r in rows][:2] == ["get_history", "add_message"]
    history = rows[0]
    assert (history.count, history.failures) == (100, 2)
    assert (history.p50_ms, history.p95_ms, history.p99_ms) == (50.0, 95.0, 99.0)
    assert rows[1].count == 0 and rows[1].p95_ms is None


def test_row_passes_at_exactly_the_target() -> None:
    """p95 equal to the target passes; a hair above fails."""
    assert _row("add_message", p95_ms=50.0).passed
    assert not _row("add_message", p95_ms=50.01).passed


def test_row_with_a_failed_request_fails() -> None:
    """Any failed request fails the row, however fast."""
    assert not _row("get_history", failures=1, p95_ms=1.0).passed


def test_row_without_target_passes_on_latency() -> None:
    """No target: only failures count."""
    assert _row("archive_conversation", target_p95_ms=None, p95_ms=10_000.0).passed


def test_required_operation_without_samples_fails() -> None:
    """A run that never read history (or never inserted) measured nothing: fail."""
    assert _row("get_history", count=0, p95_ms=None).status == "fail"
    assert verdict([_row("add_message"), _row("get_history", count=0, p95_ms=None)]) == "fail"


def test_operation_without_samples_is_never_a_pass() -> None:
    """An operation with no sample is "no samples": not PASS, in the row, the
    table or summary.json, and not a failure of the run either."""
    empty = _row("archive_conversation", count=0, p95_ms=None, target_p95_ms=None)
    assert not empty.passed
    assert empty.status == "no samples"
    assert empty.as_json()["pass"] is None
    assert format_table([empty]).splitlines()[-1].endswith("NO SAMPLES")
    assert verdict([_row("get_history"), empty]) == "pass"


def test_verdict_fails_when_one_row_fails() -> None:
    """The verdict is pass only if every row passes."""
    good = _row("get_history")
    assert verdict([good, good]) == "pass"
    assert verdict([good, _row("add_message", p95_ms=51.0)]) == "fail"


def test_history_lengths_sum_to_the_messages_asked() -> None:
    """The seed's history lengths add up to --messages and respect the cap."""
    lengths = history_lengths(1000, 20_000, 5000)
    assert sum(lengths) == 20_000
    assert max(lengths) <= 5000


def test_history_lengths_have_a_long_tail() -> None:
    """Most histories are short, a few run into the thousands."""
    lengths = sorted(history_lengths(1000, 20_000, 5000))
    assert lengths[len(lengths) // 2] < 20
    assert lengths[-1] >= 1000


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:p@localhost:5432/db", "postgresql://u:p@127.0.0.1:5432/db"),
        ("postgresql://u@10.0.0.5/db", "postgresql://u@10.0.0.5/db"),
    ],
)
def test_loop_safe_url_replaces_localhost_only(url: str, expected: str) -> None:
    """localhost becomes 127.0.0.1; other hosts are untouched."""
    assert loop_safe_url(url) == expected

"""The harness's arithmetic: percentiles, verdicts, seed shapes, URLs (no database)."""

from __future__ import annotations

import pytest

from loadtests.cli import loop_safe_url
from loadtests.report import OperationStats, Sample, percentile, summarize, verdict
from loadtests.seed import history_lengths

TARGETS = {
    "history_read": 100.0,
    "message_insert": 50.0,
    "conversation_create": 100.0,
    "conversation_list": 100.0,
    "conversation_archive": None,
}


def _samples(name: str, values: list[float], failed: int = 0) -> list[Sample]:
    return [Sample(float(i), "chat", name, v, i < failed) for i, v in enumerate(values)]


def _row(name: str, **changes: object) -> OperationStats:
    values: dict[str, object] = {
        "name": name,
        "driver": "chat",
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


def test_percentile_of_nothing_is_none() -> None:
    """An operation without samples has no percentile."""
    assert percentile([], 95) is None


def test_percentile_of_one_sample_is_that_sample() -> None:
    """A single sample is every percentile."""
    assert percentile([7.5], 1) == percentile([7.5], 99) == 7.5


def test_summarize_computes_counts_failures_and_percentiles() -> None:
    """Rows carry count, failures and percentiles per operation, in the fixed order."""
    samples = _samples("history_read", [float(v) for v in range(100, 0, -1)], failed=2)
    rows = summarize(samples, TARGETS)
    assert [r.name for r in rows][:2] == ["history_read", "message_insert"]
    history = rows[0]
    assert (history.count, history.failures) == (100, 2)
    assert (history.p50_ms, history.p95_ms, history.p99_ms) == (50.0, 95.0, 99.0)
    assert rows[1].count == 0 and rows[1].p95_ms is None


def test_row_passes_at_exactly_the_target() -> None:
    """p95 equal to the target passes; a hair above fails."""
    assert _row("message_insert", p95_ms=50.0).passed
    assert not _row("message_insert", p95_ms=50.01).passed


def test_row_with_a_failed_request_fails() -> None:
    """Any failed request fails the row, however fast."""
    assert not _row("history_read", failures=1, p95_ms=1.0).passed


def test_row_without_target_passes_on_latency() -> None:
    """No target: only failures count."""
    assert _row("conversation_archive", target_p95_ms=None, p95_ms=10_000.0).passed


def test_required_operation_without_samples_fails() -> None:
    """A run that never read history (or never inserted) measured nothing: fail."""
    assert not _row("history_read", count=0, p95_ms=None).passed
    assert _row("conversation_archive", count=0, p95_ms=None).passed


def test_verdict_fails_when_one_row_fails() -> None:
    """The verdict is pass only if every row passes."""
    good = _row("history_read")
    assert verdict([good, good]) == "pass"
    assert verdict([good, _row("message_insert", p95_ms=51.0)]) == "fail"


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

"""The p95 agreement criterion of the live check (tests/monitoring/quantiles.py)."""

from __future__ import annotations

import pytest

from chat_storage.metrics import LATENCY_BUCKETS
from tests.monitoring.quantiles import agrees_within_a_bucket, bucket_index, nearest_rank


def test_nearest_rank_is_the_ceil_rank() -> None:
    """p95 of 1..100 is 95; of 1..10 it is 10 (ceil(9.5)); of one value, that value."""
    assert nearest_rank([float(v) for v in range(100, 0, -1)], 0.95) == 95.0
    assert nearest_rank([float(v) for v in range(1, 11)], 0.95) == 10.0
    assert nearest_rank([0.25], 0.95) == 0.25
    with pytest.raises(ValueError):
        nearest_rank([], 0.95)


def test_bucket_index_uses_upper_inclusive_edges() -> None:
    """A value on an edge belongs to the bucket that edge closes; above the last: +Inf."""
    edges = (0.001, 0.002, 0.005)
    assert [bucket_index(edges, v) for v in (0.0, 0.001, 0.0011, 0.002, 0.004, 0.006)] == [
        0,
        0,
        1,
        1,
        2,
        3,
    ]


@pytest.mark.parametrize(
    ("harness", "prometheus", "agrees"),
    [
        (0.0027, 0.0025, True),  # same bucket (2-3 ms)
        (0.0031, 0.0029, True),  # harness just past the 3 ms edge: one bucket below
        (0.0031, 0.003, True),  # Prometheus on the edge closing the bucket below
        (0.0045, 0.0025, False),  # two buckets below: not the same latencies
        (0.0027, 0.0035, False),  # above the harness: impossible for a correct histogram
        (0.0027, 2.7, False),  # observed in milliseconds instead of seconds
        (0.045, 0.055, False),  # the 50 ms target edge separates them
    ],
)
def test_agreement_criterion(harness: float, prometheus: float, agrees: bool) -> None:
    """Same bucket or the one just below agrees; anything else does not."""
    assert agrees_within_a_bucket(LATENCY_BUCKETS, harness, prometheus) is agrees

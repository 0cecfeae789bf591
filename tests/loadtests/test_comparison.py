"""How ``driver`` and ``instrumentation`` judge their ratios (comparison.py).

Pure functions of the measured figures: which measurement judges CPU per
operation, and that an equal-load comparison in which a variant fell behind
the offered load does not count.
"""

from __future__ import annotations

import math

import pytest

from loadtests.bench.comparison import MIN_SERVED, Limits, judge, served_share
from loadtests.bench.stats import Summary

LIMITS = Limits(min_ops_ratio=0.95, max_cpu_ratio=1.05)


def test_without_equal_load_the_closed_loop_judges_both() -> None:
    assert judge(LIMITS, 0.97, 1.04, None) == {"ops": True, "cpu": True, "target": True}
    assert judge(LIMITS, 0.97, 1.06, None)["target"] is False
    assert judge(LIMITS, 0.94, 1.00, None)["target"] is False


def test_equal_load_judges_cpu_and_the_closed_loop_judges_throughput() -> None:
    met = judge(LIMITS, 0.97, 1.08, (1.02, 1.0))
    # The closed loop's CPU ratio is still reported, but it is not the verdict.
    assert met == {"ops": True, "cpu": False, "cpu_equal_load": True, "target": True}
    assert judge(LIMITS, 0.97, 1.00, (1.06, 1.0))["target"] is False
    assert judge(LIMITS, 0.90, 1.00, (1.00, 1.0))["target"] is False


def test_an_equal_load_run_that_fell_behind_does_not_count() -> None:
    assert judge(LIMITS, 0.97, 1.00, (1.00, MIN_SERVED))["target"] is True
    met = judge(LIMITS, 0.97, 1.00, (1.00, MIN_SERVED - 0.01))
    assert met["cpu_equal_load"] is False
    assert met["target"] is False


@pytest.mark.parametrize(
    ("ops", "cpu", "equal"),
    [
        (math.nan, 1.0, (1.0, 1.0)),
        (1.0, 1.0, (math.nan, 1.0)),
        (1.0, 1.0, (1.0, math.nan)),
        (1.0, math.nan, None),
    ],
)
def test_a_judged_ratio_that_could_not_be_measured_is_never_a_pass(
    ops: float, cpu: float, equal: tuple[float, float] | None
) -> None:
    assert judge(LIMITS, ops, cpu, equal)["target"] is False


def test_served_share_is_the_slower_variant_over_the_offered_load() -> None:
    kept_up = Summary(ops=3000, seconds=1.0)
    behind = Summary(ops=2880, seconds=1.0)
    assert served_share(3000.0, kept_up, behind) == pytest.approx(0.96)
    assert served_share(3000.0, kept_up, kept_up) == pytest.approx(1.0)
    assert math.isnan(served_share(0.0, kept_up))

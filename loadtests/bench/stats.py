"""Aggregates of benchmark rounds: rates, CPU per operation, percentiles (core/stats.py)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from loadtests.bench.sessions import OPERATIONS, Round
from loadtests.core.stats import percentile

QUANTILES = (50, 95, 99)


def percentile_or_nan(sorted_values: Sequence[float], q: float) -> float:
    """:func:`percentile`, NaN when empty (the tables' and ratios' missing value)."""
    value = percentile(sorted_values, q)
    return math.nan if value is None else value


@dataclass
class Summary:
    """Several rounds of one variant, added up."""

    ops: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    round_rates: list[float] = field(default_factory=list)
    round_cpu_us: list[float] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {op: [] for op in OPERATIONS})

    def add(self, rnd: Round) -> None:
        self.ops += rnd.ops
        self.seconds += rnd.seconds
        self.cpu_seconds += rnd.cpu_seconds
        self.round_rates.append(rnd.ops / rnd.seconds if rnd.seconds else 0.0)
        self.round_cpu_us.append(1e6 * rnd.cpu_seconds / rnd.ops if rnd.ops else math.nan)
        for op, values in rnd.latencies.items():
            self.latencies[op].extend(values)

    @property
    def ops_per_second(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def cpu_us_per_op(self) -> float:
        return 1e6 * self.cpu_seconds / self.ops if self.ops else math.nan

    def quantiles_ms(self, op: str) -> dict[str, float]:
        values = sorted(self.latencies[op])
        return {f"p{q}": 1000 * percentile_or_nan(values, q) for q in QUANTILES}

    def to_json(self) -> dict[str, Any]:
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 3),
            "cpu_seconds": round(self.cpu_seconds, 3),
            "ops_per_second": round(self.ops_per_second, 1),
            "cpu_us_per_op": round(self.cpu_us_per_op, 1),
            "round_ops_per_second": [round(r, 1) for r in self.round_rates],
            "round_cpu_us_per_op": [round(c, 1) for c in self.round_cpu_us],
            "latency_ms": {
                op: {"count": len(self.latencies[op]), **_rounded(self.quantiles_ms(op))}
                for op in OPERATIONS
            },
        }


def _rounded(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if math.isnan(v) else round(v, 3)) for k, v in values.items()}


def paired_ratios(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """Round-by-round ratios of two interleaved variants (round i of each ran
    back to back), sorted: their spread shows how much of a total ratio is noise."""
    return sorted(ratio(x, y) for x, y in zip(a, b, strict=True))


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is zero or either is NaN."""
    if not b or math.isnan(a) or math.isnan(b):
        return math.nan
    return a / b


def fmt(value: float, digits: int = 2) -> str:
    """A number for a table cell ("-" for NaN)."""
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def summarize(rounds: Iterable[Round]) -> Summary:
    summary = Summary()
    for rnd in rounds:
        summary.add(rnd)
    return summary

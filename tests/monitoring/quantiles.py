"""The load's own latency figures, and how they must agree with the histogram's.

The criterion (``agrees_within_a_bucket``): Prometheus's
``histogram_quantile(0.95, ...)`` over the load window lies in the bucket that
holds the harness's exact p95, or in the bucket just below it. Never above:
the harness times the whole awaited call, the histogram the part inside
``ChatStore._run``, so each harness sample is at least its observation and
every order statistic is too. One bucket below is allowed because the few
microseconds the harness adds can carry its p95 just past an edge.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from chat_storage import InvalidInput

T = TypeVar("T")


@dataclass
class Harness:
    """Times every call made through :meth:`call`, by operation and outcome."""

    samples: list[tuple[str, str, float]] = field(default_factory=list)

    async def call(self, operation: str, call: Awaitable[T]) -> T:
        """Await ``call`` and record its duration (rejected input is not recorded:
        ChatStore refuses it before its histogram starts)."""
        started = time.perf_counter()
        try:
            result = await call
        except InvalidInput:
            raise
        except Exception:
            self.samples.append((operation, "error", time.perf_counter() - started))
            raise
        self.samples.append((operation, "ok", time.perf_counter() - started))
        return result

    def durations(self, *, operation: str | None = None, outcome: str = "ok") -> list[float]:
        return [
            seconds
            for op, out, seconds in self.samples
            if out == outcome and (operation is None or op == operation)
        ]


def nearest_rank(values: Sequence[float], q: float) -> float:
    """The exact ``q`` quantile: the ceil(q * n)-th smallest value (the rank Prometheus uses)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def bucket_index(edges: Sequence[float], value: float) -> int:
    """Index of the bucket ``(edges[i-1], edges[i]]`` holding ``value`` (len(edges): +Inf)."""
    for i, edge in enumerate(edges):
        if value <= edge:
            return i
    return len(edges)


def agrees_within_a_bucket(edges: Sequence[float], harness_p: float, prometheus_p: float) -> bool:
    """Whether Prometheus's quantile is in the harness's bucket or the one below it."""
    expected = bucket_index(edges, harness_p)
    return expected - 1 <= bucket_index(edges, prometheus_p) <= expected

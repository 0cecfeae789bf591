"""A Prometheus histogram whose observations take no lock (single process).

Why not prometheus-client's ``Histogram`` on the hot path: its ``observe()``
updates the sum and the bucket as two separately locked values, and in the
instrumentation benchmark (a loaded process, 10 sessions) that measured 1.0 to
1.3 us per observation against 0.3 us here; ChatStore observes twice per
operation (its duration and its wait for a connection), which made the
metrics the largest part of the instrumentation's cost.

How: each thread observes into its own series (one writer per series, so the
plain integer and float updates need no lock, with or without a GIL), and
:meth:`ShardedHistogram.collect` adds the threads' series up when scraped. A
scrape may see one observation's bucket before its sum (so may
prometheus-client's own histogram). A series outlives its thread, because a
histogram's counts must never go down: a process keeps one small series per
thread and label set that ever observed.

Only for one process: in prometheus-client's multiprocess mode values must
live in its shared files, so :class:`~chat_storage.metrics.StoreMetrics` uses the
library's ``Histogram`` there.

Private names used (only this module; checked by tests/unit/test_private_internals.py):

* ``prometheus_client.metrics._use_created``: whether ``_created`` samples are
  exposed (``disable_created_metrics()`` clears it), so this histogram follows
  the same switch as the library's own metrics.
"""

from __future__ import annotations

import math
import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

from prometheus_client import CollectorRegistry
from prometheus_client import metrics as _prometheus_metrics
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar, Sample
from prometheus_client.utils import floatToGoString

__all__ = ["HistogramSeries", "ShardedHistogram"]

#: OpenMetrics limits an exemplar's label names and values to 128 characters.
_EXEMPLAR_MAX_RUNES: Final = 128


class HistogramSeries:
    """One label set's counts as observed by one thread (its only writer)."""

    __slots__ = ("_upper_bounds", "counts", "created", "exemplars", "sum")

    def __init__(self, upper_bounds: list[float]) -> None:
        self._upper_bounds = upper_bounds
        self.counts = [0] * len(upper_bounds)  # per bucket, not cumulative
        self.sum = 0.0
        self.exemplars: list[Exemplar | None] = [None] * len(upper_bounds)
        self.created = time.time()

    def zero_counts(self) -> list[int]:
        """:attr:`counts`, whose first bucket is where 0 goes, so that
        ``zero_counts()[0] += 1`` is ``observe(0.0)`` without the call (the
        pool's zero waits, counted on every operation)."""
        if bisect_left(self._upper_bounds, 0.0) != 0:
            raise ValueError("0 does not fall in this histogram's first bucket")
        return self.counts

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Count ``amount`` in its bucket (``le``: the first upper bound >= it)."""
        index = bisect_left(self._upper_bounds, amount)
        self.counts[index] += 1
        self.sum += amount
        if exemplar is not None:
            _check_exemplar(exemplar)
            self.exemplars[index] = Exemplar(exemplar, amount, time.time())


class ShardedHistogram(Collector):
    """A histogram family, observed per thread without locks, summed when collected.

    ``labels(*values).observe(amount, exemplar)`` and, without labels,
    ``observe(amount, exemplar)``, as with prometheus-client's ``Histogram``;
    the exposition is the same (buckets, ``_count``, ``_sum``, ``_created``,
    exemplars on buckets).
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
        registry: CollectorRegistry | None,
    ) -> None:
        bounds = [float(b) for b in buckets]
        if bounds != sorted(bounds):
            raise ValueError("histogram buckets must be in increasing order")
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self._name = name
        self._documentation = documentation
        self._labelnames = tuple(labelnames)
        self._upper_bounds = bounds
        self._local = threading.local()
        self._lock = threading.Lock()  # guards _series: new series, collect()
        self._series: dict[tuple[str, ...], list[HistogramSeries]] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *labelvalues: str) -> HistogramSeries:
        """This thread's series for ``labelvalues`` (created on first use)."""
        try:
            mine: dict[tuple[str, ...], HistogramSeries] = self._local.series
        except AttributeError:
            mine = self._local.series = {}
        series = mine.get(labelvalues)
        if series is None:
            if len(labelvalues) != len(self._labelnames):
                raise ValueError(f"{self._name}: expected labels {self._labelnames}")
            series = mine[labelvalues] = HistogramSeries(self._upper_bounds)
            with self._lock:
                self._series.setdefault(tuple(str(v) for v in labelvalues), []).append(series)
        return series

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        """Observe into the unlabelled series (a family without labels)."""
        try:
            series: HistogramSeries = self._local.unlabelled
        except AttributeError:
            series = self._local.unlabelled = self.labels()
        series.observe(amount, exemplar)

    def describe(self) -> Iterable[Metric]:
        # Lets the registry check the names without collecting.
        return [HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)]

    def collect(self) -> Iterable[Metric]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            everything = [(values, list(shards)) for values, shards in self._series.items()]
        with_created = getattr(_prometheus_metrics, "_use_created", True)
        for labelvalues, shards in everything:
            counts = [0] * len(self._upper_bounds)
            total = 0.0
            exemplars: list[Exemplar | None] = [None] * len(self._upper_bounds)
            for shard in shards:
                # list() copies in one step while the owner thread may be writing.
                for i, count in enumerate(list(shard.counts)):
                    counts[i] += count
                total += shard.sum
                for i, exemplar in enumerate(list(shard.exemplars)):
                    latest = exemplars[i]
                    if exemplar is not None and (
                        latest is None
                        or float(exemplar.timestamp or 0) > float(latest.timestamp or 0)
                    ):
                        exemplars[i] = exemplar
            cumulative = 0
            buckets: list[tuple[str, float, Exemplar | None]] = []
            for bound, count, exemplar in zip(self._upper_bounds, counts, exemplars, strict=True):
                cumulative += count
                le = floatToGoString(bound)  # type: ignore[no-untyped-call]
                buckets.append((le, cumulative, exemplar))
            family.add_metric(list(labelvalues), buckets, total)  # type: ignore[arg-type]
            if with_created:
                family.samples.append(
                    Sample(
                        self._name + "_created",
                        dict(zip(self._labelnames, labelvalues, strict=True)),
                        min(shard.created for shard in shards),
                    )
                )
        yield family


def _check_exemplar(exemplar: dict[str, str]) -> None:
    # The same rule prometheus-client applies when observing with an exemplar.
    runes = sum(len(k) + len(v) for k, v in exemplar.items())
    if runes > _EXEMPLAR_MAX_RUNES:
        raise ValueError(f"exemplar labels have {runes} characters, more than 128")

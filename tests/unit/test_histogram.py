"""ShardedHistogram: the same exposition as prometheus-client's Histogram, exact
across threads, with no lock on observe()."""

from __future__ import annotations

import re
import threading

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import generate_latest as generate_text
from prometheus_client.openmetrics.exposition import generate_latest

from chat_storage.histogram import ShardedHistogram

BUCKETS = (0.001, 0.005, 0.01, 0.1)
AMOUNTS = (0.0, 0.001, 0.0011, 0.004, 0.005, 0.02, 0.1, 0.5, 7.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but ``_created`` (a timestamp), by name and labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_samples_match_prometheus_clients_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    sharded = ShardedHistogram("t_seconds", "doc", ["op"], buckets=BUCKETS, registry=ours)
    reference = Histogram("t_seconds", "doc", ["op"], buckets=BUCKETS, registry=theirs)
    for amount in AMOUNTS:
        sharded.labels("a").observe(amount)
        reference.labels("a").observe(amount)
    sharded.labels("b").observe(0.003)
    reference.labels("b").observe(0.003)
    assert samples(ours) == samples(theirs)
    assert ours.get_sample_value("t_seconds_bucket", {"op": "a", "le": "0.005"}) == 5
    assert ours.get_sample_value("t_seconds_count", {"op": "a"}) == len(AMOUNTS)
    created = ours.get_sample_value("t_seconds_created", {"op": "a"})
    assert created is not None and created > 0


def test_expositions_match_prometheus_clients_histogram() -> None:
    """Text and OpenMetrics output, exemplars included, differ only in timestamps."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    sharded = ShardedHistogram("x_seconds", "doc", ["op"], buckets=BUCKETS, registry=ours)
    reference = Histogram("x_seconds", "doc", ["op"], buckets=BUCKETS, registry=theirs)
    for amount in AMOUNTS:
        sharded.labels("a").observe(amount, {"trace_id": "ab"})
        reference.labels("a").observe(amount, {"trace_id": "ab"})

    def without_timestamps(text: bytes) -> str:
        return re.sub(r"\b1\d{9}\.\d+|\b1\.\d+e\+09", "T", text.decode())

    for generate in (generate_latest, generate_text):
        assert without_timestamps(generate(ours)) == without_timestamps(generate(theirs))


def test_unlabelled_family_observes_directly() -> None:
    registry = CollectorRegistry()
    family = ShardedHistogram("w_seconds", "doc", buckets=BUCKETS, registry=registry)
    family.observe(0.002)
    family.observe(0.2)
    assert registry.get_sample_value("w_seconds_bucket", {"le": "0.005"}) == 1
    assert registry.get_sample_value("w_seconds_bucket", {"le": "+Inf"}) == 2
    assert registry.get_sample_value("w_seconds_sum") == pytest.approx(0.202)


def test_threads_observe_into_their_own_series_and_collect_adds_them_up() -> None:
    """Eight threads, 20,000 observations each, scraped while they run: every
    scrape is monotonic and the last one is exact, and a finished thread's
    counts stay."""
    registry = CollectorRegistry()
    family = ShardedHistogram("c_seconds", "doc", ["op"], buckets=BUCKETS, registry=registry)
    threads, per_thread = 8, 20_000
    start = threading.Barrier(threads + 1)

    def observe() -> None:
        start.wait()
        series = family.labels("x")
        for i in range(per_thread):
            series.observe(0.002 if i % 2 else 0.05)

    workers = [threading.Thread(target=observe) for _ in range(threads)]
    for worker in workers:
        worker.start()
    start.wait()
    seen = []
    while any(worker.is_alive() for worker in workers):
        seen.append(registry.get_sample_value("c_seconds_count", {"op": "x"}) or 0.0)
    for worker in workers:
        worker.join()
    assert seen == sorted(seen)
    total = threads * per_thread
    assert registry.get_sample_value("c_seconds_count", {"op": "x"}) == total
    assert registry.get_sample_value("c_seconds_bucket", {"op": "x", "le": "0.005"}) == total / 2
    assert registry.get_sample_value("c_seconds_sum", {"op": "x"}) == pytest.approx(
        total / 2 * 0.052
    )


def test_latest_exemplar_per_bucket_is_exposed() -> None:
    registry = CollectorRegistry()
    family = ShardedHistogram("e_seconds", "doc", buckets=BUCKETS, registry=registry)
    family.observe(0.002, {"trace_id": "a" * 32})
    family.observe(0.003, {"trace_id": "b" * 32})
    family.observe(0.05)
    exposition = generate_latest(registry).decode()
    (line,) = [line for line in exposition.splitlines() if 'le="0.005"' in line]
    assert f'trace_id="{"b" * 32}"' in line and "a" * 32 not in exposition
    with pytest.raises(ValueError, match="128"):
        family.observe(0.002, {"trace_id": "x" * 200})


def test_wrong_labels_and_buckets_are_refused() -> None:
    registry = CollectorRegistry()
    family = ShardedHistogram(
        "l_seconds", "doc", ["op", "outcome"], buckets=BUCKETS, registry=registry
    )
    with pytest.raises(ValueError, match="expected labels"):
        family.labels("only-one")
    with pytest.raises(ValueError, match="increasing"):
        ShardedHistogram("u_seconds", "doc", buckets=(0.1, 0.01), registry=None)
    with pytest.raises(ValueError, match="Duplicated"):
        ShardedHistogram("l_seconds", "doc", buckets=BUCKETS, registry=registry)


def test_zero_counts_first_bucket_is_observing_zero() -> None:
    """``zero_counts()[0] += 1`` (the pool's zero waits) gives the samples of observe(0.0)."""
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    sharded = ShardedHistogram("w_seconds", "doc", buckets=BUCKETS, registry=ours)
    reference = Histogram("w_seconds", "doc", buckets=BUCKETS, registry=theirs)
    series = sharded.labels()
    zeros = series.zero_counts()
    for amount in (0.0, 0.0, 0.003, 0.0):
        if amount == 0.0:
            zeros[0] += 1
        else:
            series.observe(amount)
        reference.observe(amount)
    assert samples(ours) == samples(theirs)


def test_zero_counts_refuses_a_histogram_where_zero_is_not_first() -> None:
    sharded = ShardedHistogram("n_seconds", "doc", buckets=(-1.0, 0.5), registry=None)
    with pytest.raises(ValueError, match="first bucket"):
        sharded.labels().zero_counts()

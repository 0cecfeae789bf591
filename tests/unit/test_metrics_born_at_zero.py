"""Series whose labels are known in advance exist at zero as soon as StoreMetrics is built.

rate() and increase() count an increment only against an earlier sample: a
series created by its first error shows that error to neither the error panel
nor the error-ratio rules nor the burn-rate alerts. Each test builds a fresh
registry and reads exact samples, as prometheus/client_python's own tests do.
"""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

import chat_storage.errors as errors
from chat_storage import queries
from chat_storage.errors import ChatStoreError, InvalidInput
from chat_storage.metrics import StoreMetrics
from chat_storage.queries.base import operation_name


def operations() -> set[str]:
    """Every statement name the query modules' plan functions plan."""
    names = set()
    for name in queries.__all__:
        if name.startswith("plan_"):
            try:
                names.add(operation_name(getattr(queries, name)))
            except KeyError:
                continue
    return names


def error_classes() -> list[str]:
    """Every public ChatStoreError subclass of chat_storage.errors."""
    return [
        name
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), ChatStoreError)
        and getattr(errors, name) is not ChatStoreError
    ]


OPERATIONS = sorted(operations())


def test_the_operations_are_the_store_operations() -> None:
    """The derived operation names are the nine ChatStore operations."""
    assert len(OPERATIONS) == 9
    assert {"get_history", "add_message", "archive_inactive_conversations"} <= set(OPERATIONS)


@pytest.mark.parametrize("operation", OPERATIONS)
def test_durations_exist_at_zero_for_every_operation_and_outcome(operation: str) -> None:
    """Each (operation, outcome) duration histogram is exposed with count 0 and empty buckets."""
    registry = CollectorRegistry()
    StoreMetrics(registry)
    for outcome in ("ok", "error"):
        labels = {"operation": operation, "outcome": outcome}
        name = "chat_storage_operation_duration_seconds"
        assert registry.get_sample_value(f"{name}_count", labels) == 0.0
        assert registry.get_sample_value(f"{name}_sum", labels) == 0.0
        assert registry.get_sample_value(f"{name}_bucket", labels | {"le": "+Inf"}) == 0.0
        assert registry.get_sample_value(f"{name}_bucket", labels | {"le": "0.05"}) == 0.0


@pytest.mark.parametrize("operation", OPERATIONS)
def test_errors_exist_at_zero_for_every_operation_and_error_class(operation: str) -> None:
    """chat_storage_errors_total has a 0 sample for every error class of errors.py."""
    registry = CollectorRegistry()
    StoreMetrics(registry)
    for error_type in error_classes():
        labels = {"operation": operation, "error_type": error_type}
        assert registry.get_sample_value("chat_storage_errors_total", labels) == 0.0, error_type


@pytest.mark.parametrize("operation", OPERATIONS)
def test_validation_rejects_exist_at_zero_for_every_input_error(operation: str) -> None:
    """chat_storage_validation_rejects_total has a 0 sample for every InvalidInput class."""
    registry = CollectorRegistry()
    StoreMetrics(registry)
    rejects = [n for n in error_classes() if issubclass(getattr(errors, n), InvalidInput)]
    assert "InvalidLimit" in rejects
    for error_type in rejects:
        labels = {"operation": operation, "error_type": error_type}
        value = registry.get_sample_value("chat_storage_validation_rejects_total", labels)
        assert value == 0.0, error_type


def test_the_first_error_is_one_more_than_the_zero_before_it() -> None:
    """After one error the series reads 1, from an exposed 0: increase() sees it."""
    registry = CollectorRegistry()
    metrics = StoreMetrics(registry)
    labels = {"operation": "list_conversations", "error_type": "DatabaseUnavailable"}
    before = registry.get_sample_value("chat_storage_errors_total", labels)
    metrics.errors.labels("list_conversations", "DatabaseUnavailable").inc()
    assert (before, registry.get_sample_value("chat_storage_errors_total", labels)) == (0.0, 1.0)


def test_pool_wait_exists_at_zero() -> None:
    """The pool wait histogram (no labels) is exposed with count 0 before any checkout."""
    registry = CollectorRegistry()
    StoreMetrics(registry)
    assert registry.get_sample_value("chat_storage_pool_wait_seconds_count") == 0.0
    assert registry.get_sample_value("chat_storage_pool_timeouts_total") == 0.0


def test_building_again_adds_no_series() -> None:
    """A second StoreMetrics on the same registry exposes exactly the same samples."""
    registry = CollectorRegistry()
    StoreMetrics(registry)
    first = [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
    StoreMetrics(registry)
    again = [(s.name, s.labels, s.value) for m in registry.collect() for s in m.samples]
    assert again == first

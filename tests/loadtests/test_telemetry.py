"""``loadtests.harness.telemetry.configure_tracing``: an SDK from the OTEL_* variables,
exporting over OTLP/HTTP to a collector stand-in on loopback."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chat_storage import ChatStore
from loadtests.harness.telemetry import configure_tracing
from tests.loadtests.collector import Collector, running_collector


@pytest.fixture
def collector() -> Iterator[Collector]:
    """An OTLP/HTTP trace receiver on a free loopback port."""
    with running_collector() as received:
        yield received


@pytest.fixture
def otlp_env(monkeypatch: pytest.MonkeyPatch, collector: Collector) -> Collector:
    """OTEL_* variables that send every span to ``collector``."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "chat-load-test")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    return collector


def test_nothing_is_configured_without_an_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset OTEL_TRACES_EXPORTER, "none" and OTEL_SDK_DISABLED all mean no provider."""
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    assert configure_tracing(set_global=False) is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    assert configure_tracing(set_global=False) is None
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_tracing(set_global=False) is None


def test_unknown_exporter_or_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exporter or OTLP protocol that is not installed is a clear error, not silence."""
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="unknown exporter 'zipkin'"):
        configure_tracing(set_global=False)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.raises(ValueError, match="only http/protobuf"):
        configure_tracing(set_global=False)


async def test_operation_spans_reach_the_otlp_endpoint(
    otlp_env: Collector, store: ChatStore, user_id: str
) -> None:
    """Endpoint, service name and sampler come from the environment; spans arrive."""
    provider = configure_tracing(set_global=False)
    assert provider is not None
    traced = ChatStore(store.engine, tracer_provider=provider)
    conversation = await traced.create_conversation(user_id)
    await traced.add_message(user_id, conversation.id, "user", "hello")
    provider.shutdown()  # flushes the batch processor
    assert otlp_env.spans == [
        ("chat-load-test", "create_conversation"),
        ("chat-load-test", "add_message"),
    ]


async def test_sampler_comes_from_the_environment(
    otlp_env: Collector, monkeypatch: pytest.MonkeyPatch, store: ChatStore, user_id: str
) -> None:
    """OTEL_TRACES_SAMPLER=parentbased_traceidratio with ratio 0 exports nothing."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0")
    provider = configure_tracing(set_global=False)
    assert provider is not None
    traced = ChatStore(store.engine, tracer_provider=provider)
    await traced.create_conversation(user_id)
    provider.shutdown()
    assert otlp_env.spans == []

"""An OpenTelemetry SDK tracer provider configured from the standard ``OTEL_*``
environment variables, for the load harness (and any application that wants
the same behaviour without ``opentelemetry-instrument``).

The library (``chat_storage``) depends on ``opentelemetry-api`` only and never
configures an SDK; this module is the harness's choice. Read here:

* ``OTEL_SDK_DISABLED=true``: nothing is configured.
* ``OTEL_TRACES_EXPORTER``: comma-separated ``otlp`` (HTTP/protobuf), ``console``
  or ``none``. Unset means ``none``: the harness traces only when asked (the
  specification's default, ``otlp``, would send every run's spans to
  localhost:4318 whether or not a collector listens there).
* ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``: the resource.
* ``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``: the sampler (the SDK's
  default is ``parentbased_always_on``; ``parentbased_traceidratio`` with ``0.01``
  is what the instrumentation benchmark measures).
* ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
  ``..._HEADERS``, ``..._TIMEOUT``, ``..._COMPRESSION``: read by the OTLP exporter.
* ``OTEL_BSP_*``: read by the batch span processor every exporter sits behind.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

__all__ = ["configure_tracing"]

_OTLP_PROTOCOLS = ("http/protobuf",)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        # An empty variable counts as unset (the specification's rule).
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "").strip()
            or "http/protobuf"
        ).lower()
        if protocol not in _OTLP_PROTOCOLS:
            raise ValueError(
                f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: only http/protobuf is installed "
                "(opentelemetry-exporter-otlp-proto-http)"
            )
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, none)")


def configure_tracing(*, set_global: bool = True) -> TracerProvider | None:
    """A tracer provider built from the ``OTEL_*`` variables, or None when they
    ask for no tracing (the default).

    Args:
        set_global: also install it as the global provider (once per process),
            where ``ChatStore`` and the statement instrumentation find it.

    Raises:
        ValueError: an exporter or OTLP protocol this environment cannot provide.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    names = [n.strip().lower() for n in os.environ.get("OTEL_TRACES_EXPORTER", "none").split(",")]
    exporters = [_exporter(n) for n in names if n and n != "none"]
    if not exporters:
        return None
    provider = TracerProvider(resource=Resource.create())  # sampler from the environment
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if set_global:
        trace.set_tracer_provider(provider)
    return provider

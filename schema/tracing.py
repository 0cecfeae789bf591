"""OpenTelemetry spans for chat operations (API only; the application picks the SDK).

One span per public operation, named after it, with OpenTelemetry's stable
database attributes. Never message content, parameters or user ids: the SQL
text carries ``$n`` placeholders only.

Statement spans for everything that goes through SQLAlchemy (migrations, the
plain query functions, a host application's own queries) come from
``opentelemetry-instrumentation-sqlalchemy``: :func:`instrument_statements`.
"""

from __future__ import annotations

from typing import Any, Final

from opentelemetry import trace
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["TRACER_NAME", "get_tracer", "instrument_statements"]

TRACER_NAME: Final = "chat_storage"


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The package's tracer from ``provider`` (default: the global provider)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def instrument_statements(
    engine: AsyncEngine, *, tracer_provider: trace.TracerProvider | None = None
) -> Any:
    """Attach statement spans to ``engine`` (needs the ``tracing`` extra).

    Uses the instrumentation's per-engine tracer rather than
    ``SQLAlchemyInstrumentor().instrument()``: the instrumentor is a process-wide
    singleton that silently ignores a second engine. SQL commenting stays off: a
    comment with a trace id makes every statement's text unique, which defeats
    prepared-statement caches.

    Returns:
        The engine tracer; call ``.remove_all_event_listeners()`` on it to detach.
    """
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.instrumentation.sqlalchemy.version import __version__
    from opentelemetry.metrics import get_meter

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.sqlalchemy", __version__, tracer_provider
    )
    usage = get_meter(
        "opentelemetry.instrumentation.sqlalchemy", __version__
    ).create_up_down_counter("db.client.connections.usage", unit="connections")
    return EngineTracer(  # type: ignore[no-untyped-call]
        tracer, engine.sync_engine, usage, enable_commenter=False
    )

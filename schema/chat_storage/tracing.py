"""OpenTelemetry spans for chat operations (API only; the application picks the SDK).

One span per public operation, named after it, with OpenTelemetry's stable
database attributes. Never message content, parameters or user ids: the SQL
text carries ``$n`` placeholders only.

Statement spans for everything that goes through SQLAlchemy (migrations, the
plain query functions, a host application's own queries) come from
``opentelemetry-instrumentation-sqlalchemy``: :func:`instrument_statements`.

Private names used (only this module touches them; tests/unit/test_private_internals.py
checks each on the installed version):

* ``opentelemetry.trace.propagation._SPAN_KEY``: the context key of the current span;
* ``opentelemetry.context._RUNTIME_CONTEXT._current_context``: the ContextVar
  holding the current Context (with the first, :func:`under_unsampled_span`
  reads the current span without seven public calls; it falls back to them
  when either is missing or ``SpanContext`` is not the tuple it checks for);
* ``EngineTracer._register_event_listener`` (the ``tracing`` extra): the hook
  :func:`instrument_statements` overrides to leave the pool listeners out.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanContext, TraceFlags
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "TRACER_NAME",
    "StatementTracing",
    "get_tracer",
    "instrument_statements",
    "under_unsampled_span",
]

TRACER_NAME: Final = "chat_storage"


def _current_span_key() -> str | None:
    # The context key the API keeps the current span under (private).
    try:
        from opentelemetry.trace.propagation import _SPAN_KEY
    except ImportError:  # pragma: no cover - an API release without it
        return None
    return _SPAN_KEY


def _current_context_var() -> ContextVar[Context] | None:
    # The ContextVar the API's default runtime context keeps the current Context
    # in (private; None under another runtime context, OTEL_PYTHON_CONTEXT).
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    var = getattr(runtime, "_current_context", None)
    return var if isinstance(var, ContextVar) else None


def _span_context_is_a_tuple() -> bool:
    # SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags,
    # trace_state, is_valid) whose properties index it; reading the two items
    # directly saves two Python calls. Checked, not assumed.
    probe = SpanContext(trace_id=1, span_id=2, is_remote=False, trace_flags=TraceFlags(1))
    return (
        isinstance(probe, tuple)
        and len(probe) == 6
        and probe[3] is probe.trace_flags
        and probe[5] is True
    )


# Why the private names: under_unsampled_span() runs on every operation, and the
# public way (trace.get_current_span().get_span_context().is_valid, then
# .trace_flags) is seven Python calls and an ABC isinstance check: 1.5 us per
# operation in the loaded benchmark process, 250 ns on an idle one, against
# 100 ns this way. tests/integration/test_instrumentation.py checks that both
# ways agree and that the fast one is in use.
_CURRENT_SPAN_KEY: Final = _current_span_key()
_CURRENT_CONTEXT: Final = _current_context_var()
_FAST: Final = (
    _CURRENT_SPAN_KEY is not None and _CURRENT_CONTEXT is not None and _span_context_is_a_tuple()
)
_SAMPLED: Final = TraceFlags.SAMPLED

#: The instrumentation's statement listeners. It also listens to the pool's
#: connect, close, checkout and checkin events for its
#: ``db.client.connections.usage`` counter; those are left out (see
#: instrument_statements).
_STATEMENT_EVENTS: Final = frozenset(
    {"before_cursor_execute", "after_cursor_execute", "handle_error"}
)


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The package's tracer from ``provider`` (default: the global provider)."""
    return trace.get_tracer(TRACER_NAME, tracer_provider=provider)


def under_unsampled_span(*, fast: bool = True) -> bool:
    """Whether the current span is valid but not sampled (a dropped trace).

    The same answer as ``trace.get_current_span().get_span_context()``, read
    straight from the context unless ``fast`` is False (or the API's layout
    differs from what this module checked at import).
    """
    if fast and _FAST:
        span: Any = _CURRENT_CONTEXT.get().get(_CURRENT_SPAN_KEY)  # type: ignore[union-attr, arg-type]
        if span is None:
            return False
        # Only trace.set_span_in_context() writes this key, and it takes a Span.
        parent = span.get_span_context()
        return bool(parent[5] and not parent[3] & _SAMPLED)  # is_valid, trace_flags
    parent = trace.get_current_span().get_span_context()
    return bool(parent.is_valid and not parent.trace_flags & _SAMPLED)


class StatementTracing:
    """Statement spans attached to one engine; :meth:`remove` detaches them."""

    def __init__(self, listeners: list[tuple[Any, str, Any]]) -> None:
        self._listeners = listeners

    @property
    def events(self) -> list[str]:
        """The SQLAlchemy events listened to (for tests and diagnostics)."""
        return [identifier for _, identifier, _ in self._listeners]

    def remove(self) -> None:
        """Detach this engine's statement listeners (and only this engine's).

        Two of them are the instrumentation's module-level functions, which
        SQLAlchemy registers once per engine: another EngineTracer (or
        SQLAlchemyInstrumentor) on the same engine loses them too. Instrument
        an engine once.
        """
        listeners, self._listeners = self._listeners, []
        for target, identifier, fn in listeners:
            # Some listeners are the instrumentation's module-level functions, so
            # another EngineTracer on this engine may have removed them already.
            if event.contains(target, identifier, fn):
                event.remove(target, identifier, fn)

    # The name EngineTracer uses, kept so code written for it keeps working.
    remove_all_event_listeners = remove


def instrument_statements(
    engine: AsyncEngine, *, tracer_provider: trace.TracerProvider | None = None
) -> StatementTracing:
    """Attach statement spans to ``engine`` (needs the ``tracing`` extra).

    Uses the instrumentation's per-engine ``EngineTracer`` rather than
    ``SQLAlchemyInstrumentor().instrument()``: the instrumentor is a process-wide
    singleton that silently ignores a second engine. Two departures from it:

    * SQL commenting stays off: a comment with a trace id makes every
      statement's text unique, which defeats prepared-statement caches.
    * Its pool listeners are not attached. They feed an OpenTelemetry counter
      of used and idle connections on every checkout and checkin (four
      callbacks per operation, about 6 us, the largest part of the
      instrumentation's cost on ChatStore's one-statement path), and
      ``chat_storage_pool_connections`` already reports the same, exactly, at
      scrape time for nothing per operation.

    Returns:
        A handle whose ``remove()`` detaches the listeners from this engine.
        (EngineTracer's own ``remove_all_event_listeners`` is a classmethod that
        detaches every engine's.)

    Raises:
        ModuleNotFoundError: the ``tracing`` extra is not installed (the message
            says how to install it).
    """
    try:
        from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
        from opentelemetry.instrumentation.sqlalchemy.version import __version__
    except ImportError as exc:
        raise ModuleNotFoundError(
            "instrument_statements() needs the tracing extra: "
            "pip install 'chat-storage[tracing]' "
            f"(opentelemetry-instrumentation-sqlalchemy; {exc})",
            name=exc.name,
        ) from exc

    listeners: list[tuple[Any, str, Any]] = []

    class _StatementTracer(EngineTracer):
        # EngineTracer.__init__ registers every listener through this hook.
        def _register_event_listener(  # type: ignore[override]
            self, target: Any, identifier: str, fn: Any, *args: Any, **kwargs: Any
        ) -> None:
            if identifier in _STATEMENT_EVENTS:
                event.listen(target, identifier, fn, *args, **kwargs)
                listeners.append((target, identifier, fn))

    tracer = trace.get_tracer(
        "opentelemetry.instrumentation.sqlalchemy", __version__, tracer_provider
    )
    _StatementTracer(  # type: ignore[no-untyped-call]
        tracer, engine.sync_engine, None, enable_commenter=False
    )
    return StatementTracing(listeners)

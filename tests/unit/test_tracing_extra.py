"""instrument_statements without the ``tracing`` extra says how to install it."""

from __future__ import annotations

import re
import sys

import pytest

from chat_storage import create_engine, instrument_statements

INSTRUMENTATION = (
    "opentelemetry.instrumentation.sqlalchemy",
    "opentelemetry.instrumentation.sqlalchemy.engine",
    "opentelemetry.instrumentation.sqlalchemy.version",
)


async def test_missing_tracing_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the instrumentation not importable: ModuleNotFoundError naming the extra."""
    for name in INSTRUMENTATION:
        # None in sys.modules makes `import name` fail as if it were not installed.
        monkeypatch.setitem(sys.modules, name, None)
    engine = create_engine("postgresql://app@localhost/chat")
    try:
        with pytest.raises(
            ModuleNotFoundError, match=re.escape("pip install 'chat-storage[tracing]'")
        ) as missing:
            instrument_statements(engine)
        assert isinstance(missing.value.__cause__, ImportError)
        assert not engine.sync_engine.dispatch.before_cursor_execute  # nothing attached
    finally:
        await engine.dispose()

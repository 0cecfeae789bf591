"""operation_timeout and tcp_keepalive_idle: documented defaults, read from the environment."""

from __future__ import annotations

from chat_storage import Settings
from chat_storage.engine import DEFAULT_OPERATION_TIMEOUT


def test_operation_timeout_defaults_to_30_seconds() -> None:
    """Every operation has a deadline unless told otherwise."""
    settings = Settings(database_url="postgresql://localhost/chat")
    assert settings.operation_timeout == 30.0 == DEFAULT_OPERATION_TIMEOUT
    assert settings.tcp_keepalive_idle == 30


def test_operation_timeout_from_environment() -> None:
    """CHAT_STORAGE_OPERATION_TIMEOUT and CHAT_STORAGE_TCP_KEEPALIVE_IDLE are read."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://localhost/chat",
            "CHAT_STORAGE_OPERATION_TIMEOUT": "2.5",
            "CHAT_STORAGE_TCP_KEEPALIVE_IDLE": "60",
        }
    )
    assert settings.operation_timeout == 2.5
    assert settings.tcp_keepalive_idle == 60

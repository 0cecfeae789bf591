"""Connection and pool settings, from arguments or the environment.

The defaults are the plan's pool (size 10, overflow 20, timeout 30 s, recycle
3600 s) and a 30 s deadline per operation. Nothing is read at import time: call
:meth:`Settings.from_env`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["Settings"]

_ENV_PREFIX = "CHAT_STORAGE_"


def _parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """How to reach the database and how to pool connections to it.

    Every field can be set from the environment as ``CHAT_STORAGE_<FIELD>``
    (upper case); ``database_url`` also from ``DATABASE_URL``.
    """

    #: libpq-style URL (postgresql://, postgres:// or postgresql+asyncpg://),
    #: Neon's pasted form included (sslmode=require&channel_binding=require);
    #: TLS as libpq's sslmode= or SQLAlchemy+asyncpg's ssl= (see engine.py).
    database_url: str = field(repr=False)  # may hold a password: never in a repr
    pool_size: int = 10
    max_overflow: int = 20
    #: Seconds a caller waits for a pooled connection before PoolTimeout.
    pool_timeout: float = 30.0
    #: Seconds after which a connection is replaced when next checked out.
    pool_recycle: int = 3600
    #: Returned overflow connections stay idle until the pool has held pool_size
    #: idle or more, without a break, for this many seconds; then they are closed
    #: as they come back (0: at once, SQLAlchemy's QueuePool rule). A lull in a
    #: bursty load no longer closes what the next burst reopens. Never more than
    #: pool_size + max_overflow connections.
    pool_overflow_idle_timeout: float = 30.0
    #: Ping each connection on checkout. Off: on asyncpg it costs three round
    #: trips per operation; broken connections surface as DatabaseUnavailable.
    pool_pre_ping: bool = False
    #: PgBouncer transaction mode (Neon's -pooler endpoint): no prepared-statement
    #: cache, unique statement names, no startup parameters. None: on when the
    #: host name contains "-pooler".
    pooler_mode: bool | None = None
    #: Server-side statement_timeout in milliseconds (None: the server's default).
    statement_timeout_ms: int | None = None
    #: Seconds to establish a new connection (Neon cold starts take a few).
    connect_timeout: float = 10.0
    #: Seconds one ChatStore operation may take in all (waiting for a pooled
    #: connection, connecting, the statement) before OperationTimeout; the
    #: statement is then cancelled on the server and its connection discarded.
    #: Each method's ``timeout=`` overrides it per call. None: no deadline.
    operation_timeout: float | None = 30.0
    #: Seconds of silence before TCP keepalive probes start on each pooled
    #: connection (both ends: the client's socket, and the server's
    #: tcp_keepalives_* outside pooler mode), so a peer that vanished without
    #: a FIN is noticed between operations; probes every 10 s, 3 unanswered
    #: end it. None: the operating system's defaults.
    tcp_keepalive_idle: int | None = 30
    application_name: str = "chat-storage"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``), then ``overrides``.

        Raises:
            ValueError: a variable holds a value of the wrong type, or no database URL.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        url = env.get(_ENV_PREFIX + "DATABASE_URL") or env.get("DATABASE_URL")
        if url:
            values["database_url"] = url
        for spec in fields(cls):
            if spec.name == "database_url":
                continue
            raw = env.get(_ENV_PREFIX + spec.name.upper())
            if raw is None or raw == "":
                continue
            kind = str(spec.type)
            try:
                if "bool" in kind:
                    values[spec.name] = _parse_bool(raw)
                elif "float" in kind:
                    values[spec.name] = float(raw)
                elif "int" in kind:
                    values[spec.name] = int(raw)
                else:
                    values[spec.name] = raw
            except ValueError:
                raise ValueError(
                    f"{_ENV_PREFIX}{spec.name.upper()} must be a {kind}, got {raw!r}"
                ) from None
        values.update(overrides)
        if "database_url" not in values:
            raise ValueError("no database URL: set DATABASE_URL or pass database_url=")
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed."""
        return replace(self, **changes)

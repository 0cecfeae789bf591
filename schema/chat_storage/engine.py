"""The AsyncEngine: asyncpg under SQLAlchemy's pool, configured for Neon and PgBouncer.

URLs are accepted as users paste them (``postgres://``, ``postgresql://``,
``postgresql+asyncpg://``; Neon's ``?sslmode=require&channel_binding=require``).
libpq options that asyncpg does not understand are translated here rather than
passed on, where asyncpg would send them to the server as unknown settings.
"""

from __future__ import annotations

import ssl
import uuid
import weakref
from typing import Any, Final

from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .pool import FairAsyncQueuePool
from .settings import Settings

__all__ = [
    "build_ssl_context",
    "create_engine",
    "create_unpooled_engine",
    "engine_pooler_mode",
    "is_pooler_url",
    "redact",
    "to_asyncpg_url",
]

# Engines made here, and whether each is in pooler mode (Engine has no info dict).
_POOLER_MODE: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# libpq query parameters we translate into asyncpg arguments.
_LIBPQ_KEYS: Final = frozenset(
    {
        "sslmode",
        "channel_binding",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "connect_timeout",
        "application_name",
    }
)


def redact(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, safe to log."""
    return make_url(url).render_as_string(hide_password=True)


def to_asyncpg_url(url: str | URL) -> URL:
    """``url`` with the ``postgresql+asyncpg`` driver and no libpq-only query options."""
    parsed = make_url(url)
    if parsed.get_backend_name() not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {redact(parsed)}")
    unknown = set(parsed.query) - _LIBPQ_KEYS
    if unknown:
        raise ValueError(
            "unsupported connection option(s) for asyncpg: " + ", ".join(sorted(unknown))
        )
    return parsed.set(drivername="postgresql+asyncpg").difference_update_query(_LIBPQ_KEYS)


def is_pooler_url(url: str | URL) -> bool:
    """Whether the host looks like Neon's PgBouncer endpoint (``ep-...-pooler...``)."""
    host = make_url(url).host or ""
    return "-pooler" in host.split(".", 1)[0]


def build_ssl_context(
    sslmode: str | None,
    *,
    rootcert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> ssl.SSLContext | bool | None:
    """The ``ssl`` argument for asyncpg for a libpq ``sslmode``.

    ``require`` verifies the certificate and host name, which is stricter than
    libpq (where ``require`` only encrypts): a pasted Neon URL says ``require``,
    and an unverified TLS connection to a cloud database invites a
    man-in-the-middle. ``None`` leaves asyncpg's default (try TLS, fall back).

    Raises:
        ValueError: an sslmode libpq does not define.
    """
    if sslmode is None:
        return None
    if sslmode not in _SSLMODES:
        raise ValueError(f"sslmode must be one of {', '.join(_SSLMODES)}")
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        # libpq semantics: encryption if offered, no verification. Explicitly asked for.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context = ssl.create_default_context(cafile=rootcert)
    if sslmode == "verify-ca":
        context.check_hostname = False
    if cert:
        context.load_cert_chain(cert, key)
    return context


def _connect_args(settings: Settings, url: URL, pooler: bool) -> dict[str, Any]:
    query = make_url(settings.database_url).query

    def one(key: str) -> str | None:
        value = query.get(key)
        return value[0] if isinstance(value, tuple) else value

    args: dict[str, Any] = {
        "timeout": float(one("connect_timeout") or settings.connect_timeout),
        "command_timeout": None,
    }
    ssl_arg = build_ssl_context(
        one("sslmode"), rootcert=one("sslrootcert"), cert=one("sslcert"), key=one("sslkey")
    )
    if ssl_arg is not None:
        args["ssl"] = ssl_arg
    # channel_binding is dropped: asyncpg does not implement SCRAM-PLUS, and the
    # verified TLS context above is what protects the connection.
    server_settings = {"application_name": one("application_name") or settings.application_name}
    if pooler:
        # PgBouncer in transaction mode hands each transaction to any server
        # connection: a named prepared statement made on one is missing on the
        # next. No statement caches, and unique names for what must be prepared.
        args["statement_cache_size"] = 0
        args["prepared_statement_cache_size"] = 0
        args["prepared_statement_name_func"] = lambda: f"__chat_{uuid.uuid4().hex}__"
    elif settings.statement_timeout_ms is not None:
        # A startup parameter costs no round trip; PgBouncer would refuse it.
        server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
    args["server_settings"] = server_settings
    return args


def create_engine(settings: Settings | None = None, /, **overrides: Any) -> AsyncEngine:
    """Create an AsyncEngine over asyncpg with the plan's pool.

    Args:
        settings: connection and pool settings; default ``Settings.from_env()``.
        **overrides: Settings fields to change (``pool_size=50``, ``database_url=...``).

    Raises:
        ValueError: the URL is not PostgreSQL or carries options asyncpg cannot honour.
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.with_overrides(**overrides)
    url = to_asyncpg_url(settings.database_url)
    pooler = settings.pooler_mode if settings.pooler_mode is not None else is_pooler_url(url)
    engine = create_async_engine(
        url,
        # First come, first served checkout (see pool.py): SQLAlchemy's own
        # asyncio pool lets fast callers barge past waiting ones.
        poolclass=FairAsyncQueuePool,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_timeout=settings.pool_timeout,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        # A lull no longer closes the overflow a burst opened (see pool.py).
        overflow_idle_timeout=settings.pool_overflow_idle_timeout,
        # The pool's rollback-on-return is free here: asyncpg's adapter only
        # sends ROLLBACK if it had sent BEGIN.
        pool_reset_on_return="rollback",
        connect_args=_connect_args(settings, url, pooler),
        # Never echo statements: parameters would carry message content.
        echo=False,
        hide_parameters=True,
    )
    _POOLER_MODE[engine.sync_engine] = pooler
    return engine


def create_unpooled_engine(settings: Settings | None = None, /, **overrides: Any) -> AsyncEngine:
    """An AsyncEngine with no pool (each connect opens a new connection), for
    migrations and one-off administration, with the same TLS handling.

    Raises:
        ValueError: as :func:`create_engine`.
    """
    if settings is None:
        settings = Settings.from_env(**overrides)
    elif overrides:
        settings = settings.with_overrides(**overrides)
    url = to_asyncpg_url(settings.database_url)
    pooler = settings.pooler_mode if settings.pooler_mode is not None else is_pooler_url(url)
    return create_async_engine(
        url,
        poolclass=NullPool,
        connect_args=_connect_args(settings, url, pooler),
        echo=False,
        hide_parameters=True,
    )


def engine_pooler_mode(engine: AsyncEngine) -> bool:
    """Whether ``engine`` was made for PgBouncer transaction mode.

    For an engine made elsewhere (a host application's), decided from its URL.
    """
    known = _POOLER_MODE.get(engine.sync_engine)
    return known if known is not None else is_pooler_url(engine.url)

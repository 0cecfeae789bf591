"""The AsyncEngine: asyncpg under SQLAlchemy's pool, configured for Neon and PgBouncer.

URLs are accepted as users paste them (``postgres://``, ``postgresql://``,
``postgresql+asyncpg://``; Neon's ``?sslmode=require&channel_binding=require``).
libpq options that asyncpg does not understand are translated here rather than
passed on, where asyncpg would send them to the server as unknown settings.

TLS is asked for either way users write it: libpq's ``sslmode=`` or
SQLAlchemy+asyncpg's ``ssl=`` (the same six modes, or ``true``/``false``),
with ``sslrootcert=<file>`` or ``sslrootcert=system`` (libpq 16: the system's
CA store, and verify-full). Usage::

    engine = create_engine("postgresql://app@db.example.com/chat?ssl=require", pool_size=5)

Private names used: asyncpg's ``Connection._transport`` (its socket, for TCP
keepalives: asyncpg has no option for them), read with getattr so a rename
only loses the client-side probes (tests/unit/test_keepalive.py notices).
"""

from __future__ import annotations

import socket
import ssl
import uuid
import weakref
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from .pool import FairAsyncQueuePool
from .settings import Settings

__all__ = [
    "build_ssl_context",
    "create_engine",
    "create_unpooled_engine",
    "engine_operation_timeout",
    "engine_pooler_mode",
    "is_pooler_url",
    "redact",
    "ssl_mode",
    "to_asyncpg_url",
]

# Engines made here, and whether each is in pooler mode (Engine has no info dict).
_POOLER_MODE: weakref.WeakKeyDictionary[Engine, bool] = weakref.WeakKeyDictionary()
# Engines made here, and their operation_timeout.
_OPERATION_TIMEOUT: weakref.WeakKeyDictionary[Engine, float | None] = weakref.WeakKeyDictionary()
#: The deadline of an operation on an engine made elsewhere (Settings' default).
DEFAULT_OPERATION_TIMEOUT: Final = 30.0
# Keepalive probes after tcp_keepalive_idle: every 10 s, 3 unanswered end it.
_KEEPALIVE_INTERVAL: Final = 10
_KEEPALIVE_COUNT: Final = 3
_SSLMODES: Final = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
# SQLAlchemy+asyncpg's ssl=true/false: asyncpg's ssl=True verifies like verify-full.
_SSL_BOOLEANS: Final = {"true": "verify-full", "false": "disable"}
# libpq 16: sslrootcert=system loads the system's CA store and forces verify-full
# (any CA signs a certificate for a host name its requester controls, so
# anything weaker than checking the host name verifies nothing).
_SYSTEM_ROOTS: Final = "system"
# Modes that verify the certificate and the host name here (see build_ssl_context).
_FULLY_VERIFIED: Final = ("require", "verify-full")
# libpq query parameters we translate into asyncpg arguments; ``ssl`` is
# SQLAlchemy+asyncpg's spelling of sslmode.
_LIBPQ_KEYS: Final = frozenset(
    {
        "ssl",
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


def ssl_mode(sslmode: str | None = None, ssl_value: str | None = None) -> str | None:
    """The libpq sslmode a URL asks for with ``sslmode=`` and/or ``ssl=``.

    ``ssl_value`` is the URL's ``ssl=``, SQLAlchemy+asyncpg's query parameter:
    one of libpq's six modes, or ``true`` (asyncpg's ``ssl=True``: verify-full)
    or ``false`` (disable).

    Raises:
        ValueError: a value that is not a mode, naming the parameter, or two
            parameters that disagree.
    """
    mode = None
    if sslmode is not None:
        if sslmode not in _SSLMODES:
            raise ValueError(
                f"sslmode={sslmode!r} in the database URL: must be one of {', '.join(_SSLMODES)}"
            )
        mode = sslmode
    if ssl_value is not None:
        lowered = ssl_value.strip().lower()
        from_ssl = _SSL_BOOLEANS.get(lowered, lowered)
        if from_ssl not in _SSLMODES:
            raise ValueError(
                f"ssl={ssl_value!r} in the database URL: must be true, false or one of "
                f"{', '.join(_SSLMODES)}"
            )
        if mode is not None and mode != from_ssl:
            raise ValueError(
                f"the database URL sets both sslmode={sslmode} and ssl={ssl_value}: keep one"
            )
        mode = from_ssl
    return mode


def build_ssl_context(
    sslmode: str | None,
    *,
    rootcert: str | None = None,
    cert: str | None = None,
    key: str | None = None,
) -> ssl.SSLContext | str | bool | None:
    """The ``ssl`` argument for asyncpg for a libpq ``sslmode``.

    ``require`` verifies the certificate and host name, which is stricter than
    libpq (where ``require`` only encrypts): a pasted Neon URL says ``require``,
    and an unverified TLS connection to a cloud database invites a
    man-in-the-middle. ``allow`` and ``prefer`` are passed to asyncpg as the
    mode itself: asyncpg treats any SSLContext as ``require``, and only the
    mode keeps libpq's fall-back to a plain connection when the server offers
    no TLS. ``None`` leaves asyncpg's default (``PGSSLMODE``, else prefer).

    ``rootcert`` is a CA file, or ``"system"`` for the system's default CA store
    (libpq 16), which makes verify-full the default and refuses weaker modes.

    Raises:
        ValueError: an sslmode libpq does not define, a weaker mode with
            ``rootcert="system"``, a client certificate without verification, or
            a certificate file that cannot be read (each naming its parameter).
    """
    system = rootcert == _SYSTEM_ROOTS
    if system and sslmode is None:
        sslmode = "verify-full"
    if sslmode is None:
        return None
    if sslmode not in _SSLMODES:
        raise ValueError(f"sslmode={sslmode!r}: must be one of {', '.join(_SSLMODES)}")
    if system and sslmode not in _FULLY_VERIFIED:
        raise ValueError(
            f"sslrootcert=system needs sslmode=verify-full (got sslmode={sslmode}): "
            "the system's CAs sign certificates for any host name, so only checking "
            "the host name verifies the server"
        )
    if sslmode == "disable":
        return False
    if sslmode in ("allow", "prefer"):
        if cert or key:
            raise ValueError(
                f"sslcert/sslkey need sslmode=require, verify-ca or verify-full (got {sslmode})"
            )
        # libpq semantics: encryption if the server offers it, no verification.
        return sslmode
    try:
        context = ssl.create_default_context(cafile=None if system else rootcert)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"sslrootcert={rootcert!r}: cannot load it ({_why(exc)})") from None
    if sslmode == "verify-ca":
        context.check_hostname = False
    if cert:
        try:
            context.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"sslcert={cert!r}/sslkey={key!r}: cannot load them ({_why(exc)})"
            ) from None
    return context


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


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
        ssl_mode(one("sslmode"), one("ssl")),
        rootcert=one("sslrootcert"),
        cert=one("sslcert"),
        key=one("sslkey"),
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
    else:
        # Startup parameters cost no round trip; PgBouncer would refuse them.
        if settings.statement_timeout_ms is not None:
            server_settings["statement_timeout"] = str(settings.statement_timeout_ms)
        if settings.tcp_keepalive_idle is not None:
            # The server probes too: a client gone without a FIN (a NAT or a
            # cloud proxy dropping the connection) has its session ended
            # instead of holding a backend, and its locks, indefinitely.
            server_settings["tcp_keepalives_idle"] = str(settings.tcp_keepalive_idle)
            server_settings["tcp_keepalives_interval"] = str(_KEEPALIVE_INTERVAL)
            server_settings["tcp_keepalives_count"] = str(_KEEPALIVE_COUNT)
    args["server_settings"] = server_settings
    return args


def _settings(
    settings: Settings | str | URL | None, overrides: dict[str, Any], caller: str
) -> Settings:
    """The Settings that ``caller(settings, **overrides)`` asks for."""
    if settings is None:
        return Settings.from_env(**overrides)
    if isinstance(settings, Settings):
        return settings.with_overrides(**overrides) if overrides else settings
    if isinstance(settings, str | URL):
        if "database_url" in overrides:
            raise TypeError(
                f"{caller}() got the database URL twice (positionally and as database_url=)"
            )
        url = (
            settings
            if isinstance(settings, str)
            else settings.render_as_string(hide_password=False)
        )
        # As create_engine(database_url=url): the other fields still come from
        # the environment, then from the keyword overrides.
        return Settings.from_env(database_url=url, **overrides)
    raise TypeError(f"{caller}() takes a database URL or a Settings, not {type(settings).__name__}")


def create_engine(settings: Settings | str | URL | None = None, /, **overrides: Any) -> AsyncEngine:
    """Create an AsyncEngine over asyncpg with the plan's pool.

    Called like SQLAlchemy's ``create_async_engine(url)``::

        engine = create_engine("postgresql://app@db.example.com/chat", pool_size=5)
        engine = create_engine(Settings(database_url=url, pool_size=5))
        engine = create_engine()  # DATABASE_URL and CHAT_STORAGE_* variables

    Args:
        settings: a database URL (``create_engine(url)`` is
            ``create_engine(database_url=url)``: the other fields from the
            environment), or connection and pool settings; default
            ``Settings.from_env()``.
        **overrides: Settings fields to change (``pool_size=50``, ``database_url=...``).

    Raises:
        ValueError: the URL is not PostgreSQL, carries options asyncpg cannot
            honour, or a TLS option with a bad value (named in the message).
        TypeError: the URL given both positionally and as ``database_url=``.
    """
    settings = _settings(settings, overrides, "create_engine")
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
    _OPERATION_TIMEOUT[engine.sync_engine] = settings.operation_timeout
    if settings.tcp_keepalive_idle is not None:
        idle = settings.tcp_keepalive_idle
        # Once per new connection, never per checkout (no checkout listener:
        # see pool.py's direct lending).
        event.listen(
            engine.sync_engine,
            "connect",
            lambda dbapi_connection, _record: keep_alive(dbapi_connection, idle),
        )
    return engine


def keep_alive(dbapi_connection: Any, idle: int) -> None:
    """Turn on TCP keepalive probes on a new pooled connection's socket.

    A peer that vanished without a FIN is then noticed between operations (the
    next checkout finds the connection closed and opens another) rather than
    by the next operation's deadline.
    """
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    transport = getattr(driver, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket has no peer to lose
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", _KEEPALIVE_INTERVAL),
        ("TCP_KEEPCNT", _KEEPALIVE_COUNT),
    ):
        if hasattr(socket, option):  # Linux; macOS lacks TCP_KEEPIDLE
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def create_unpooled_engine(
    settings: Settings | str | URL | None = None, /, **overrides: Any
) -> AsyncEngine:
    """An AsyncEngine with no pool (each connect opens a new connection), for
    migrations and one-off administration, with the same TLS handling.

    Takes the same arguments as :func:`create_engine` (a URL or a Settings).

    Raises:
        ValueError: as :func:`create_engine`.
        TypeError: as :func:`create_engine`.
    """
    settings = _settings(settings, overrides, "create_unpooled_engine")
    url = to_asyncpg_url(settings.database_url)
    pooler = settings.pooler_mode if settings.pooler_mode is not None else is_pooler_url(url)
    return create_async_engine(
        url,
        poolclass=NullPool,
        connect_args=_connect_args(settings, url, pooler),
        echo=False,
        hide_parameters=True,
    )


def engine_operation_timeout(engine: AsyncEngine) -> float | None:
    """The ``operation_timeout`` ``engine`` was made with (30 s for an engine made elsewhere)."""
    return _OPERATION_TIMEOUT.get(engine.sync_engine, DEFAULT_OPERATION_TIMEOUT)


def engine_pooler_mode(engine: AsyncEngine) -> bool:
    """Whether ``engine`` was made for PgBouncer transaction mode.

    For an engine made elsewhere (a host application's), decided from its URL.
    """
    known = _POOLER_MODE.get(engine.sync_engine)
    return known if known is not None else is_pooler_url(engine.url)

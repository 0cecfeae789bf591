"""create_engine's arguments and the URL's TLS options, checked without a server.

What an engine would send to asyncpg is caught at its ``do_connect`` event,
which then stops the connection attempt before any socket is opened.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import Settings, create_engine, create_unpooled_engine
from chat_storage.engine import build_ssl_context, ssl_mode

URL = "postgresql://app:pw@db.example.com:6543/chat"
EngineFactory = Callable[..., AsyncEngine]
FACTORIES = [create_engine, create_unpooled_engine]


class _Stop(Exception):
    """Raised by the do_connect listener: the arguments were seen, connect no further."""


async def connect_arguments(engine: AsyncEngine) -> dict[str, Any]:
    """The keyword arguments ``engine`` would pass to ``asyncpg.connect``."""
    seen: dict[str, Any] = {}

    def capture(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        seen.update(cparams)
        raise _Stop

    event.listen(engine.sync_engine, "do_connect", capture)
    try:
        with pytest.raises(_Stop):
            await engine.connect()
    finally:
        await engine.dispose()
    return seen


@pytest.fixture(autouse=True)
def no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests' engines see no DATABASE_URL or CHAT_STORAGE_* variables."""
    for name in (
        "DATABASE_URL",
        "CHAT_STORAGE_DATABASE_URL",
        "CHAT_STORAGE_POOL_SIZE",
        "PGSSLMODE",
    ):
        monkeypatch.delenv(name, raising=False)


# -- create_engine(url) ---------------------------------------------------------------


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_url_is_accepted_positionally(factory: EngineFactory) -> None:
    """``create_engine(url)`` works as SQLAlchemy's ``create_async_engine(url)`` does."""
    engine = factory(URL)
    assert engine.url.host == "db.example.com" and engine.url.port == 6543
    assert engine.url.drivername == "postgresql+asyncpg"
    assert engine.url.password == "pw"


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_sqlalchemy_url_object_is_accepted_positionally(factory: EngineFactory) -> None:
    """A SQLAlchemy URL object works too, password included."""
    engine = factory(make_url(URL))
    assert engine.url.host == "db.example.com" and engine.url.password == "pw"


def test_settings_are_keyword_overrides_of_a_url() -> None:
    """``create_engine(url, pool_size=5)`` sets the pool from the keyword."""
    engine = create_engine(URL, pool_size=5, max_overflow=2)
    pool: Any = engine.sync_engine.pool
    assert pool.size() == 5 and pool._max_overflow == 2


def test_settings_still_work_positionally() -> None:
    """A Settings passed positionally, with keyword overrides on top."""
    engine = create_engine(Settings(database_url=URL, pool_size=7), max_overflow=1)
    pool: Any = engine.sync_engine.pool
    assert pool.size() == 7 and pool._max_overflow == 1
    assert engine.url.host == "db.example.com"


def test_positional_url_reads_the_environment_like_database_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``create_engine(url)`` is ``create_engine(database_url=url)``: CHAT_STORAGE_* apply."""
    monkeypatch.setenv("CHAT_STORAGE_POOL_SIZE", "3")
    pool: Any = create_engine(URL).sync_engine.pool
    assert pool.size() == 3


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_url_given_twice_is_a_type_error(factory: EngineFactory) -> None:
    """A URL both positionally and as ``database_url=`` is refused, not silently chosen."""
    with pytest.raises(TypeError, match="database URL twice"):
        factory(URL, database_url=URL)


def test_other_positional_types_are_refused() -> None:
    """Anything but a URL or a Settings names what was passed."""
    with pytest.raises(TypeError, match="not int"):
        create_engine(5)  # type: ignore[arg-type]


# -- TLS: ssl= and sslmode= ------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "mode"),
    [
        ("", None),
        ("sslmode=require", "require"),
        ("ssl=require", "require"),
        ("ssl=verify-full", "verify-full"),
        ("ssl=verify-ca", "verify-ca"),
        ("ssl=prefer", "prefer"),
        ("ssl=disable", "disable"),
        ("ssl=true", "verify-full"),
        ("ssl=True", "verify-full"),
        ("ssl=false", "disable"),
        ("sslmode=require&ssl=require", "require"),
    ],
)
def test_ssl_and_sslmode_map_to_one_mode(query: str, mode: str | None) -> None:
    """SQLAlchemy+asyncpg's ``ssl=`` and libpq's ``sslmode=`` name the same modes."""
    parsed = make_url(f"{URL}?{query}" if query else URL)

    def one(key: str) -> str | None:
        value = parsed.query.get(key)
        return value[0] if isinstance(value, tuple) else value

    assert ssl_mode(one("sslmode"), one("ssl")) == mode


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("query", ["ssl=require", "sslmode=require", "ssl=verify-full", "ssl=true"])
async def test_required_tls_verifies_the_server(factory: EngineFactory, query: str) -> None:
    """``ssl=require`` (either spelling) reaches asyncpg as a verifying TLS context."""
    args = await connect_arguments(factory(f"{URL}?{query}"))
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert "sslmode" not in args


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("query", ["ssl=prefer", "sslmode=prefer", "ssl=allow"])
async def test_prefer_keeps_the_plain_fallback(factory: EngineFactory, query: str) -> None:
    """prefer/allow reach asyncpg as the mode (an SSLContext would make TLS required)."""
    args = await connect_arguments(factory(f"{URL}?{query}"))
    assert args["ssl"] == query.split("=")[1]


@pytest.mark.parametrize("query", ["ssl=disable", "ssl=false", "sslmode=disable"])
async def test_disabled_tls_is_off(query: str) -> None:
    """disable and ``ssl=false`` turn TLS off."""
    args = await connect_arguments(create_engine(f"{URL}?{query}"))
    assert args["ssl"] is False


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("ssl=bogus", "ssl='bogus'"),
        ("ssl=required", "ssl='required'"),
        ("sslmode=bogus", "sslmode='bogus'"),
        ("sslmode=require&ssl=disable", "both sslmode=require and ssl=disable"),
        ("sslrootcert=/nonexistent/root.crt&sslmode=verify-full", "sslrootcert='/nonexistent"),
        ("sslrootcert=system&sslmode=verify-ca", "sslrootcert=system needs sslmode=verify-full"),
        ("sslrootcert=system&ssl=prefer", "sslrootcert=system needs sslmode=verify-full"),
    ],
)
@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
def test_bad_tls_option_is_a_value_error_naming_it(
    factory: EngineFactory, query: str, named: str
) -> None:
    """A bad TLS value is refused when the engine is built, naming the parameter."""
    with pytest.raises(ValueError, match=re.escape(named)):
        factory(f"{URL}?{query}")


@pytest.mark.parametrize("factory", FACTORIES, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "query",
    [
        "sslrootcert=system",
        "sslrootcert=system&sslmode=verify-full",
        "sslrootcert=system&ssl=require",
    ],
)
async def test_sslrootcert_system_uses_the_system_ca_store(
    factory: EngineFactory, query: str
) -> None:
    """``sslrootcert=system`` (libpq 16): the system's CAs, verify-full by default."""
    args = await connect_arguments(factory(f"{URL}?{query}"))
    context = args["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    # The same trust store as Python's default context (the system's).
    assert context.cert_store_stats() == ssl.create_default_context().cert_store_stats()


def test_client_certificate_with_prefer_is_refused() -> None:
    """A client certificate needs a mode that makes TLS required."""
    with pytest.raises(ValueError, match="sslcert/sslkey need"):
        build_ssl_context("prefer", cert="client.crt")

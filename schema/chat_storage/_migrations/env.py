"""Alembic environment for the chat tables, on the async engine.

Only our two tables are ours to manage: the existing application's tables
(``users`` and everything else) are skipped by autogenerate, and our revisions
are recorded in ``chat_storage_alembic_version``, beside, never in, the
application's own ``alembic_version``.

The URL comes from ``-x url=...``, the caller's Config (chat_storage.migrations),
CHAT_STORAGE_MIGRATION_URL or DATABASE_URL, in that order. Offline (``--sql``)
needs none: the SQL is rendered for PostgreSQL without connecting. Failures are
raised as chat_storage.migrations errors, which the ``alembic`` command prints as
one line.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import asyncpg
from alembic import context
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, make_url

from chat_storage.engine import create_unpooled_engine, redact
from chat_storage.migrations import (
    VERSION_TABLE,
    DatabaseUnreachable,
    MigrationError,
    NoDatabaseURL,
)
from chat_storage.models import Base
from chat_storage.settings import Settings

config = context.config
target_metadata = Base.metadata
OUR_TABLES = frozenset(t.name for t in Base.metadata.sorted_tables if not t.info.get("external"))
# What a failed connect raises: the socket's errors (refused, unknown host, TLS),
# the server's refusals (no such database or role, bad password), and SQLAlchemy's
# wrapping of either.
_CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


def _database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or os.environ.get("CHAT_STORAGE_MIGRATION_URL")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise NoDatabaseURL(
            "no database URL: pass -x url=postgresql://..., or set "
            "CHAT_STORAGE_MIGRATION_URL or DATABASE_URL"
        )
    return str(url)


def include_object(
    obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Compare only our tables; the application's tables are not ours to diff."""
    if type_ == "table":
        return name in OUR_TABLES
    table = getattr(obj, "table", None)
    return table is None or table.name in OUR_TABLES


def _configure(connection: Connection | None = None, **kwargs: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.get_main_option("version_table", VERSION_TABLE),
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
        **kwargs,
    )


def _reason(exc: BaseException) -> str:
    """The driver's own words for ``exc``: asyncpg's message and SQLSTATE when there is one."""
    seen: BaseException | None = exc
    # SQLAlchemy wraps asyncpg's error in its adapter's, which it wraps again.
    for _ in range(4):
        if seen is None:
            break
        if isinstance(seen, asyncpg.PostgresError):
            message = getattr(seen, "message", None) or type(seen).__name__
            return f"{message} (SQLSTATE {seen.sqlstate})"
        seen = getattr(seen, "orig", None) or seen.__cause__
    text = str(getattr(exc, "orig", None) or exc).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def run_migrations_offline() -> None:
    """Emit SQL to the output (``--sql``) for review; no URL or connection needed."""
    _configure(
        dialect_name="postgresql",
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    try:
        with context.begin_transaction():
            context.run_migrations()
    except sa_exc.DBAPIError as exc:
        # The failed migration's transaction was rolled back; earlier ones stay.
        raise MigrationError(f"migration failed: {_reason(exc)}") from exc


async def _run_async(url: str) -> None:
    try:
        engine = create_unpooled_engine(Settings(database_url=url))
    except ValueError as exc:
        raise MigrationError(f"invalid database URL: {exc}") from exc
    try:
        try:
            connection = await engine.connect()
        except (*_CONNECT_ERRORS, sa_exc.DBAPIError) as exc:
            target = make_url(url)
            raise DatabaseUnreachable(
                f"cannot connect to PostgreSQL at {target.host or 'localhost'}:"
                f"{target.port or 5432} (database {target.database!r}, "
                f"user {target.username!r}): {_reason(exc)}"
            ) from exc
        try:
            await connection.run_sync(_run_sync)
        finally:
            await connection.close()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run against a database, on a connection the caller passed or a new one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
        return
    url = _database_url()
    try:
        asyncio.run(_run_async(url))
    except MigrationError:
        raise
    except sa_exc.DBAPIError as exc:
        raise MigrationError(f"migration failed on {redact(url)}: {_reason(exc)}") from exc


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

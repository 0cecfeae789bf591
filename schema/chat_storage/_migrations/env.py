"""Alembic environment for the chat tables, on the async engine.

Only our two tables are ours to manage: the existing application's tables
(``users`` and everything else) are skipped by autogenerate, and our revisions
are recorded in ``chat_storage_alembic_version`` (alembic.ini), beside, never in,
the application's own ``alembic_version``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from chat_storage.engine import create_unpooled_engine, to_asyncpg_url
from chat_storage.models import Base
from chat_storage.settings import Settings

config = context.config
target_metadata = Base.metadata
OUR_TABLES = frozenset(t.name for t in Base.metadata.sorted_tables if not t.info.get("external"))


def _database_url() -> str:
    url = (
        context.get_x_argument(as_dictionary=True).get("url")
        or config.attributes.get("url")
        or os.environ.get("CHAT_STORAGE_MIGRATION_URL")
        or os.environ.get("DATABASE_URL")
    )
    if not url:
        raise SystemExit(
            "No database URL: pass -x url=postgresql://..., or set "
            "CHAT_STORAGE_MIGRATION_URL or DATABASE_URL."
        )
    return url


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
        version_table=config.get_main_option("version_table", "chat_storage_alembic_version"),
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    """Emit SQL to stdout (``alembic upgrade head --sql``) for DBAs who review it."""
    _configure(
        url=to_asyncpg_url(_database_url()),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


async def _run_async() -> None:
    engine = create_unpooled_engine(Settings(database_url=_database_url()))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_sync)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    """Run against a database, on a connection the caller passed or a new one."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run_sync(connection)
    else:
        asyncio.run(_run_async())


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

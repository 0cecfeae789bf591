"""Our Base.metadata never creates, alters or drops the host's users table."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import create_async_engine

from chat_storage import Base
from tests.host_app.conftest import async_url


def test_metadata_holds_only_our_tables() -> None:
    """Base.metadata lists conversations and messages, not users."""
    assert set(Base.metadata.tables) == {"conversations", "messages"}


def test_foreign_keys_still_reference_users() -> None:
    """Both user_id columns keep their foreign key to users.id, ON DELETE CASCADE."""
    for table in ("conversations", "messages"):
        (fk,) = [
            fk for fk in Base.metadata.tables[table].foreign_keys if fk.parent.name == "user_id"
        ]
        assert fk.target_fullname == "users.id"
        assert fk.ondelete == "CASCADE"


async def _users_catalog(url: str) -> tuple[list[Any], list[Any]]:
    conn = await asyncpg.connect(url)
    try:
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'users' ORDER BY ordinal_position"
        )
        rows = await conn.fetch("SELECT id, email FROM users ORDER BY id")
        return [tuple(c) for c in columns], [tuple(r) for r in rows]
    finally:
        await conn.close()


async def _create_and_drop_all(url: str) -> set[str]:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with engine.connect() as conn:
            created = set(await conn.run_sync(lambda c: c.dialect.get_table_names(c)))
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        return created
    finally:
        await engine.dispose()


def test_create_all_and_drop_all_leave_users_intact(blank_database_url: str) -> None:
    """create_all then drop_all on Base.metadata: users keeps its columns and rows."""

    async def arrange() -> None:
        conn = await asyncpg.connect(blank_database_url)
        try:
            await conn.execute(
                "CREATE TABLE users (id VARCHAR(255) PRIMARY KEY, email TEXT NOT NULL, "
                "created_at TIMESTAMPTZ NOT NULL);"
                "INSERT INTO users VALUES ('u1', 'u1@example.com', now())"
            )
        finally:
            await conn.close()

    asyncio.run(arrange())
    before = asyncio.run(_users_catalog(blank_database_url))
    created = asyncio.run(_create_and_drop_all(blank_database_url))
    assert created == {"users", "conversations", "messages"}
    assert asyncio.run(_users_catalog(blank_database_url)) == before


def test_create_all_without_users_creates_no_users(blank_database_url: str) -> None:
    """Without a users table, create_all fails on the foreign key instead of inventing one."""
    with pytest.raises(ProgrammingError, match='relation "users" does not exist'):
        asyncio.run(_create_and_drop_all(blank_database_url))

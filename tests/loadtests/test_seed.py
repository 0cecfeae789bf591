"""The seed on an application's own users table: extra NOT NULL columns are filled,
or one line names the column that blocks it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import pytest

from chat_storage.migrations import upgrade
from devdb import ServerInfo, scratch_database
from loadtests.core.seed import SeedError, SeedPlan, seed

#: A users table as SQLModel writes it: created_at NOT NULL with no server
#: default (the model's default_factory fills it in Python), and more columns
#: of the usual types in the same state.
SQLMODEL_USERS = """
CREATE TYPE plan_kind AS ENUM ('free', 'pro');
CREATE TABLE users (
    id VARCHAR(255) PRIMARY KEY,
    email VARCHAR NOT NULL UNIQUE,
    username VARCHAR(40) NOT NULL UNIQUE,
    full_name TEXT,
    is_active BOOLEAN NOT NULL,
    credits INTEGER NOT NULL,
    balance NUMERIC(10, 2) NOT NULL,
    plan plan_kind NOT NULL,
    settings JSONB NOT NULL,
    external_id UUID NOT NULL,
    born DATE NOT NULL,
    created_at TIMESTAMP WITHOUT TIME ZONE NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
)
"""
PLAN = SeedPlan(users=30, conversations=40, messages=200, max_history=50)


@pytest.fixture
def app_database(pg_server: ServerInfo) -> Iterator[str]:
    """A scratch database for one test, holding only what the test creates."""
    with scratch_database(pg_server.url, prefix="loadtest_seed") as url:
        yield url


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_seed_fills_a_sqlmodel_users_table(app_database: str) -> None:
    """Every NOT NULL column without a default gets a value of its type; the run's
    users, conversations and messages are all written."""
    asyncio.run(_execute(app_database, SQLMODEL_USERS))
    upgrade(app_database)
    counts = asyncio.run(seed(app_database, "r1", PLAN, quiet=True))
    assert counts == {"users": 30, "conversations": 40, "messages": 200}
    rows = asyncio.run(
        _fetch(app_database, "SELECT * FROM users WHERE id LIKE 'loadtest-r1-%' ORDER BY id")
    )
    assert len(rows) == 30
    first = rows[0]
    assert first["email"] == f"{first['id']}@loadtest.invalid"
    assert len(first["username"]) <= 40 and len({r["username"] for r in rows}) == 30
    assert first["full_name"] is None  # nullable: left alone
    assert (first["is_active"], first["plan"], first["settings"]) == (False, "free", "{}")
    assert first["created_at"].tzinfo is None and first["updated_at"].tzinfo is not None


def test_seed_names_the_column_it_cannot_fill(app_database: str) -> None:
    """A required column of a type the seed does not know: one line naming it, nothing written."""
    asyncio.run(
        _execute(
            app_database,
            "CREATE TABLE users (id VARCHAR(255) PRIMARY KEY, avatar BYTEA NOT NULL)",
        )
    )
    upgrade(app_database)
    with pytest.raises(SeedError) as refused:
        asyncio.run(seed(app_database, "r2", PLAN, quiet=True))
    message = str(refused.value)
    assert "\n" not in message
    assert "users.avatar (bytea)" in message
    assert asyncio.run(_fetch(app_database, "SELECT id FROM users")) == []

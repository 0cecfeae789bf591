"""Two Alembic histories in one database: the host's and ours, each on its own.

The order docs/host-application.md gives: upgrade the host first (it owns
users), then ours; downgrade ours first, then the host's.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from alembic import command

from chat_storage import migrations
from tests.host_app.conftest import host_config


async def _fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(url)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def fetch(url: str, sql: str) -> list[tuple[Any, ...]]:
    return asyncio.run(_fetch(url, sql))


def tables(url: str) -> set[str]:
    return {r[0] for r in fetch(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def versions(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The revision each history records, in its own version table."""
    return {
        table: fetch(url, f"SELECT version_num FROM {table}")
        for table in ("alembic_version", "chat_storage_alembic_version")
        if table in tables(url)
    }


def test_upgrade_host_then_ours(blank_database_url: str) -> None:
    """Host first, then ours: each records its head in its own version table."""
    url = blank_database_url
    command.upgrade(host_config(url), "head")
    migrations.upgrade(url)
    assert {"users", "conversations", "messages"} <= tables(url)
    assert versions(url) == {
        "alembic_version": [("h002",)],
        "chat_storage_alembic_version": [("004",)],
    }


def test_downgrade_ours_then_host(blank_database_url: str) -> None:
    """Ours down first, then the host's: every table goes, the host's history untouched by ours."""
    url = blank_database_url
    command.upgrade(host_config(url), "head")
    migrations.upgrade(url)
    migrations.downgrade(url)
    assert "conversations" not in tables(url)
    assert versions(url)["alembic_version"] == [("h002",)]
    command.downgrade(host_config(url), "base")
    assert tables(url) & {"users", "conversations", "messages"} == set()
    assert versions(url) == {"alembic_version": [], "chat_storage_alembic_version": []}


def test_host_migrates_while_ours_stay_at_head(blank_database_url: str) -> None:
    """The host moves its own history up and down; ours stays at 004 with its data."""
    url = blank_database_url
    command.upgrade(host_config(url), "h001")
    migrations.upgrade(url)
    fetch(url, "INSERT INTO users (id, email, created_at) VALUES ('u1', 'u1@example.com', now())")
    fetch(url, "INSERT INTO conversations (user_id) VALUES ('u1')")
    command.upgrade(host_config(url), "h002")
    command.downgrade(host_config(url), "h001")
    command.upgrade(host_config(url), "head")
    assert versions(url) == {
        "alembic_version": [("h002",)],
        "chat_storage_alembic_version": [("004",)],
    }
    assert fetch(url, "SELECT user_id FROM conversations") == [("u1",)]


def test_ours_before_host_is_refused(blank_database_url: str) -> None:
    """Ours before the host's users table exists: a clear refusal, nothing created."""
    with pytest.raises(migrations.MigrationError, match="users"):
        migrations.upgrade(blank_database_url)
    assert tables(blank_database_url) & {"conversations", "messages"} == set()

"""Migrations: the plan's DDL exactly, reversible, and blind to the application's tables."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from chat_storage import Base, create_unpooled_engine
from chat_storage.migrations import MigrationError, downgrade, upgrade

ROOT = Path(__file__).resolve().parents[2]


async def _fetch(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in asyncio.run(_fetch(url, sql, *args))]


def table_definition(url: str, table: str) -> dict[str, Any]:
    """Columns, constraints and indexes of ``table`` as the catalog describes them."""
    return {
        "columns": fetch(
            url,
            """SELECT column_name, data_type, character_maximum_length, is_nullable,
                      column_default
               FROM information_schema.columns WHERE table_schema = 'public'
               AND table_name = $1 ORDER BY ordinal_position""",
            table,
        ),
        "constraints": fetch(
            url,
            # contype 'n': PostgreSQL 18 records NOT NULL as constraints too; the
            # columns query already covers nullability, and 14-17 have no such rows.
            """SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
               WHERE conrelid = to_regclass($1) AND contype <> 'n' ORDER BY conname""",
            table,
        ),
        "indexes": fetch(
            url,
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = $1 ORDER BY indexname",
            table,
        ),
    }


def application_snapshot(url: str) -> dict[str, Any]:
    """Definitions and rows of every application table."""
    snapshot: dict[str, Any] = {}
    for table in ("users", "tasks", "alembic_version"):
        snapshot[table] = table_definition(url, table)
        snapshot[table + ":rows"] = fetch(url, f"SELECT * FROM {table} ORDER BY 1")
    return snapshot


def our_tables(url: str) -> set[str]:
    rows = fetch(
        url,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
        "AND tablename IN ('conversations', 'messages')",
    )
    return {r[0] for r in rows}


def test_upgrade_downgrade_upgrade(app_database_url: str) -> None:
    """Upgrade to head, downgrade to base, upgrade again: each step completes."""
    upgrade(app_database_url)
    assert our_tables(app_database_url) == {"conversations", "messages"}
    downgrade(app_database_url, "base")
    assert our_tables(app_database_url) == set()
    upgrade(app_database_url)
    assert our_tables(app_database_url) == {"conversations", "messages"}
    version = fetch(app_database_url, "SELECT version_num FROM chat_storage_alembic_version")
    assert version == [("004",)]


def test_application_tables_untouched(app_database_url: str) -> None:
    """users, tasks and the application's alembic_version keep definitions and rows."""
    before = application_snapshot(app_database_url)
    upgrade(app_database_url)
    assert application_snapshot(app_database_url) == before
    downgrade(app_database_url, "base")
    assert application_snapshot(app_database_url) == before
    upgrade(app_database_url)
    assert application_snapshot(app_database_url) == before
    assert fetch(app_database_url, "SELECT version_num FROM alembic_version") == [("phase2_0007",)]


PLAN_CONVERSATIONS = {
    "columns": [
        ("id", "uuid", None, "NO", "gen_random_uuid()"),
        ("user_id", "character varying", 255, "NO", None),
        ("status", "character varying", 20, "NO", "'active'::character varying"),
        ("created_at", "timestamp with time zone", None, "NO", "now()"),
        ("updated_at", "timestamp with time zone", None, "NO", "now()"),
    ],
    "constraints": [
        ("conversations_pkey", "PRIMARY KEY (id)"),
        (
            "conversations_status_check",
            "CHECK (((status)::text = ANY ((ARRAY['active'::character varying, "
            "'archived'::character varying])::text[])))",
        ),
        (
            "conversations_user_id_fkey",
            "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE",
        ),
    ],
    "indexes": [
        ("conversations_pkey", "CREATE UNIQUE INDEX conversations_pkey ON public.conversations USING btree (id)"),
        ("idx_conversations_updated_at", "CREATE INDEX idx_conversations_updated_at ON public.conversations USING btree (updated_at DESC)"),
        ("idx_conversations_user_id", "CREATE INDEX idx_conversations_user_id ON public.conversations USING btree (user_id)"),
        ("idx_conversations_user_status", "CREATE INDEX idx_conversations_user_status ON public.conversations USING btree (user_id, status)"),
    ],
}  # fmt: skip

PLAN_MESSAGES = {
    "columns": [
        ("id", "uuid", None, "NO", "gen_random_uuid()"),
        ("conversation_id", "uuid", None, "NO", None),
        ("user_id", "character varying", 255, "NO", None),
        ("role", "character varying", 20, "NO", None),
        ("content", "text", None, "NO", None),
        ("metadata", "jsonb", None, "YES", None),
        ("created_at", "timestamp with time zone", None, "NO", "now()"),
    ],
    "constraints": [
        ("chk_user_message_length", "CHECK ((((role)::text <> 'user'::text) OR (length(content) <= 1000)))"),
        ("messages_conversation_id_fkey", "FOREIGN KEY (conversation_id) REFERENCES conversations(id) ON DELETE CASCADE"),
        ("messages_pkey", "PRIMARY KEY (id)"),
        (
            "messages_role_check",
            "CHECK (((role)::text = ANY ((ARRAY['user'::character varying, "
            "'assistant'::character varying])::text[])))",
        ),
        ("messages_user_id_fkey", "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE"),
    ],
    "indexes": [
        ("idx_messages_conversation_created", "CREATE INDEX idx_messages_conversation_created ON public.messages USING btree (conversation_id, created_at DESC)"),
        ("idx_messages_conversation_id", "CREATE INDEX idx_messages_conversation_id ON public.messages USING btree (conversation_id)"),
        ("messages_pkey", "CREATE UNIQUE INDEX messages_pkey ON public.messages USING btree (id)"),
    ],
}  # fmt: skip


def test_catalog_matches_plan_at_002(app_database_url: str) -> None:
    """After 002 the live catalog holds exactly the plan's columns, checks, keys and indexes."""
    upgrade(app_database_url, "002")
    assert table_definition(app_database_url, "conversations") == PLAN_CONVERSATIONS
    assert table_definition(app_database_url, "messages") == PLAN_MESSAGES


def test_catalog_at_head_keeps_everything_in_the_plan(app_database_url: str) -> None:
    """Later migrations only add: every column, constraint and index of the plan remains."""
    upgrade(app_database_url)
    for table, plan in (("conversations", PLAN_CONVERSATIONS), ("messages", PLAN_MESSAGES)):
        live = table_definition(app_database_url, table)
        for part in ("columns", "constraints", "indexes"):
            missing = set(plan[part]) - set(live[part])
            assert not missing, f"{table} {part} lost at head: {missing}"


def test_plan_ddl_verbatim_gives_the_same_catalog(empty_database_url: str) -> None:
    """The plan's SQL, run as written, yields the catalog our 002 is compared with."""
    plan_sql = (ROOT / "tests" / "migrations" / "plan_ddl.sql").read_text()
    asyncio.run(_execute(empty_database_url, plan_sql))
    assert table_definition(empty_database_url, "conversations") == PLAN_CONVERSATIONS
    assert table_definition(empty_database_url, "messages") == PLAN_MESSAGES


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_models_agree_with_migrations(database_url: str) -> None:
    """Autogenerate finds no difference between the models and the migrated schema."""

    async def diff() -> list[Any]:
        engine = create_unpooled_engine(database_url=database_url)
        try:
            async with engine.connect() as conn:

                def compare(sync_conn: Any) -> list[Any]:
                    context = MigrationContext.configure(
                        sync_conn,
                        opts={
                            "compare_type": True,
                            "compare_server_default": True,
                            "include_object": _ours,
                        },
                    )
                    return list(compare_metadata(context, Base.metadata))

                return await conn.run_sync(compare)
        finally:
            await engine.dispose()

    assert asyncio.run(diff()) == []


def _ours(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    tables = {"conversations", "messages"}
    if type_ == "table":
        return name in tables
    table = getattr(obj, "table", None)
    return table is None or table.name in tables


def test_missing_users_table_is_a_clear_error(empty_database_url: str) -> None:
    """Without users, upgrade refuses with a one-line instruction and creates nothing."""
    with pytest.raises(MigrationError, match="apply the application's own migrations first"):
        upgrade(empty_database_url)
    assert our_tables(empty_database_url) == set()


def test_missing_users_table_cli_prints_no_traceback(empty_database_url: str) -> None:
    """The alembic command line reports the missing users table without a stack trace."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": empty_database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "apply the application's own migrations first" in output
    assert "Traceback" not in output


def test_downgrade_drops_indexes_before_tables() -> None:
    """Offline downgrade SQL drops every index before its table, messages before conversations."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "downgrade", "004:base", "--sql"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": "postgresql://offline@127.0.0.1/offline"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("DROP")]
    drops = [line.split()[2].rstrip(";") for line in lines]
    assert drops.index("messages") < drops.index("conversations")
    for index in ("idx_messages_conversation_created", "idx_messages_conversation_id"):
        assert drops.index(index) < drops.index("messages")
    for index in (
        "idx_conversations_user_status",
        "idx_conversations_updated_at",
        "idx_conversations_user_id",
    ):
        assert drops.index(index) < drops.index("conversations")

"""--sql: the migrations render their DDL for review without touching a database."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from chat_storage.migrations import downgrade, upgrade

ROOT = Path(__file__).resolve().parents[2]
# Nothing listens here: an offline run that tried to connect would fail.
NOWHERE = "postgresql://nobody:secret@127.0.0.1:9/nowhere"
NO_URL_ENV = {
    k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHAT_STORAGE_MIGRATION_URL")
}


def test_upgrade_sql_renders_create_tables_without_connecting() -> None:
    """upgrade(..., sql=True) writes CREATE TABLE conversations and messages, connecting nowhere."""
    out = io.StringIO()
    upgrade(NOWHERE, sql=True, output=out)
    ddl = out.getvalue()
    assert "CREATE TABLE conversations (" in ddl
    assert "CREATE TABLE messages (" in ddl
    assert "CREATE UNIQUE INDEX uq_messages_conversation_seq" in ddl
    assert "-- requires: the application's table users" in ddl
    assert "to_regclass" not in ddl


def test_upgrade_sql_needs_no_url() -> None:
    """Offline, no URL is needed at all: the SQL is rendered for PostgreSQL."""
    out = io.StringIO()
    upgrade(None, "002", sql=True, output=out)
    assert "CREATE TABLE messages (" in out.getvalue()
    assert "uq_messages_conversation_seq" not in out.getvalue()


def test_downgrade_sql_renders_drop_tables_without_connecting() -> None:
    """downgrade(..., "base", sql=True) starts from head and drops messages, then conversations."""
    out = io.StringIO()
    downgrade(NOWHERE, "base", sql=True, output=out)
    drops = [line for line in out.getvalue().splitlines() if line.startswith("DROP TABLE")]
    assert drops == ["DROP TABLE messages;", "DROP TABLE conversations;"]


def test_alembic_upgrade_sql_from_a_checkout() -> None:
    """A checkout's `alembic upgrade head --sql`, with no URL set, prints the DDL and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head", "--sql"],
        cwd=ROOT,
        env=NO_URL_ENV,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "CREATE TABLE conversations (" in result.stdout
    assert "CREATE TABLE messages (" in result.stdout


def test_cli_upgrade_and_downgrade_sql(tmp_path: Path) -> None:
    """`python -m chat_storage migrate upgrade|downgrade --sql` print the DDL, no URL needed."""
    for action, expected in (
        (["upgrade"], "CREATE TABLE conversations ("),
        (["downgrade", "base"], "DROP TABLE conversations;"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "chat_storage", "migrate", *action, "--sql"],
            cwd=tmp_path,
            env=NO_URL_ENV,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert expected in result.stdout
        assert "Traceback" not in result.stderr

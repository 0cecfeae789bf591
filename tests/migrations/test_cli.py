"""The migration command line (`python -m chat_storage migrate`) and its one-line errors."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from chat_storage.migrations import (
    DatabaseUnreachable,
    MigrationError,
    NoDatabaseURL,
    UsersTableIncompatible,
    UsersTableMissing,
    current,
    upgrade,
)
from devdb import ServerInfo, scratch_database

ROOT = Path(__file__).resolve().parents[2]
NO_URL_ENV = {
    k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CHAT_STORAGE_MIGRATION_URL")
}


def chat_storage(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chat_storage", *args],
        cwd=cwd,
        env=NO_URL_ENV if env is None else env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def _execute(url: str, sql: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    finally:
        await conn.close()
    return {r[0] for r in rows}


@pytest.fixture
def integer_users_url(pg_server: ServerInfo) -> Iterator[str]:
    """A database whose users.id is an integer, which VARCHAR(255) cannot reference."""
    with scratch_database(pg_server.url, prefix="chat_intusers") as url:
        asyncio.run(_execute(url, "CREATE TABLE users (id integer PRIMARY KEY, email text)"))
        yield url


@pytest.fixture
def closed_port_url() -> str:
    """A URL on loopback where nothing listens (a port just bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"postgresql://chat:s3cret-pw@127.0.0.1:{port}/chat"


def test_cli_upgrade_current_downgrade(app_database_url: str, tmp_path: Path) -> None:
    """upgrade, current, downgrade base and current again, each through the command line."""
    url = ["--url", app_database_url]
    up = chat_storage("migrate", "upgrade", *url, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert "Running upgrade 003 -> 004" in up.stderr
    assert chat_storage("migrate", "current", *url, cwd=tmp_path).stdout == "004 (head)\n"
    down = chat_storage("migrate", "downgrade", "base", *url, cwd=tmp_path)
    assert down.returncode == 0, down.stderr
    assert "none" in chat_storage("migrate", "current", *url, cwd=tmp_path).stdout
    assert asyncio.run(_tables(app_database_url)) == {
        "users",
        "tasks",
        "alembic_version",
        "chat_storage_alembic_version",
    }


def test_cli_url_from_environment(app_database_url: str, tmp_path: Path) -> None:
    """Without --url, CHAT_STORAGE_MIGRATION_URL is used."""
    env = {**NO_URL_ENV, "CHAT_STORAGE_MIGRATION_URL": app_database_url}
    result = chat_storage("migrate", "upgrade", "002", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert current(app_database_url) == ["002"]


def test_cli_history_lists_revisions(tmp_path: Path) -> None:
    """history needs no database and lists 004 (head) down to 001."""
    result = chat_storage("migrate", "history", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert [line.split(",")[0] for line in result.stdout.splitlines()] == [
        "003 -> 004 (head)",
        "002 -> 003",
        "001 -> 002",
        "<base> -> 001",
    ]


def test_cli_sql_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`migrate upgrade --sql | head -1`: exit 0, no BrokenPipeError traceback."""
    with subprocess.Popen(
        [sys.executable, "-m", "chat_storage", "migrate", "upgrade", "--sql"],
        cwd=tmp_path,
        env=NO_URL_ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline().strip() == b"BEGIN;"
        proc.stdout.close()  # the reader goes away, as head does
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def assert_one_line_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    # Progress lines ("Running upgrade  -> 001, ...") may come first; the error is one line.
    lines = [line for line in result.stderr.splitlines() if not line.startswith("Running ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("chat-storage: error: ")
    for needle in needles:
        assert needle in lines[0]


def test_cli_no_url_is_one_line(tmp_path: Path) -> None:
    """No --url and none in the environment: one line naming the variables, exit 1."""
    result = chat_storage("migrate", "upgrade", cwd=tmp_path)
    assert_one_line_error(result, "CHAT_STORAGE_MIGRATION_URL", "DATABASE_URL")


def test_cli_missing_users_is_one_line(empty_database_url: str, tmp_path: Path) -> None:
    """No users table: one line telling to apply the application's migrations first."""
    result = chat_storage("migrate", "upgrade", "--url", empty_database_url, cwd=tmp_path)
    assert_one_line_error(result, "table 'users' not found")


def test_cli_wrong_typed_users_id_is_one_line(integer_users_url: str, tmp_path: Path) -> None:
    """An integer users.id: one line naming the type and what it must be, and no table made."""
    result = chat_storage("migrate", "upgrade", "--url", integer_users_url, cwd=tmp_path)
    assert_one_line_error(result, "users.id is integer", "VARCHAR or TEXT")
    assert asyncio.run(_tables(integer_users_url)) == {"users"}


def test_cli_unreachable_server_is_one_line(closed_port_url: str, tmp_path: Path) -> None:
    """Nothing listening: one line naming host and port and the refusal, never the password."""
    result = chat_storage("migrate", "upgrade", "--url", closed_port_url, cwd=tmp_path)
    port = closed_port_url.rsplit(":", 1)[1].split("/")[0]
    assert_one_line_error(result, f"127.0.0.1:{port}", "ConnectionRefusedError")
    assert "s3cret-pw" not in result.stderr


def test_alembic_cli_wrong_typed_users_id_is_one_line(integer_users_url: str) -> None:
    """A checkout's `alembic upgrade head` reports an integer users.id in one line too."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env={**NO_URL_ENV, "DATABASE_URL": integer_users_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    output = (result.stdout + result.stderr).strip().splitlines()
    assert len(output) == 1, output
    assert output[0].startswith("FAILED: users.id is integer")


def test_wrong_typed_users_id_raises_a_typed_error(integer_users_url: str) -> None:
    """upgrade() raises UsersTableIncompatible, one line, and leaves no table or version row."""
    with pytest.raises(UsersTableIncompatible) as raised:
        upgrade(integer_users_url)
    assert isinstance(raised.value, MigrationError)
    assert len(str(raised.value).splitlines()) == 1
    assert asyncio.run(_tables(integer_users_url)) == {"users"}


def test_users_id_without_unique_key_raises_a_typed_error(pg_server: ServerInfo) -> None:
    """A VARCHAR users.id with no primary key or unique index is refused before any DDL."""
    with scratch_database(pg_server.url, prefix="chat_nokey") as url:
        asyncio.run(_execute(url, "CREATE TABLE users (id varchar(255))"))
        with pytest.raises(UsersTableIncompatible, match="no primary key or unique constraint"):
            upgrade(url)


def test_missing_users_table_raises_a_typed_error(empty_database_url: str) -> None:
    """No users table: UsersTableMissing."""
    with pytest.raises(UsersTableMissing):
        upgrade(empty_database_url)


def test_unreachable_server_raises_a_typed_error(closed_port_url: str) -> None:
    """A refused connection: DatabaseUnreachable naming the host, not the password."""
    with pytest.raises(DatabaseUnreachable) as raised:
        upgrade(closed_port_url)
    assert "127.0.0.1:" in str(raised.value)
    assert "s3cret-pw" not in str(raised.value)


def test_no_url_raises_a_typed_error() -> None:
    """upgrade(None) without sql: NoDatabaseURL."""
    with pytest.raises(NoDatabaseURL):
        upgrade(None)

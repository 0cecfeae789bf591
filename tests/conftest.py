"""Shared fixtures: one real PostgreSQL per test run, a scratch database on it.

The server comes from devdb (DATABASE_URL, else Docker, else an embedded
PostgreSQL); the database is created for the run, holds a stand-in for the
existing application's tables, is migrated to head, and is dropped afterwards.
Tests isolate themselves by creating their own users (random ids).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from chat_storage import ChatStore, create_engine
from chat_storage.migrations import upgrade
from devdb import ServerInfo, provide_server, scratch_database
from tests.app_schema import create_app_tables
from tests.pgbouncer import pgbouncer

MakeUser = Callable[[], Awaitable[str]]


@pytest.fixture(scope="session")
def pg_server() -> Iterator[ServerInfo]:
    """The PostgreSQL server for this run (started here if none was given)."""
    with provide_server() as info:
        print(f"\nPostgreSQL for tests: {info.description}")
        yield info


@pytest.fixture(scope="session")
def database_url(pg_server: ServerInfo) -> Iterator[str]:
    """A database for the run: application tables, then our migrations at head."""
    with scratch_database(pg_server.url, prefix="chat_test") as url:
        asyncio.run(create_app_tables(url))
        upgrade(url)
        yield url


@pytest.fixture
def app_database_url(pg_server: ServerInfo) -> Iterator[str]:
    """A fresh database with only the application's tables (for migration tests)."""
    with scratch_database(pg_server.url, prefix="chat_mig") as url:
        asyncio.run(create_app_tables(url))
        yield url


@pytest.fixture
def empty_database_url(pg_server: ServerInfo) -> Iterator[str]:
    """A fresh, empty database (no users table)."""
    with scratch_database(pg_server.url, prefix="chat_empty") as url:
        yield url


VIA_PGBOUNCER = os.environ.get("CHAT_STORAGE_TEST_VIA_PGBOUNCER") == "1"


@pytest.fixture(scope="session")
def store_url(database_url: str) -> Iterator[str]:
    """Where the store connects: the database, or PgBouncer in front of it.

    With CHAT_STORAGE_TEST_VIA_PGBOUNCER=1 (CI runs the query-layer suite so),
    the store goes through PgBouncer in transaction mode, in pooler mode.
    """
    if not VIA_PGBOUNCER:
        yield database_url
        return
    with pgbouncer(database_url) as url:
        yield url


@pytest.fixture(scope="session")
async def engine(store_url: str) -> AsyncIterator[AsyncEngine]:
    """The plan's pooled engine on the run's database."""
    engine = create_engine(database_url=store_url, pooler_mode=VIA_PGBOUNCER)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
async def store(engine: AsyncEngine) -> ChatStore:
    """A ChatStore without metrics (instrumentation tests build their own)."""
    return ChatStore(engine)


@pytest.fixture(scope="session")
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain asyncpg connection for arranging and inspecting rows behind the store's back."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


@pytest.fixture
def make_user(admin: asyncpg.Connection) -> MakeUser:
    """Insert a user into the application's users table and return its id."""

    async def make() -> str:
        user_id = f"user-{uuid.uuid4()}"
        await admin.execute(
            "INSERT INTO users (id, email) VALUES ($1, $2)", user_id, f"{user_id}@example.com"
        )
        return user_id

    return make


@pytest.fixture
async def user_id(make_user: MakeUser) -> str:
    """A fresh user of the application."""
    return await make_user()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (CHAT_STORAGE_FAIL_ON_SKIP=1) a skipped test is reported as failed."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if os.environ.get("CHAT_STORAGE_FAIL_ON_SKIP") == "1" and report.skipped:
        report.outcome = "failed"
        report.longrepr = f"skipped, which CI does not allow: {report.longrepr}"

"""Where a run or a benchmark writes: the given database, or a scratch one.

* :func:`resolve_database` (``python -m loadtests run``, ``honesty``, the gate):
  ``DATABASE_URL`` as is, else a scratch database on ``devdb.provide_server()``.
* :func:`scratch_database_migrated` (the benchmarks): always a fresh database
  on ``server_url`` (else ``devdb``'s server), with the users stand-in,
  migrated to head and dropped afterwards, so a run leaves nothing behind.

A scratch database gets a minimal ``users(id, email)`` stand-in for the
application's table; a given database must already have its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator

import asyncpg
from sqlalchemy.engine import make_url

from chat_storage.migrations import upgrade
from devdb import provide_server, scratch_database
from loadtests.core.seed import users_table_columns


class SetupError(RuntimeError):
    """The run cannot start (exit status 2)."""


def loop_safe_url(url: str) -> str:
    """``url`` with ``localhost`` replaced by ``127.0.0.1``.

    The locustfile's event loop runs in a thread of a gevent-patched process:
    resolving a name there goes through a patched resolver (and localhost may
    resolve to ::1 first, where the server may not listen). An IP address needs
    no resolution at all.
    """
    parsed = make_url(url)
    if parsed.host in ("localhost", "localhost.localdomain"):
        parsed = parsed.set(host="127.0.0.1")
    return parsed.render_as_string(hide_password=False)


def redacted(url: str) -> str:
    """``url`` with its password hidden, for printing."""
    return make_url(url).render_as_string(hide_password=True)


@contextlib.contextmanager
def resolve_database() -> Iterator[tuple[str, bool, str]]:
    """(url, is_scratch, description) for the run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, False, f"DATABASE_URL {redacted(url)}"
        return
    with provide_server() as server, scratch_database(server.url, prefix="loadtest") as scratch:
        yield scratch, True, f"scratch database {redacted(scratch)} on {server.description}"


async def create_users_standin(url: str) -> None:
    """A minimal stand-in for the application's users table (scratch databases only)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE TABLE users (id VARCHAR(255) PRIMARY KEY, email TEXT)")
    finally:
        await conn.close()


def prepare(url: str, scratch: bool) -> None:
    """Ensure a users table (stand-in on scratch only) and migrate to head.

    Raises:
        SetupError: a given database has no users table.
    """

    async def check() -> bool:
        conn = await asyncpg.connect(url)
        try:
            return await users_table_columns(conn) is not None
        finally:
            await conn.close()

    if not asyncio.run(check()):
        if not scratch:
            raise SetupError(
                "the DATABASE_URL database has no users table: conversations reference the "
                "application's users, so apply the application's migrations first (the harness "
                "creates a users stand-in only in a scratch database it made itself)"
            )
        asyncio.run(create_users_standin(url))
        print("  created a minimal users stand-in table (scratch database)")
    upgrade(url)


@contextlib.contextmanager
def scratch_database_migrated(server_url: str | None) -> Iterator[str]:
    """A migrated scratch database (with the users stand-in) for the block; its URL."""
    with contextlib.ExitStack() as stack:
        if server_url is None:
            server_url = stack.enter_context(provide_server()).url
        url = stack.enter_context(scratch_database(server_url, prefix="chat_bench"))
        asyncio.run(create_users_standin(url))
        upgrade(url)
        yield url

"""Where a benchmark runs: a scratch database on the development server, seeded.

The server is ``--server-url`` if given, else ``devdb.provide_server()``
(``DATABASE_URL`` if set, else an embedded PostgreSQL). The benchmark always
gets a fresh database with a minimal ``users`` table, migrated to head, and
dropped afterwards, so a run leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import asyncpg

from chat_storage.migrations import upgrade
from devdb import provide_server, scratch_database
from loadtests.seed import SeedPlan, seed


@dataclass(frozen=True, slots=True)
class Target:
    """What one simulated session talks to: an owner and one of their conversations."""

    user_id: str
    conversation_id: uuid.UUID


@contextmanager
def bench_database(server_url: str | None) -> Iterator[str]:
    """A migrated scratch database (with a ``users`` table) for the block; its URL."""
    with ExitStack() as stack:
        if server_url is None:
            server_url = stack.enter_context(provide_server()).url
        url = stack.enter_context(scratch_database(server_url, prefix="chat_bench"))
        asyncio.run(_create_users(url))
        upgrade(url)
        yield url


async def _create_users(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        # The application's table, reduced to what the foreign keys need.
        await conn.execute("CREATE TABLE users (id varchar(255) PRIMARY KEY)")
    finally:
        await conn.close()


async def seed_messages(
    url: str, run_id: str, messages: int, *, conversations: int | None = None
) -> dict[str, int]:
    """Seed ``messages`` messages (COPY + server-side generate_series; see loadtests/seed.py)."""
    plan = SeedPlan.scaled(messages, conversations=conversations)
    return await seed(url, run_id, plan, quiet=True)


async def load_targets(url: str, sessions: int) -> list[Target]:
    """One distinct conversation per session (reused round-robin if there are too few)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT user_id, id FROM conversations ORDER BY id LIMIT $1", sessions
        )
    finally:
        await conn.close()
    if not rows:
        raise RuntimeError("the seed made no conversations")
    return [Target(rows[i % len(rows)][0], rows[i % len(rows)][1]) for i in range(sessions)]


async def server_setting(url: str, name: str) -> str:
    """``SHOW <name>`` on the benchmark's server."""
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(f"SHOW {name}"))
    finally:
        await conn.close()

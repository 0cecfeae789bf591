"""A PostgreSQL restart under 100 sessions: typed retryable errors, recovery, nothing lost.

The server is restarted (fast shutdown, then the same port and data directory),
so this test runs its own embedded server and never touches the run's shared
server or a PostgreSQL service of the machine, DATABASE_URL or not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import asyncpg
import pytest

from chat_storage import ChatStore, DatabaseUnavailable, TransientError, create_engine
from chat_storage.migrations import upgrade
from devdb import scratch_database
from devdb.embedded import EmbeddedPostgres
from tests.app_schema import create_app_tables

SESSIONS = 100  # 10 users with 10 conversations each, one session per conversation
RESTARTS = 2
# Liveness bound, not a performance figure: "recovers by itself within a few seconds".
RECOVERY_BOUND_S = 10.0


@dataclass
class Restartable:
    """A dedicated server that may be restarted, and a migrated database on it."""

    server: EmbeddedPostgres
    database_url: str


@pytest.fixture(scope="module")
def restartable() -> Iterator[Restartable]:
    """An embedded server for this module only, with the application tables and migrations."""
    with EmbeddedPostgres() as server, scratch_database(server.url, prefix="chat_restart") as url:
        asyncio.run(create_app_tables(url))
        upgrade(url)
        yield Restartable(server, url)


@dataclass
class Observed:
    """What the sessions saw: the ledger, the errors and when they happened."""

    acknowledged: dict[uuid.UUID, list[uuid.UUID]]
    errors: Counter[type[BaseException]] = field(default_factory=Counter)
    causes: Counter[str] = field(default_factory=Counter)
    error_times: list[float] = field(default_factory=list)

    def record(self, exc: BaseException) -> None:
        self.errors[type(exc)] += 1
        self.causes[type(exc.__cause__).__name__] += 1
        self.error_times.append(time.perf_counter())


async def make_users(database_url: str, count: int) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        users = [f"user-{uuid.uuid4()}" for _ in range(count)]
        await conn.executemany(
            "INSERT INTO users (id, email) VALUES ($1, $2)",
            [(u, f"{u}@example.com") for u in users],
        )
        return users
    finally:
        await conn.close()


async def test_restart_fails_only_in_flight_calls_and_loses_nothing(
    restartable: Restartable,
) -> None:
    """100 sessions append (retrying the same message_id) and read while the server restarts:
    only DatabaseUnavailable, recovery without help, every acknowledged message stored once
    in a gap-free sequence."""
    engine = create_engine(database_url=restartable.database_url, application_name="restart")
    store = ChatStore(engine)
    try:
        users = await make_users(restartable.database_url, SESSIONS // 10)
        conversations = [
            (u, (await store.create_conversation(u)).id) for u in users for _ in range(10)
        ]
        observed = Observed({c: [] for _, c in conversations})
        stop = asyncio.Event()

        async def session(user: str, conversation: uuid.UUID) -> None:
            n = 0
            while not stop.is_set():
                message_id = uuid.uuid4()
                while True:  # the same message_id until acknowledged, stop or not
                    try:
                        await store.add_message(
                            user, conversation, "user", f"n{n}", message_id=message_id
                        )
                        break
                    except TransientError as exc:
                        observed.record(exc)
                        await asyncio.sleep(0.01)
                observed.acknowledged[conversation].append(message_id)
                try:
                    await store.get_history(user, conversation, limit=5)
                except TransientError as exc:
                    observed.record(exc)
                n += 1

        async def restarter() -> list[tuple[float, float, float]]:
            """(restart called, restart done, first success after it) per restart."""
            windows = []
            probe_user, probe_conversation = conversations[0]
            for _ in range(RESTARTS):
                await asyncio.sleep(0.5)
                called = time.perf_counter()
                # Blocking (the supervisor does the work): off the event loop, so the
                # sessions keep running into the restart.
                await asyncio.to_thread(restartable.server.restart)
                done = time.perf_counter()
                while True:
                    try:
                        await store.get_conversation(probe_user, probe_conversation)
                        break
                    except TransientError as exc:
                        observed.record(exc)
                        await asyncio.sleep(0.01)
                windows.append((called, done, time.perf_counter()))
            await asyncio.sleep(0.5)  # the sessions keep going on the recovered pool
            stop.set()
            return windows

        sessions = [asyncio.create_task(session(u, c)) for u, c in conversations]
        windows = await restarter()
        await asyncio.wait_for(asyncio.gather(*sessions), timeout=60)
        pool = engine.sync_engine.pool
        checked_out = pool.checkedout()  # type: ignore[attr-defined]
    finally:
        await engine.dispose()

    recoveries = [first_ok - done for _, done, first_ok in windows]
    total = sum(len(ids) for ids in observed.acknowledged.values())
    late = [t for t in observed.error_times if not any(a <= t <= b for a, _, b in windows)]
    while_down = sum(any(a <= t <= d for a, d, _ in windows) for t in observed.error_times)
    print(
        f"\nPostgreSQL restarted {RESTARTS}x under {SESSIONS} sessions: {total} acknowledged "
        f"appends, {sum(observed.errors.values())} transient errors "
        f"({', '.join(f'{n} {t.__name__}' for t, n in observed.errors.items())}; "
        f"{while_down} during the restart, the rest before recovery; driver errors: "
        f"{', '.join(f'{n} {name}' for name, n in observed.causes.most_common())}), "
        f"restart took {', '.join(f'{(d - c) * 1000:.0f}' for c, d, _ in windows)} ms, "
        f"recovery after restart {', '.join(f'{r * 1000:.1f}' for r in recoveries)} ms"
    )
    assert set(observed.errors) <= {DatabaseUnavailable}, observed.errors
    # Failures happen only while a restart is under way, never later from a stale
    # pooled connection (the pool drops connections the server closed).
    assert not late, f"{len(late)} errors outside the restart windows"
    assert checked_out == 0
    assert max(recoveries) < RECOVERY_BOUND_S, recoveries

    conn = await asyncpg.connect(restartable.database_url)
    try:
        for conversation, ids in observed.acknowledged.items():
            rows = await conn.fetch(
                "SELECT id, seq FROM messages WHERE conversation_id = $1 ORDER BY seq",
                conversation,
            )
            assert [r["id"] for r in rows] == ids  # each stored once, in acknowledgement order
            assert [r["seq"] for r in rows] == list(range(1, len(ids) + 1))
    finally:
        await conn.close()

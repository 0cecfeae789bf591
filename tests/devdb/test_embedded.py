"""The embedded PostgreSQL (devdb.embedded) and where test databases come from (devdb)."""

from __future__ import annotations

import asyncio
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest

from devdb import (
    SOURCE_ENV,
    NoDatabaseAvailable,
    provide_server,
    redact_url,
    scratch_database,
)
from devdb.embedded import EmbeddedPostgres, EmbeddedPostgresError, system_bin_dir

EMBEDDED_PY = Path(__file__).resolve().parents[2] / "devdb" / "embedded.py"

# An owner that starts a server, says where it is, and waits to be killed. It loads
# devdb/embedded.py by path: importing the devdb package would cost a second.
OWNER_SCRIPT = f"""
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("embedded", {str(EMBEDDED_PY)!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
pg = module.EmbeddedPostgres()
pg.start()
if "--restart" in sys.argv:
    pg.restart()
print(json.dumps({{"pid": pg.postmaster_pid, "datadir": str(pg.data_dir)}}), flush=True)
time.sleep(120)
"""


def fetchval(url: str, sql: str) -> object:
    """One value from ``sql`` on a new connection to ``url``."""

    async def run() -> object:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition()`` until it is true or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


@pytest.fixture(scope="module")
def server() -> Iterator[EmbeddedPostgres]:
    """One embedded server shared by the tests that only need a server."""
    with EmbeddedPostgres() as pg:
        yield pg


def test_starts_answers_select_1_and_cleans_up() -> None:
    """A server answers SELECT 1 at its IP URL; stop() ends the postmaster and removes its files."""
    pg = EmbeddedPostgres()
    pg.start()
    try:
        assert pg.url == f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
        assert fetchval(pg.url, "SELECT 1") == 1
        assert fetchval(pg.url, "SHOW listen_addresses") == "127.0.0.1"
        assert fetchval(pg.url, "SHOW max_connections") == "300"
        assert fetchval(pg.url, "SHOW fsync") == "off"
        pid, data_dir = pg.postmaster_pid, pg.data_dir
        assert pid is not None and data_dir is not None and data_dir.is_dir()
        with pytest.raises(EmbeddedPostgresError, match="already started"):
            pg.start()
    finally:
        started = time.monotonic()
        pg.stop()
        stop_seconds = time.monotonic() - started
    pg.stop()  # a second stop does nothing
    assert gone(pid)
    assert not data_dir.parent.exists()
    assert pg.postmaster_pid is None
    assert stop_seconds < 5, stop_seconds


def test_restart_keeps_port_and_data_and_ends_sessions() -> None:
    """restart(): open sessions end with admin_shutdown, a new postmaster serves the same
    port and data, and stop() still removes everything."""

    async def in_flight_query_during_restart(pg: EmbeddedPostgres) -> BaseException:
        conn = await asyncpg.connect(pg.url, timeout=10)
        try:
            sleeping = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
            await asyncio.sleep(0.3)  # the statement is running in its backend
            await asyncio.to_thread(pg.restart, pause=0.2)
            try:
                await asyncio.wait_for(sleeping, timeout=10)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                return exc
            raise AssertionError("a statement survived the restart")
        finally:
            conn.terminate()

    with EmbeddedPostgres() as pg:
        port, old_pid, data_dir = pg.port, pg.postmaster_pid, pg.data_dir
        assert old_pid is not None and data_dir is not None
        fetchval(pg.url, "CREATE TABLE kept AS SELECT 42 AS answer")
        error = asyncio.run(in_flight_query_during_restart(pg))
        # asyncpg reports the server's admin_shutdown (57P01) on a running statement
        # as ConnectionDoesNotExistError (08003) when the socket closes with it.
        assert getattr(error, "sqlstate", None) in ("57P01", "08003"), repr(error)
        assert gone(old_pid)
        assert (pg.port, pg.data_dir) == (port, data_dir)
        assert pg.postmaster_pid not in (None, old_pid)
        assert fetchval(pg.url, "SELECT answer FROM kept") == 42
        pg.restart()  # twice in a row: the supervisor keeps serving commands
        assert fetchval(pg.url, "SELECT answer FROM kept") == 42
        new_pid = pg.postmaster_pid
    assert new_pid is not None and gone(new_pid)
    assert not data_dir.parent.exists()


def test_restart_of_a_stopped_server_is_refused() -> None:
    """restart() before start() raises EmbeddedPostgresError."""
    with pytest.raises(EmbeddedPostgresError, match="not running"):
        EmbeddedPostgres().restart()


def test_two_servers_run_at_once() -> None:
    """Two embedded servers in one process get different ports and both answer."""
    with EmbeddedPostgres() as first, EmbeddedPostgres() as second:
        assert first.port != second.port
        assert first.data_dir != second.data_dir
        assert fetchval(first.url, "SELECT 1") == 1
        assert fetchval(second.url, "SELECT 2") == 2


@pytest.mark.parametrize("restarted", [False, True], ids=["started", "restarted"])
def test_no_orphan_after_owner_is_sigkilled(restarted: bool) -> None:
    """SIGKILL of the owning process still stops the postmaster and removes the temp dir,
    also for a postmaster started by restart()."""
    args = [sys.executable, "-c", OWNER_SCRIPT, *(["--restart"] if restarted else [])]
    owner = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert owner.stdout is not None
        ready, _, _ = select.select([owner.stdout], [], [], 60)
        assert ready, "the owner did not report its server"
        line = owner.stdout.readline()
        assert line, owner.stderr.read().decode() if owner.stderr else ""
        started = json.loads(line)
        pid, data_dir = int(started["pid"]), Path(started["datadir"])
        assert not gone(pid) and data_dir.is_dir()
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    assert wait_until(lambda: gone(pid) and not data_dir.parent.exists(), 10), (
        f"postmaster {pid} or {data_dir.parent} left behind"
    )


def test_postmaster_does_not_run_as_root(server: EmbeddedPostgres) -> None:
    """As root the postmaster runs as an unprivileged user; otherwise as us."""
    assert server.postmaster_pid is not None
    uid = psutil.Process(server.postmaster_pid).uids().real
    if os.geteuid() == 0:
        assert uid != 0
    else:
        assert uid == os.geteuid()


def test_time_to_first_query_is_reported() -> None:
    """Time from start() to the first answered query is measured and printed."""
    started = time.monotonic()
    with EmbeddedPostgres() as pg:
        assert fetchval(pg.url, "SELECT 1") == 1
        elapsed = time.monotonic() - started
    print(f"\nembedded PostgreSQL {pg.bin_dir}: first query after {elapsed:.3f} s")


def test_scratch_database_creates_and_drops(server: EmbeddedPostgres) -> None:
    """scratch_database creates a database, yields its URL and drops it despite open sessions."""
    list_sql = "SELECT string_agg(datname, ',') FROM pg_database"
    before = set(str(fetchval(server.url, list_sql)).split(","))
    connected, ended = threading.Event(), threading.Event()

    def hold(url: str) -> None:
        async def run() -> None:
            conn = await asyncpg.connect(url, timeout=10)
            connected.set()
            try:
                await conn.execute("SELECT pg_sleep(30)")
            except (asyncpg.PostgresError, OSError, asyncpg.InterfaceError):
                pass  # terminated by the drop: what we want
            finally:
                conn.terminate()
                ended.set()

        asyncio.run(run())

    with scratch_database(server.url, prefix="chat_devdb_t") as url:
        name = url.rsplit("/", 1)[1]
        assert name.startswith("chat_devdb_t_") and name not in before
        assert fetchval(url, "SELECT current_database()") == name
        assert name in str(fetchval(server.url, list_sql)).split(",")
        holder = threading.Thread(target=hold, args=(url,), daemon=True)
        holder.start()
        assert connected.wait(10)
    assert ended.wait(10), "the open session was not ended by the drop"
    holder.join(10)
    assert set(str(fetchval(server.url, list_sql)).split(",")) == before


def test_provide_server_honours_database_url(
    server: EmbeddedPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATABASE_URL wins, normalised to postgresql://, with no password in the description."""
    monkeypatch.delenv(SOURCE_ENV, raising=False)
    given = f"postgresql+asyncpg://postgres:s3cret@127.0.0.1:{server.port}/postgres"
    monkeypatch.setenv("DATABASE_URL", given)
    with provide_server() as info:
        assert info.source == "env"
        assert info.url == f"postgresql://postgres:s3cret@127.0.0.1:{server.port}/postgres"
        assert "s3cret" not in info.description and "***" in info.description
        assert fetchval(info.url, "SELECT 1") == 1


def test_provide_server_forced_source_explains_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A forced source that is unavailable raises NoDatabaseAvailable saying what to do."""
    monkeypatch.setenv(SOURCE_ENV, "env")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(NoDatabaseAvailable, match="DATABASE_URL is not set"), provide_server():
        pass
    monkeypatch.setenv(SOURCE_ENV, "nonsense")
    with pytest.raises(ValueError, match=SOURCE_ENV), provide_server():
        pass


def test_provide_server_starts_system_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """CHAT_STORAGE_DB_SOURCE=system starts an embedded server from the system's binaries."""
    if system_bin_dir() is None:
        pytest.skip("no system PostgreSQL binaries")
    monkeypatch.setenv(SOURCE_ENV, "system")
    with provide_server() as info:
        assert info.source == "system"
        assert fetchval(info.url, "SELECT 1") == 1


def test_redact_url_hides_passwords() -> None:
    """redact_url replaces passwords with *** and leaves the rest of the URL alone."""
    assert redact_url("postgresql://u:p%40ss@h:5432/db?sslmode=require") == (
        "postgresql://u:***@h:5432/db?sslmode=require"
    )
    assert redact_url("postgres://u@h/db") == "postgres://u@h/db"
    assert "hunter2" not in redact_url("postgresql://h/db?user=u&password=hunter2")
    assert "hunter2" not in redact_url("host=h user=u password=hunter2 dbname=d")
    assert redact_url("postgresql://u:@h/db") == "postgresql://u:***@h/db"

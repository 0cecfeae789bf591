"""Release runs end to end, short: capacity, master and workers, interrupted runs,
the round trip through a delaying proxy.

Each run is seconds long with generous targets; the tests check structure and
bookkeeping (steps, knee, per-worker requests, rows deleted), never speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from devdb import ServerInfo, scratch_database
from loadtests.bench.proxy import delay_proxy
from tests.app_schema import create_app_tables

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--messages", "500", "--target-history-ms", "5000", "--target-insert-ms", "5000",
        "--target-other-ms", "5000"]  # fmt: skip

pytestmark = pytest.mark.slow


def _env(url: str | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.pop("DATABASE_URL", None)
    if url:
        env["DATABASE_URL"] = url
    env.update(extra)
    return env


def _loadtests(*args: str, env: dict[str, str], timeout: float = 240) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


async def _fetch(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _loadtest_users(url: str) -> int:
    return int(asyncio.run(_fetch(url, "SELECT count(*) FROM users WHERE id LIKE 'loadtest-%'")))


def _summary(reports: Path) -> dict[str, Any]:
    (summary,) = reports.glob("*/summary.json")
    return json.loads(summary.read_text())  # type: ignore[no-any-return]


def test_capacity_reports_the_knee_and_resources(pg_server: ServerInfo, tmp_path: Path) -> None:
    """Three short steps that all hold: the knee is the last, with pool, connections
    and CPU measured; summary.json, the PNG and report.html are written."""
    with scratch_database(pg_server.url, prefix="loadtest_cap") as url:
        asyncio.run(create_app_tables(url))
        code, out = _loadtests(
            "capacity", "--steps", "4,8,16", "--rate", "4", "--step-warmup", "1",
            "--step-duration", "3", "--messages", "500", "--target-insert-ms", "5000",
            "--target-history-ms", "5000", "--target-other-ms", "5000",
            "--metrics-port", str(_free_port()), "--reports-dir", str(tmp_path),
            env=_env(url),
        )  # fmt: skip
        left = _loadtest_users(url)
    assert code == 0, out[-3000:]
    summary = _summary(tmp_path)
    assert summary["kind"] == "capacity"
    assert [s["users"] for s in summary["steps"]] == [4, 8, 16]
    assert summary["knee"]["users"] == 16 and "every step held" in summary["stopped"]
    step = summary["steps"][0]
    assert step["ops_s"] > 0 and step["pool_wait_mean_ms"] is not None  # metrics were read
    assert step["database_connections_max"] >= 1 and step["client_cpu_cores"] > 0
    assert summary["ran_out_first"]["resource"] in {
        "client CPU", "database CPU", "pool connections", "database connections"
    }  # fmt: skip
    report = next(tmp_path.glob("*-capacity"))
    assert (report / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert "knee:" in out and (report / "report.html").exists()
    assert left == 0


def test_capacity_stops_at_the_first_step_that_misses(
    pg_server: ServerInfo, tmp_path: Path
) -> None:
    """A target no step can meet: the first step fails, no knee, exit 1."""
    with scratch_database(pg_server.url, prefix="loadtest_cap") as url:
        asyncio.run(create_app_tables(url))
        code, out = _loadtests(
            "capacity", "--steps", "4,8", "--rate", "4", "--step-warmup", "1",
            "--step-duration", "2", "--messages", "500", "--target-insert-ms", "0.001",
            "--metrics-port", "0", "--reports-dir", str(tmp_path), env=_env(url),
        )  # fmt: skip
    assert code == 1, out[-3000:]
    summary = _summary(tmp_path)
    assert len(summary["steps"]) == 1 and summary["knee"] is None
    assert "add_message" in summary["steps"][0]["why_not"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_master_and_two_workers_report_every_request(pg_server: ServerInfo, tmp_path: Path) -> None:
    """run --master and two run --worker processes on loopback: summary.json holds both
    workers' requests, percentiles over all of them, and disjoint seeded users."""
    port = str(_free_port())
    with scratch_database(pg_server.url, prefix="loadtest_dist") as url:
        asyncio.run(create_app_tables(url))
        env = _env(url)
        master = subprocess.Popen(
            [sys.executable, "-m", "loadtests", "run", "--master", "--expect-workers", "2",
             "--master-port", port, "--master-bind-host", "127.0.0.1", "--users", "20",
             "--spawn-rate", "20", "--rate", "2", "--warmup", "2", "--duration", "5",
             "--metrics-port", "0", "--reports-dir", str(tmp_path), *TINY],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "loadtests",
                    "run",
                    "--worker",
                    "--master-host",
                    "127.0.0.1",
                    "--master-port",
                    port,
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        try:
            out, _ = master.communicate(timeout=240)
            for w in workers:
                w.wait(60)
        finally:
            procs: list[subprocess.Popen[Any]] = [master, *workers]
            for p in procs:
                if p.poll() is None:
                    p.kill()
        left = _loadtest_users(url)
    print(out)
    assert master.returncode == 0, out[-3000:]
    assert all(w.returncode == 0 for w in workers)
    summary = _summary(tmp_path)
    assert set(summary["workers"]) == {"0", "1"}
    per_worker = [w["requests"] for w in summary["workers"].values()]
    assert all(n > 0 for n in per_worker)
    assert sum(op["count"] for op in summary["operations"]) == sum(per_worker)
    assert [w["seeded_users"] for w in summary["workers"].values()] == [10, 10]
    assert summary["seeded_users_shared_by_workers"] == 0
    assert left == 0


def test_interrupted_run_removes_its_rows(pg_server: ServerInfo, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) while Locust runs: the seeded users are deleted all the same."""
    with scratch_database(pg_server.url, prefix="loadtest_int") as url:
        asyncio.run(create_app_tables(url))
        proc = subprocess.Popen(
            [sys.executable, "-m", "loadtests", "run", "--users", "5", "--warmup", "2",
             "--duration", "60", "--metrics-port", "0", "--reports-dir", str(tmp_path), *TINY],
            cwd=ROOT, env=_env(url), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        seeded = 0
        while time.monotonic() < deadline and seeded == 0:
            time.sleep(0.5)
            seeded = _loadtest_users(url)
        time.sleep(3)  # into Locust's run
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        left = _loadtest_users(url)
    assert seeded > 0, out
    assert "cleanup: deleted" in out, out[-3000:]
    assert left == 0


def test_failed_step_removes_its_rows(pg_server: ServerInfo, tmp_path: Path) -> None:
    """A step failing after the seed (exit 2): the seeded users are deleted."""
    with scratch_database(pg_server.url, prefix="loadtest_fail") as url:
        asyncio.run(create_app_tables(url))
        code, out = _loadtests(
            "run", "--users", "5", "--duration", "2", "--metrics-port", "0",
            "--reports-dir", str(tmp_path), *TINY,
            env=_env(url, LOADTEST_FAIL_AFTER_SEED="1"),
        )  # fmt: skip
        left = _loadtest_users(url)
    assert code == 2 and "LOADTEST_FAIL_AFTER_SEED" in out, out[-3000:]
    assert "cleanup: deleted" in out and left == 0


def test_round_trip_through_a_delay_proxy_is_reported(
    pg_server: ServerInfo, tmp_path: Path
) -> None:
    """Through a proxy adding 5 ms each way, the reported round trip is at least 10 ms."""
    with scratch_database(pg_server.url, prefix="loadtest_rtt") as url:
        asyncio.run(create_app_tables(url))
        parsed = make_url(url)
        with delay_proxy(parsed.host or "127.0.0.1", parsed.port or 5432, 0.005) as port:
            proxied = parsed.set(host="127.0.0.1", port=port).render_as_string(False)
            code, out = _loadtests(
                "run", "--users", "2", "--warmup", "1", "--duration", "2",
                "--metrics-port", "0", "--reports-dir", str(tmp_path), *TINY,
                env=_env(proxied),
            )  # fmt: skip
    assert code == 0, out[-3000:]
    rtt = _summary(tmp_path)["environment"]["rtt_ms"]
    assert rtt["min"] >= 10.0, rtt
    assert "round trip to the server: p50" in out

"""``python -m loadtests run`` end to end: a short run on a scratch database.

The run is a few seconds long (20 users, 2 s warm-up, 4 s measured, a tiny
seed) with generous targets, so a slow machine cannot fail it on latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from devdb import ServerInfo, scratch_database
from tests.app_schema import create_app_tables
from tests.loadtests.collector import Collector, running_collector

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SHORT_RUN = [
    "--users", "20", "--spawn-rate", "20", "--warmup", "2", "--duration", "4",
    "--messages", "2000", "--conversations", "100", "--seed-users", "40",
    "--target-history-ms", "5000", "--target-insert-ms", "5000", "--target-other-ms", "5000",
    "--metrics-port", "0",
]  # fmt: skip

pytestmark = pytest.mark.slow


@dataclass
class Run:
    """A finished command: its exit status, output and report directory."""

    returncode: int
    output: str
    report: Path
    database_url: str

    def summary(self) -> dict[str, Any]:
        return json.loads((self.report / "summary.json").read_text())  # type: ignore[no-any-return]


def _run(
    database_url: str, reports: Path, *extra: str, env_extra: dict[str, str] | None = None
) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["DATABASE_URL"] = database_url
    env.update(env_extra or {})
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtests",
            "run",
            *SHORT_RUN,
            "--reports-dir",
            str(reports),
            *extra,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    reports.mkdir(exist_ok=True)
    made = sorted(p for p in reports.iterdir() if p.is_dir())
    return Run(
        proc.returncode, proc.stdout + proc.stderr, made[-1] if made else reports, database_url
    )


@pytest.fixture(scope="module")
def server_url(pg_server: ServerInfo) -> str:
    """The run's PostgreSQL server, to make scratch databases on."""
    return pg_server.url


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    """Receives the short run's spans (OTLP/HTTP on loopback)."""
    with running_collector() as received:
        yield received


@pytest.fixture(scope="module")
def short_run(
    server_url: str, tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> Iterator[Run]:
    """One short run against a scratch database holding the application's tables,
    tracing every operation to ``collector`` (the OTEL_* variables a user would set)."""
    otel = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": collector.endpoint,
        "OTEL_SERVICE_NAME": "chat-loadtest",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    with scratch_database(server_url, prefix="loadtest_t") as url:
        asyncio.run(create_app_tables(url))
        yield _run(url, tmp_path_factory.mktemp("reports"), env_extra=otel)


async def _count(url: str, sql: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval(sql))
    finally:
        await conn.close()


def test_short_run_exits_zero(short_run: Run) -> None:
    """A healthy run with generous targets exits 0."""
    assert short_run.returncode == 0, short_run.output[-3000:]


def test_summary_has_the_documented_fields(short_run: Run) -> None:
    """summary.json has the run's fields and one entry per operation."""
    summary = short_run.summary()
    assert {
        "operations",
        "users",
        "duration_s",
        "mode",
        "verdict",
        "database",
        "started_at",
    } <= set(summary)
    assert summary["users"] == 20 and summary["mode"] == "paced"
    names = [op["name"] for op in summary["operations"]]
    assert names == [
        "get_history",
        "add_message",
        "create_conversation",
        "list_conversations",
        "archive_conversation",
    ]
    for op in summary["operations"]:
        assert {
            "name",
            "count",
            "failures",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "target_p95_ms",
            "pass",
        } <= set(op)


def test_run_traces_operations_when_otel_asks(short_run: Run, collector: Collector) -> None:
    """With OTEL_TRACES_EXPORTER=otlp every ChatStore operation's span reaches the endpoint."""
    names = {name for _, name in collector.spans}
    assert {"get_history", "add_message", "create_conversation"} <= names, names
    assert {service for service, _ in collector.spans} == {"chat-loadtest"}


def test_summary_verdict_is_pass(short_run: Run) -> None:
    """With generous targets and no failures the verdict is pass."""
    assert short_run.summary()["verdict"] == "pass", short_run.output[-3000:]


def test_history_reads_and_inserts_were_measured(short_run: Run) -> None:
    """The measured window holds history reads and message inserts."""
    ops = {op["name"]: op for op in short_run.summary()["operations"]}
    assert ops["get_history"]["count"] > 0
    assert ops["add_message"]["count"] > 0
    assert ops["get_history"]["p95_ms"] is not None


def test_summary_hides_the_database_password(short_run: Run) -> None:
    """The database description is redacted (no password can appear)."""
    from sqlalchemy.engine import make_url

    password = make_url(short_run.database_url).password
    description = short_run.summary()["database"]
    assert password is None or password not in description


def test_chart_is_a_png(short_run: Run) -> None:
    """The latency chart is written as a PNG."""
    chart = short_run.report / "latency.png"
    assert chart.read_bytes()[:8] == PNG_MAGIC


def test_locust_reports_are_written(short_run: Run) -> None:
    """Locust's HTML report and CSVs sit beside the summary."""
    for name in ("locust.html", "locust_stats.csv", "locust_stats_history.csv"):
        assert (short_run.report / name).stat().st_size > 0, name


def test_table_is_printed(short_run: Run) -> None:
    """The per-operation table and the verdict line are printed."""
    assert "get_history" in short_run.output
    assert "verdict: PASS" in short_run.output


def test_seeded_rows_are_deleted_afterwards(short_run: Run) -> None:
    """On a DATABASE_URL database only the run's users were added, and they are gone."""
    users = asyncio.run(_count(short_run.database_url, "SELECT count(*) FROM users"))
    assert users == 2  # the application's own two users (tests/app_schema.py)


def test_database_without_users_table_is_refused(server_url: str, tmp_path: Path) -> None:
    """A DATABASE_URL database without a users table: exit 2, nothing created."""
    with scratch_database(server_url, prefix="loadtest_e") as url:
        run = _run(url, tmp_path / "reports")
        tables = asyncio.run(
            _count(url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
        )
    assert run.returncode == 2
    assert "no users table" in run.output
    assert tables == 0


def test_honesty_compares_the_harness_with_pure_asyncio(server_url: str, tmp_path: Path) -> None:
    """The honesty command runs both drivers on one database and reports the p95 added."""
    with scratch_database(server_url, prefix="loadtest_h") as url:
        asyncio.run(create_app_tables(url))
        env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        env["DATABASE_URL"] = url
        proc = subprocess.run(
            [sys.executable, "-m", "loadtests", "honesty", "--users", "5", "--rate", "4",
             "--warmup", "1", "--duration", "3", "--rounds", "1", "--messages", "200",
             "--target-diff-ms", "10000", "--reports-dir", str(tmp_path)],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (report,) = tmp_path.glob("*-honesty")
    summary = json.loads((report / "honesty.json").read_text())
    by_name = {op["operation"]: op for op in summary["operations"]}
    for name in ("get_history", "add_message"):
        assert by_name[name]["harness"]["count"] > 0 and by_name[name]["asyncio"]["count"] > 0
        added = by_name[name]["harness"]["p95_ms"] - by_name[name]["asyncio"]["p95_ms"]
        assert by_name[name]["p95_added_ms"] == pytest.approx(added, abs=0.01)
    assert "p95 harness" in proc.stdout and summary["verdict"] == "pass"


def test_locust_worker_processes_share_the_load(server_url: str, tmp_path: Path) -> None:
    """--processes 2: Locust's master/worker mode, one event loop and engine per worker."""
    with scratch_database(server_url, prefix="loadtest_p") as url:
        asyncio.run(create_app_tables(url))
        run = _run(url, tmp_path, "--processes", "2", "--metrics-port", "0")
    assert run.returncode == 0, run.output
    summary = run.summary()
    assert summary["processes"] == 2 and summary["verdict"] == "pass"
    counts = {op["name"]: op["count"] for op in summary["operations"]}
    assert counts["get_history"] > 0 and counts["add_message"] > 0

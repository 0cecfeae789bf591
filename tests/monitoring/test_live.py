"""Live check: every dashboard query and recording rule returns data from real scrapes.

Starts, on loopback and for this module only, Debian's ``prometheus`` and
``prometheus-postgres-exporter`` (with monitoring/postgres_exporter_queries.yaml)
and an in-process metrics server fed by a short ChatStore workload on the test
database; Prometheus scrapes the metrics server as both ``chat-app`` and
``chat-loadtest``. Both processes are stopped afterwards. Missing binaries fail
the tests (install Debian's ``prometheus`` and ``prometheus-postgres-exporter``).

Queries allowed to return nothing, and why:

* pg_stat_statements metrics, when the server does not preload the library;
* time since the last autovacuum / autoanalyze: a fresh database has none.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from chat_storage import ChatStore, InvalidLimit, NotFound, StoreMetrics, create_engine
from chat_storage.metrics import LATENCY_BUCKETS
from tests.monitoring.quantiles import Harness, agrees_within_a_bucket, nearest_rank
from tests.monitoring.test_static import (
    MONITORING,
    QUERIES_FILE,
    RULE_FILES,
    dashboard_exprs,
    recording_rule_names,
    substitute_grafana_variables,
)

SCRAPE = "1s"
NEVER_IN_A_FRESH_DATABASE = ("last_autovacuum", "last_autoanalyze")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(f"{name} not found: install Debian's `{package}` package")
    return path


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_for(url: str, process: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited with {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"{url} did not answer in {seconds}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def workload(
    database_url: str, registry: CollectorRegistry, seconds: float, harness: Harness
) -> None:
    """Every operation, a replay, a reject and a not-found, repeated for ``seconds``;
    ``harness`` times each call on its own, as a load harness does.

    Each operation runs a different number of times per round (and archive_inactive
    every other round), so no two have the same (ok, error) counts: a histogram that
    recorded one operation under another's label would not match the harness's counts.
    """
    engine = create_engine(database_url=database_url)
    store = ChatStore(engine, metrics=StoreMetrics(registry))
    admin = await asyncpg.connect(database_url)
    call = harness.call
    try:
        deadline = time.monotonic() + seconds
        round_number = 0
        while time.monotonic() < deadline:
            user = f"user-{uuid.uuid4()}"
            await admin.execute(
                "INSERT INTO users (id, email) VALUES ($1, $2)", user, f"{user}@example.com"
            )
            conv = await call("create_conversation", store.create_conversation(user))  # 1
            message_id = uuid.uuid4()
            for _ in range(2):  # the second is an idempotent replay
                await call(
                    "add_message",
                    store.add_message(user, conv.id, "user", "hello", message_id=message_id),
                )
            for role in ("assistant", "user", "assistant"):  # 5 appends in all
                await call("add_message", store.add_message(user, conv.id, role, "more"))
            for limit in (20, 2, 1, 5):  # 4 reads, 1 not found
                await call("get_history", store.get_history(user, conv.id, limit=limit))
            with pytest.raises(NotFound):
                await call("get_history", store.get_history(user, uuid.uuid4()))
            with pytest.raises(InvalidLimit):  # rejected before the histogram: not timed
                await call("get_history", store.get_history(user, conv.id, limit=0))
            for _ in range(6):
                await call("get_conversation", store.get_conversation(user, conv.id))
            for _ in range(7):
                await call("list_conversations", store.list_conversations(user))
            for _ in range(2):  # idempotent
                await call("archive_conversation", store.archive_conversation(user, conv.id))
            for _ in range(3):  # idempotent
                await call("restore_conversation", store.restore_conversation(user, conv.id))
            await call("delete_conversation", store.delete_conversation(user, conv.id))
            with pytest.raises(NotFound):  # 1 ok, 1 not found
                await call("delete_conversation", store.delete_conversation(user, conv.id))
            if round_number % 2 == 0:
                # One statement per call here: nothing is idle for ten years.
                await call(
                    "archive_inactive_conversations",
                    store.archive_inactive_conversations(idle_for=timedelta(days=3650)),
                )
            round_number += 1
            await asyncio.sleep(0.05)
        await admin.execute("VACUUM ANALYZE conversations, messages")
    finally:
        await admin.close()
        await engine.dispose()


@pytest.fixture(scope="module")
def harness() -> Harness:
    """The live workload's own per-call timings (filled by ``prometheus_url``)."""
    return Harness()


@pytest.fixture(scope="module")
def prometheus_url(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, harness: Harness
) -> Iterator[str]:
    """A Prometheus on loopback that has scraped a live workload, exporter and rules."""
    prometheus = binary("prometheus", "prometheus")
    exporter = binary("prometheus-postgres-exporter", "prometheus-postgres-exporter")
    tmp = tmp_path_factory.mktemp("prometheus")
    registry = CollectorRegistry()
    metrics_port, exporter_port, prom_port = free_port(), free_port(), free_port()
    server, thread = start_http_server(metrics_port, addr="127.0.0.1", registry=registry)

    dsn = database_url + ("&" if "?" in database_url else "?") + "sslmode=disable"
    exporter_proc = subprocess.Popen(
        [
            exporter,
            f"--web.listen-address=127.0.0.1:{exporter_port}",
            f"--extend.query-path={QUERIES_FILE}",
        ],
        env={**os.environ, "DATA_SOURCE_NAME": dsn},
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "exporter.log").open("wb"),
    )
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": SCRAPE, "evaluation_interval": SCRAPE}
    config["rule_files"] = [str(p) for p in RULE_FILES]
    targets = {
        "chat-app": f"127.0.0.1:{metrics_port}",
        "chat-loadtest": f"127.0.0.1:{metrics_port}",
        "postgres": f"127.0.0.1:{exporter_port}",
    }
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp / "prometheus.log").open("wb"),
    )
    url = f"http://127.0.0.1:{prom_port}"
    try:
        wait_for(f"http://127.0.0.1:{exporter_port}/metrics", exporter_proc)
        wait_for(f"{url}/-/ready", prom_proc)
        asyncio.run(workload(database_url, registry, seconds=4, harness=harness))
        time.sleep(4)  # a few more scrapes and rule evaluations
        yield url
    finally:
        stop(prom_proc)
        stop(exporter_proc)
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def query(url: str, expr: str) -> list[Any]:
    params = urllib.parse.urlencode({"query": expr})
    body = get_json(f"{url}/api/v1/query?{params}")
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def statements_preloaded(url: str) -> bool:
    return bool(query(url, "pg_chat_statements_calls"))


def test_every_dashboard_query_returns_data(prometheus_url: str) -> None:
    """Each dashboard target, variables substituted, returns at least one series."""
    empty = []
    preloaded = statements_preloaded(prometheus_url)
    for name, title, expr in dashboard_exprs():
        if any(column in expr for column in NEVER_IN_A_FRESH_DATABASE):
            continue
        if "pg_chat_statements" in expr and not preloaded:
            continue
        promql = substitute_grafana_variables(expr).replace("[5m]", "[15s]")
        if not query(prometheus_url, promql):
            empty.append(f"{name}: {title}: {promql}")
    assert not empty, "\n".join(empty)


def test_every_recording_rule_returns_data(prometheus_url: str) -> None:
    """Each recording rule of monitoring/rules has been evaluated into a series."""
    empty = [name for name in sorted(recording_rule_names()) if not query(prometheus_url, name)]
    assert not empty, empty


def test_targets_are_up_and_exporter_reaches_postgres(prometheus_url: str) -> None:
    """All three jobs are up and pg_up is 1 (no alert condition on a healthy setup)."""
    up = {r["metric"]["job"]: r["value"][1] for r in query(prometheus_url, "up")}
    assert up == {"chat-app": "1", "chat-loadtest": "1", "postgres": "1"}
    assert [r["value"][1] for r in query(prometheus_url, "pg_up")] == ["1"]
    alerts = get_json(f"{prometheus_url}/api/v1/alerts")["data"]["alerts"]
    assert not [a for a in alerts if a["state"] == "firing"]


def test_histogram_p95_agrees_with_the_harness(prometheus_url: str, harness: Harness) -> None:
    """Prometheus's p95 of the load (histogram_quantile over the scraped buckets) is in the
    bucket of the harness's own exact p95 or the one below, overall and per operation; the
    scraped counts per operation and outcome equal the harness's."""
    # The window is the whole load: the registry was fresh and the last scrape came
    # after the load ended, so the cumulative buckets hold exactly its observations.
    job = 'job="chat-loadtest"'
    # Series that never moved are left out: every (operation, outcome) exists at zero.
    scraped = {
        (r["metric"]["operation"], r["metric"]["outcome"]): int(float(r["value"][1]))
        for r in query(
            prometheus_url,
            f"sum by (operation, outcome) (chat_storage_operation_duration_seconds_count{{{job}}})"
            " > 0",
        )
    }
    counted: dict[tuple[str, str], int] = {}
    for operation, outcome, _ in harness.samples:
        counted[(operation, outcome)] = counted.get((operation, outcome), 0) + 1
    assert scraped == counted
    # The workload's call counts tell the operations apart (see workload()).
    signatures = [
        (counted.get((op, "ok"), 0), counted.get((op, "error"), 0))
        for op in {op for op, _ in counted}
    ]
    assert len(set(signatures)) == len(signatures), signatures

    def prometheus_p95(selector: str, by: str = "") -> dict[str, float]:
        expr = (
            f"histogram_quantile(0.95, sum by (le{by}) "
            f"(chat_storage_operation_duration_seconds_bucket{{{selector}}}))"
        )
        return {
            r["metric"].get("operation", ""): float(r["value"][1])
            for r in query(prometheus_url, expr)
        }

    figures = {"": prometheus_p95(f'{job}, outcome="ok"')[""]}
    figures |= prometheus_p95(f'{job}, outcome="ok"', ", operation")
    lines, disagreements = [], []
    for operation, from_prometheus in sorted(figures.items()):
        durations = harness.durations(operation=operation or None)
        own = nearest_rank(durations, 0.95)
        agrees = agrees_within_a_bucket(LATENCY_BUCKETS, own, from_prometheus)
        line = (
            f"{operation or 'all operations'}: n={len(durations)}, harness p95 "
            f"{own * 1000:.2f} ms, Prometheus p95 {from_prometheus * 1000:.2f} ms"
        )
        lines.append(line)
        if not agrees:
            disagreements.append(line)
    print(
        "\np95 over the load window (edges "
        + ", ".join(f"{e * 1000:g}" for e in LATENCY_BUCKETS[:9])
        + " ms ...):\n"
        + "\n".join(lines)
    )
    assert not disagreements, disagreements

"""Static checks of monitoring/ and dashboards/: dashboards, PromQL, rules, compose, exporter SQL.

PromQL is checked by Debian's ``promtool`` (package ``prometheus``): a missing
promtool fails these tests rather than skipping them.

Metric names used by dashboards and rules must exist in one of:

* our exposition: ``chat_storage.metrics.StoreMetrics`` rendered by prometheus-client;
* postgres_exporter's extended queries (monitoring/postgres_exporter_queries.yaml),
  named ``<namespace>_<column>`` for every non-LABEL column;
* :data:`EXPORTER_DEFAULT_METRICS`, the postgres_exporter 0.11 built-in metrics
  we use (checked against a live exporter by test_live.py);
* Prometheus' own ``up``, or a recording rule of monitoring/rules/.

The exporter's SQL runs against the test PostgreSQL (``database_url``). The
pg_stat_statements query needs the extension: it is created inside a
transaction that is rolled back; when the server does not preload the library
(``shared_preload_libraries``), the query cannot execute, so it is only
prepared (parsed and analysed, result columns checked) instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from chat_storage.metrics import StoreMetrics

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "monitoring"
DASHBOARDS = sorted((ROOT / "dashboards").glob("*.json"))
RULE_FILES = sorted((MONITORING / "rules").glob("*.yml"))
RULE_TESTS = sorted((MONITORING / "tests").glob("*.yml"))
QUERIES_FILE = MONITORING / "postgres_exporter_queries.yaml"

#: postgres_exporter 0.11 built-in metrics that dashboards or rules use.
EXPORTER_DEFAULT_METRICS = frozenset(
    {
        "pg_up",
        "pg_stat_activity_count",
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
    }
)
#: Prometheus' synthetic scrape metrics.
PROMETHEUS_METRICS = frozenset({"up"})

RATE_FUNCTIONS = re.compile(r"\b(rate|irate|increase)\s*\(")
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)


def promtool() -> str:
    """The promtool executable, or a failure telling how to install it."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found: install Debian's `prometheus` package (apt-get install prometheus)"
        )
    return path


def load_dashboards() -> list[tuple[str, dict[str, Any]]]:
    return [(path.name, json.loads(path.read_text())) for path in DASHBOARDS]


def iter_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) for every panel target and query variable."""
    out = []
    for name, dash in load_dashboards():
        for panel in iter_panels(dash["panels"]):
            for t in panel.get("targets", []):
                out.append((name, panel["title"], t["expr"]))
    return out


def rule_exprs() -> list[tuple[str, str, str]]:
    out = []
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                name = rule.get("record") or rule["alert"]
                out.append((path.name, name, rule["expr"]))
    return out


def recording_rule_names() -> set[str]:
    names: set[str] = set()
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            names.update(r["record"] for r in group["rules"] if "record" in r)
    return names


def substitute_grafana_variables(expr: str) -> str:
    """Grafana variables replaced by valid PromQL: a 5m range, a match-all regex."""
    expr = re.sub(r"\$\{?__rate_interval\}?", "5m", expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a lexical scan, enough for our rules)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", expr):
        if m.group(2) or m.group(1).lower() in PROMQL_KEYWORDS:
            continue
        names.add(m.group(1))
    return names


def our_exposition_names() -> set[str]:
    """Every sample name StoreMetrics exposes, one sample per label set observed."""
    registry = CollectorRegistry()
    metrics = StoreMetrics(registry)
    metrics.operation_duration.labels("get_history", "ok").observe(0.01)
    metrics.errors.labels("get_history", "DatabaseError").inc()
    metrics.validation_rejects.labels("get_history", "InvalidLimit").inc()
    metrics.idempotent_replays.inc()
    metrics.pool_size.set(10)
    metrics.pool_max_overflow.set(5)
    for state in ("checked_out", "idle", "overflow"):
        metrics.pool_connections.labels(state).set(1)
    metrics.pool_wait.observe(0.001)
    metrics.pool_connect.observe(0.01)
    metrics.pool_timeouts.inc()
    text = generate_latest(registry).decode()
    return {
        re.match(r"[\w:]+", line).group(0)  # type: ignore[union-attr]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def exporter_query_metric_names() -> set[str]:
    names = set()
    for namespace, spec in yaml.safe_load(QUERIES_FILE.read_text()).items():
        for metric in spec["metrics"]:
            ((column, opts),) = metric.items()
            if opts["usage"] != "LABEL":
                names.add(f"{namespace}_{column}")
    return names


# -- dashboards -----------------------------------------------------------------------


def test_dashboards_exist() -> None:
    """The three chat-storage dashboards are present."""
    assert {p.stem for p in DASHBOARDS} >= {
        "chat-storage-overview",
        "chat-storage-postgres",
        "chat-storage-loadtest",
    }


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_has_stable_uid_and_no_id(path: Path) -> None:
    """Each dashboard has a uid equal to its file name and no top-level id."""
    dash = json.loads(path.read_text())
    assert dash.get("uid") == path.stem
    assert "id" not in dash


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_is_not_editable(path: Path) -> None:
    """Each dashboard is provisioned read-only ("editable": false)."""
    assert json.loads(path.read_text())["editable"] is False


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_and_target_uses_the_datasource_variable(path: Path) -> None:
    """A datasource-type variable exists and every panel and target points at it."""
    dash = json.loads(path.read_text())
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"]["uid"] == "${datasource}", v["name"]
    panels = list(iter_panels(dash["panels"]))
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_has_unit_and_description(path: Path) -> None:
    """Each panel sets fieldConfig.defaults.unit and a non-empty description."""
    for panel in iter_panels(json.loads(path.read_text())["panels"]):
        assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]
        assert panel.get("description", "").strip(), panel["title"]


def test_rate_and_increase_use_rate_interval() -> None:
    """Every rate()/irate()/increase() in a dashboard ranges over $__rate_interval."""
    checked = 0
    for name, title, expr in dashboard_exprs():
        for m in RATE_FUNCTIONS.finditer(expr):
            depth, end = 1, m.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(expr[end], 0)
                end += 1
            ranges = re.findall(r"\[([^\]]*)\]", expr[m.end() : end])
            assert ranges and ranges[-1] == "$__rate_interval", f"{name}: {title}: {expr}"
            checked += 1
    assert checked


def test_latency_panels_have_exemplars_and_targets() -> None:
    """Latency panels enable exemplars and draw the 50 ms / 100 ms targets as thresholds."""
    for name, dash in load_dashboards():
        for panel in iter_panels(dash["panels"]):
            if "latency" not in panel["title"] or "operation_duration" not in str(panel):
                continue
            assert all(t["exemplar"] for t in panel["targets"]), f"{name}: {panel['title']}"
            steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
            values = {s["value"] for s in steps}
            assert values & {0.05, 0.1}, f"{name}: {panel['title']}"
            style = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
            assert style != "off"


def test_loadtest_dashboard_selects_the_load_harness_job() -> None:
    """Every query of the load-test dashboard is filtered to job="chat-loadtest"."""
    dash = json.loads((ROOT / "dashboards" / "chat-storage-loadtest.json").read_text())
    for panel in iter_panels(dash["panels"]):
        for t in panel["targets"]:
            selectors = re.findall(r"\{[^}]*\}", t["expr"])
            assert selectors and all('job="chat-loadtest"' in s for s in selectors)


# -- PromQL -----------------------------------------------------------------------------


def test_promtool_check_rules_passes() -> None:
    """promtool check rules accepts monitoring/rules/*.yml."""
    assert RULE_FILES
    result = subprocess.run(
        [promtool(), "check", "rules", *map(str, RULE_FILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests_pass() -> None:
    """promtool test rules passes monitoring/tests/*.yml."""
    assert RULE_TESTS
    result = subprocess.run(
        [promtool(), "test", "rules", *map(str, RULE_TESTS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_firing_and_quiet() -> None:
    """Each alert appears in a promtool test where it fires and one where it must not."""
    fires: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {name for _file, name, _expr in rule_exprs() if not name.count(":")}
    assert alerts
    assert alerts <= fires, alerts - fires
    assert alerts <= quiet, alerts - quiet


def test_alerts_have_for_severity_and_annotations() -> None:
    """Every alert has for:, severity page|ticket, summary, description and a runbook anchor."""
    readme = (MONITORING / "README.md").read_text()
    anchors = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", readme, flags=re.M)
    }
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                if "alert" not in rule:
                    continue
                name = rule["alert"]
                assert rule.get("for"), name
                assert rule["labels"]["severity"] in {"page", "ticket"}, name
                ann = rule["annotations"]
                assert ann["summary"].strip(), name
                assert "$labels" in ann["description"] or "$value" in ann["description"], name
                url = ann["runbook_url"]
                assert url.startswith("monitoring/README.md#"), name
                assert url.split("#", 1)[1] in anchors, f"{name}: no README section {url}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    """Every dashboard query, Grafana variables substituted, passes promtool check rules."""
    exprs = dashboard_exprs()
    assert exprs
    rules = [
        {"record": f"dashboard:expr_{i}:check", "expr": substitute_grafana_variables(expr)}
        for i, (_name, _title, expr) in enumerate(exprs)
    ]
    path = tmp_path / "dashboard_exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_referenced_metric_exists() -> None:
    """Each metric in dashboards and rules is exposed by us, by the exporter, or recorded."""
    known = (
        our_exposition_names()
        | exporter_query_metric_names()
        | EXPORTER_DEFAULT_METRICS
        | PROMETHEUS_METRICS
        | recording_rule_names()
    )
    missing = {
        (source, title, name)
        for source, title, expr in dashboard_exprs() + rule_exprs()
        for name in metric_names(expr)
        if name not in known
    }
    assert not missing, sorted(missing)


def test_metric_name_scan_finds_selectors_only() -> None:
    """The lexical metric-name scan ignores functions, labels, groupings and strings."""
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{le="0.1", x=~"b.*"}[5m])))'
        " / on (job) group_left b_total and c:rec:ratio offset 5m > bool 0"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c:rec:ratio"}


# -- compose and exporter queries ------------------------------------------------------------


def test_compose_file_parses_and_mounted_paths_exist() -> None:
    """docker-compose.yml is YAML and every host path it bind-mounts exists in the repo."""
    compose = yaml.safe_load((MONITORING / "docker-compose.yml").read_text())
    assert {"prometheus", "grafana", "postgres-exporter"} <= set(compose["services"])
    mounts = 0
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                assert (MONITORING / source).resolve().exists(), f"{name}: {volume}"
                mounts += 1
    assert mounts >= 5


def test_prometheus_config_scrapes_the_three_jobs_and_loads_the_rules() -> None:
    """prometheus.yml scrapes chat-app, chat-loadtest (:9464) and postgres, and loads the rules."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {c["job_name"]: c for c in config["scrape_configs"]}
    assert set(jobs) == {"chat-app", "chat-loadtest", "postgres"}
    assert jobs["chat-loadtest"]["static_configs"][0]["targets"] == ["127.0.0.1:9464"]
    assert jobs["postgres"]["static_configs"][0]["targets"] == ["127.0.0.1:9187"]
    assert {MONITORING / f for f in config["rule_files"]} == set(RULE_FILES)


def test_exporter_queries_file_is_well_formed() -> None:
    """Each namespace has a query and typed, described columns with at least one metric."""
    spec = yaml.safe_load(QUERIES_FILE.read_text())
    assert {"pg_chat_table_size", "pg_chat_table", "pg_chat_index", "pg_chat_statements"} <= set(
        spec
    )
    for namespace, query in spec.items():
        assert query["query"].strip(), namespace
        usages = []
        for metric in query["metrics"]:
            ((column, opts),) = metric.items()
            assert opts["usage"] in {"LABEL", "GAUGE", "COUNTER"}, f"{namespace}.{column}"
            assert opts["description"].strip(), f"{namespace}.{column}"
            usages.append(opts["usage"])
        assert set(usages) - {"LABEL"}, namespace


async def test_exporter_queries_run_against_postgres(database_url: str) -> None:
    """Each exporter query runs on the migrated database and returns its declared columns."""
    spec = yaml.safe_load(QUERIES_FILE.read_text())
    conn = await asyncpg.connect(database_url)
    try:
        for namespace, query in spec.items():
            declared = [next(iter(m)) for m in query["metrics"]]
            tx = conn.transaction()
            await tx.start()
            try:
                if namespace == "pg_chat_statements":
                    await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                statement = await conn.prepare(query["query"])
                assert [a.name for a in statement.get_attributes()] == declared, namespace
                try:
                    rows = await statement.fetch()
                except asyncpg.ObjectNotInPrerequisiteStateError:
                    # pg_stat_statements not in shared_preload_libraries: parsed only.
                    assert namespace == "pg_chat_statements"
                    continue
                if namespace != "pg_chat_statements":
                    relnames = {r["relname"] for r in rows}
                    assert relnames == {"conversations", "messages"}, namespace
            finally:
                await tx.rollback()
    finally:
        await conn.close()


# -- rate windows against scrape and cache periods ---------------------------------------

DATASOURCES = ROOT / "dashboards" / "provisioning" / "datasources"
RANGE_SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*(?:\{[^}]*\})?\s*\[([^\]:]+)\]")
DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(duration: str) -> float:
    """A Prometheus duration ("15s", "1h30m") in seconds."""
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * DURATION_UNITS[u] for n, u in parts)


def grafana_min_rate_interval() -> float:
    """The least $__rate_interval can be: four times the datasource's scrape interval."""
    (source,) = (
        d
        for path in DATASOURCES.glob("*.y*ml")
        for d in yaml.safe_load(path.read_text())["datasources"]
        if d["type"] == "prometheus"
    )
    return 4 * seconds(source["jsonData"]["timeInterval"])


def slowest_period(metric: str) -> float:
    """The longest time a sample of ``metric`` can stay unchanged for lack of a refresh:
    its job's scrape interval, the exporter query's cache period, or the rule interval."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    default = seconds(config["global"]["scrape_interval"])
    scrape = {
        c["job_name"]: seconds(c.get("scrape_interval", config["global"]["scrape_interval"]))
        for c in config["scrape_configs"]
    }
    if ":" in metric:  # a recording rule
        return seconds(config["global"].get("evaluation_interval", "1m"))
    if metric.startswith("pg_"):
        cache = 0.0
        for namespace, spec in yaml.safe_load(QUERIES_FILE.read_text()).items():
            if metric.startswith(namespace + "_"):
                cache = max(cache, float(spec.get("cache_seconds", 0)))
        return max(scrape["postgres"], cache)
    if metric.startswith("chat_storage_"):
        return max(scrape["chat-app"], scrape["chat-loadtest"])
    return default


def test_every_rate_window_is_at_least_twice_the_scrape_and_cache_period() -> None:
    """No panel or rule takes a rate over a window shorter than two refreshes of its metric."""
    grafana = grafana_min_rate_interval()
    too_short, checked = [], 0
    for source, title, expr in dashboard_exprs() + rule_exprs():
        for metric, window in RANGE_SELECTOR.findall(expr):
            length = grafana if window.startswith("$") else seconds(window)
            period = slowest_period(metric)
            checked += 1
            if length < 2 * period:
                too_short.append(
                    f"{source}: {title}: {metric}[{window}] = {length:g}s < 2 x {period:g}s"
                )
    assert checked
    assert not too_short, "\n".join(too_short)


def test_exporter_queries_are_not_cached() -> None:
    """No exporter query sets cache_seconds: each is cheap enough for every scrape."""
    spec = yaml.safe_load(QUERIES_FILE.read_text())
    assert {ns: q["cache_seconds"] for ns, q in spec.items() if q.get("cache_seconds")} == {}


def test_panels_that_need_pg_stat_statements_say_so() -> None:
    """A panel reading pg_stat_statements names the setting and the README section."""
    readme = (MONITORING / "README.md").read_text()
    assert re.search(r"^## pg_stat_statements$", readme, flags=re.M)
    for section in ("Neon", "Self-managed", "shared_preload_libraries", "CREATE EXTENSION"):
        assert section in readme.split("## pg_stat_statements", 1)[1], section
    panels = [
        (name, panel)
        for name, dash in load_dashboards()
        for panel in iter_panels(dash["panels"])
        if any("pg_chat_statements" in t["expr"] for t in panel["targets"])
    ]
    assert panels
    for name, panel in panels:
        description = panel["description"]
        assert "shared_preload_libraries" in description, f"{name}: {panel['title']}"
        assert "CREATE EXTENSION pg_stat_statements" in description, f"{name}: {panel['title']}"
        assert "monitoring/README.md#pg_stat_statements" in description, f"{name}: {panel['title']}"

"""Generate the Grafana dashboards in this folder: ``python dashboards/build.py``.

The JSON files are the artefacts Grafana provisions; this script is their source
so the panels stay consistent (datasource variable, units, descriptions,
$__rate_interval). Edit here, regenerate, commit both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
DUR = "chat_storage_operation_duration_seconds"
# Operations with a latency objective and their bucket edge (seconds).
TARGETS = {"add_message": "0.05", "get_history": "0.1"}
# The server setting the top-statements panels depend on, said where they are read.
NEEDS_STATEMENTS = (
    "Needs the server setting shared_preload_libraries = 'pg_stat_statements' (a restart) "
    "and CREATE EXTENSION pg_stat_statements in this database; without them this panel "
    "is empty (monitoring/README.md#pg_stat_statements: Neon and self-managed servers)."
)


def target(
    expr: str, legend: str, ref: str, *, exemplar: bool = False, instant: bool = False
) -> dict[str, Any]:
    t: dict[str, Any] = {
        "datasource": DS,
        "expr": expr,
        "legendFormat": legend,
        "refId": ref,
        "exemplar": exemplar,
    }
    if instant:
        t.update(instant=True, range=False, format="table")
    return t


def panel(
    title: str,
    description: str,
    unit: str,
    queries: list[tuple[str, str]],
    *,
    kind: str = "timeseries",
    exemplar: bool = False,
    thresholds: list[tuple[float, str]] | None = None,
    instant: bool = False,
    w: int = 12,
    h: int = 8,
) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": color, "value": value} for value, color in thresholds or []]
    defaults: dict[str, Any] = {
        "unit": unit,
        "thresholds": {"mode": "absolute", "steps": steps},
    }
    if kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 0,
            "showPoints": "never",
            "thresholdsStyle": {"mode": "dashed" if thresholds else "off"},
        }
    p: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": {},
        "targets": [
            target(expr, legend, chr(ord("A") + i), exemplar=exemplar, instant=instant)
            for i, (expr, legend) in enumerate(queries)
        ],
        "_size": (w, h),
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "list", "placement": "bottom"},
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    return p


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    x = y = row_h = 0
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_size")
        if x + w > 24:
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x, row_h = x + w, max(row_h, h)
    return panels


def variable_datasource() -> dict[str, Any]:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
    }


def variable_query(name: str, query: str, *, multi: bool = True) -> dict[str, Any]:
    return {
        "name": name,
        "label": name,
        "type": "query",
        "datasource": DS,
        "query": {"query": query, "refId": f"{name}-var"},
        "definition": query,
        "refresh": 2,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "hide": 0,
    }


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[dict[str, Any]],
    variables: list[dict[str, Any]],
    tags: list[str],
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": tags,
        "editable": False,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-6h", "to": "now"},
        "refresh": "30s",
        "timezone": "utc",
        "templating": {"list": [variable_datasource(), *variables]},
        "annotations": {"list": []},
        "links": [],
        "panels": layout(panels),
    }


def latency_panels(sel: str) -> list[dict[str, Any]]:
    """Latency, share under target and throughput for the series matching ``sel``."""
    ok = f'{sel}, outcome="ok"'
    out = []
    for q in ("0.5", "0.95", "0.99"):
        pct = f"p{round(float(q) * 100)}"
        out.append(
            panel(
                f"{pct} latency by operation",
                f"{pct} of successful ChatStore calls per operation (histogram_quantile over "
                "the operation histogram). Dashed lines: the 50 ms add_message and 100 ms "
                "get_history targets. Exemplars link to traces.",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (operation, le) "
                        f"(rate({DUR}_bucket{{{ok}}}[$__rate_interval])))",
                        "{{operation}}",
                    )
                ],
                exemplar=True,
                thresholds=[(0.05, "orange"), (0.1, "red")],
                w=8,
            )
        )
    for op, edge in TARGETS.items():
        ms = round(float(edge) * 1000)
        out.append(
            panel(
                f"{op} latency (target {ms} ms)",
                f"p50/p95/p99 of successful {op} calls; the dashed line is the {ms} ms target "
                f"(SLO: 99% under it). Exemplars link to traces.",
                "s",
                [
                    (
                        f"histogram_quantile({q}, sum by (le) (rate({DUR}_bucket"
                        f'{{{ok}, operation="{op}"}}[$__rate_interval])))',
                        f"p{p}",
                    )
                    for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99"))
                ],
                exemplar=True,
                thresholds=[(float(edge), "red")],
            )
        )
    out.append(
        panel(
            "Share of requests under target",
            "Fraction of successful add_message calls under 50 ms and get_history calls under "
            "100 ms, from the exact bucket edges (no interpolation). SLO: 99%.",
            "percentunit",
            [
                (
                    f'sum(rate({DUR}_bucket{{{ok}, operation="{op}", le="{edge}"}}'
                    f'[$__rate_interval])) / sum(rate({DUR}_count{{{ok}, operation="{op}"}}'
                    f"[$__rate_interval]))",
                    f"{op} < {round(float(edge) * 1000)} ms",
                )
                for op, edge in TARGETS.items()
            ],
            thresholds=[(0.99, "green")],
        )
    )
    out.append(
        panel(
            "Throughput by operation",
            "ChatStore calls per second by operation, successful and failed.",
            "ops",
            [
                (
                    f"sum by (operation) (rate({DUR}_count{{{sel}}}[$__rate_interval]))",
                    "{{operation}}",
                )
            ],
        )
    )
    return out


def overview() -> dict[str, Any]:
    sel = 'job=~"$job", operation=~"$operation"'
    inst = 'job=~"$job"'
    panels = latency_panels(sel)
    panels += [
        panel(
            "Errors by type",
            "Failed calls per second by operation and error class (includes validation "
            "rejects and not-found; server-side classes burn the error budget).",
            "ops",
            [
                (
                    f"sum by (operation, error_type) (rate(chat_storage_errors_total{{{sel}}}"
                    "[$__rate_interval]))",
                    "{{operation}} {{error_type}}",
                )
            ],
        ),
        panel(
            "Validation rejects and idempotent replays",
            "Calls refused before reaching the database, and add_message retries that "
            "returned an already stored message.",
            "ops",
            [
                (
                    f"sum by (error_type) (rate(chat_storage_validation_rejects_total{{{sel}}}"
                    "[$__rate_interval]))",
                    "reject {{error_type}}",
                ),
                (
                    f"sum(rate(chat_storage_idempotent_replays_total{{{inst}}}[$__rate_interval]))",
                    "idempotent replays",
                ),
            ],
        ),
        panel(
            "Pool: checked out vs capacity",
            "Connections checked out, idle and in overflow per instance, against "
            "pool_size + max_overflow (the most that can ever be checked out).",
            "short",
            [
                (
                    f"sum by (instance, state) (chat_storage_pool_connections{{{inst}}})",
                    "{{instance}} {{state}}",
                ),
                (
                    f"sum by (instance) (chat_storage_pool_size{{{inst}}}) + sum by (instance) "
                    f"(chat_storage_pool_max_overflow{{{inst}}})",
                    "{{instance}} capacity",
                ),
            ],
        ),
        panel(
            "Pool utilisation",
            "checked_out / (pool_size + max_overflow) per instance; ChatStoragePoolSaturated "
            "fires above 90% for 5 minutes.",
            "percentunit",
            [(f"chat_storage:pool_utilisation:ratio{{{inst}}}", "{{instance}}")],
            thresholds=[(0.9, "red")],
        ),
        panel(
            "Pool wait p95",
            "p95 time callers waited for a pooled connection (connecting included); "
            "ChatStoragePoolWaitHigh fires above 100 ms for 5 minutes.",
            "s",
            [
                (
                    "histogram_quantile(0.95, sum by (instance, le) (rate("
                    f"chat_storage_pool_wait_seconds_bucket{{{inst}}}[$__rate_interval])))",
                    "{{instance}}",
                )
            ],
            thresholds=[(0.1, "red")],
            w=8,
        ),
        panel(
            "New-connection time",
            "p50/p95 time to open a new database connection (TLS and authentication "
            "included). Frequent new connections mean the pool is churning.",
            "s",
            [
                (
                    f"histogram_quantile({q}, sum by (le) (rate("
                    f"chat_storage_pool_connect_seconds_bucket{{{inst}}}[$__rate_interval])))",
                    f"p{p}",
                )
                for q, p in (("0.5", "50"), ("0.95", "95"))
            ],
            w=8,
        ),
        panel(
            "Pool timeouts",
            "Callers that gave up waiting for a connection after pool_timeout (they failed "
            "with PoolTimeout). Any is bad.",
            "short",
            [
                (
                    "sum by (instance) (increase(chat_storage_pool_timeouts_total"
                    f"{{{inst}}}[$__rate_interval]))",
                    "{{instance}}",
                )
            ],
            thresholds=[(1, "red")],
            w=8,
        ),
    ]
    return dashboard(
        "chat-storage-overview",
        "Chat storage / Overview",
        "ChatStore latency against its objectives, throughput, errors and the connection pool.",
        panels,
        [
            variable_query("job", f"label_values({DUR}_count, job)"),
            variable_query("operation", f'label_values({DUR}_count{{job=~"$job"}}, operation)'),
        ],
        ["chat-storage"],
    )


def loadtest() -> dict[str, Any]:
    panels = latency_panels('job="chat-loadtest"')
    return dashboard(
        "chat-storage-loadtest",
        "Chat storage / Load test",
        'The overview\'s latency panels for the load harness only (job="chat-loadtest").',
        panels,
        [],
        ["chat-storage", "loadtest"],
    )


def postgres() -> dict[str, Any]:
    inst = 'instance=~"$instance"'
    panels = [
        panel(
            "Table size (total)",
            "pg_total_relation_size of conversations and messages: table, indexes and TOAST.",
            "bytes",
            [(f"sum by (relname) (pg_chat_table_size_total_bytes{{{inst}}})", "{{relname}}")],
            w=8,
        ),
        panel(
            "Table vs index size",
            "pg_relation_size (main fork) and pg_indexes_size per table.",
            "bytes",
            [
                (
                    f"sum by (relname) (pg_chat_table_size_table_bytes{{{inst}}})",
                    "{{relname}} table",
                ),
                (
                    f"sum by (relname) (pg_chat_table_size_index_bytes{{{inst}}})",
                    "{{relname}} indexes",
                ),
            ],
            w=8,
        ),
        panel(
            "Growth (bytes per hour)",
            "Trend of the total size per table over the last hour (deriv), in bytes per hour.",
            "bytes",
            [
                (
                    f"sum by (relname) (deriv(pg_chat_table_size_total_bytes{{{inst}}}"
                    "[1h])) * 3600",
                    "{{relname}}",
                )
            ],
            w=8,
        ),
        panel(
            "Index scans vs sequential scans",
            "Scans started per second on each table. Sequential scans on messages mean a "
            "query missed its index.",
            "ops",
            [
                (
                    f"sum by (relname) (rate(pg_chat_table_idx_scan{{{inst}}}[$__rate_interval]))",
                    "{{relname}} index",
                ),
                (
                    f"sum by (relname) (rate(pg_chat_table_seq_scan{{{inst}}}[$__rate_interval]))",
                    "{{relname}} seq",
                ),
            ],
        ),
        panel(
            "Scans per index",
            "Scans per second on each index of the two tables (pg_stat_user_indexes); "
            "an index flat at zero for weeks is a candidate to drop.",
            "ops",
            [
                (
                    f"sum by (relname, indexrelname) (rate(pg_chat_index_idx_scan{{{inst}}}"
                    "[$__rate_interval]))",
                    "{{indexrelname}}",
                )
            ],
        ),
        panel(
            "Dead tuples",
            "Estimated dead rows per table (n_dead_tup) and live rows for scale.",
            "short",
            [
                (f"sum by (relname) (pg_chat_table_n_dead_tup{{{inst}}})", "{{relname}} dead"),
                (f"sum by (relname) (pg_chat_table_n_live_tup{{{inst}}})", "{{relname}} live"),
            ],
        ),
        panel(
            "Time since last vacuum / analyze",
            "Seconds since the last VACUUM and ANALYZE of each table (manual or auto), and "
            "since the last autovacuum and autoanalyze (tables never vacuumed are not shown).",
            "s",
            [
                (
                    f"time() - (pg_chat_table_{column}_seconds{{{inst}}} > 0)",
                    f"{{{{relname}}}} {legend}",
                )
                for column, legend in (
                    ("last_vacuum_any", "vacuum"),
                    ("last_analyze_any", "analyze"),
                    ("last_autovacuum", "autovacuum"),
                    ("last_autoanalyze", "autoanalyze"),
                )
            ],
        ),
        panel(
            "Top statements by total time",
            "The 20 statements of this database with the most execution time per second "
            f"(pg_stat_statements; look the text up by queryid). {NEEDS_STATEMENTS}",
            "s",
            [
                (
                    f"topk(20, sum by (queryid) (rate(pg_chat_statements_total_exec_seconds"
                    f"{{{inst}}}[$__rate_interval])))",
                    "{{queryid}}",
                )
            ],
        ),
        panel(
            "Top statements by mean time",
            "The 20 statements with the highest mean execution time (pg_stat_statements, "
            f"since the last reset). {NEEDS_STATEMENTS}",
            "s",
            [
                (
                    f"topk(20, max by (queryid) (pg_chat_statements_mean_exec_seconds{{{inst}}}))",
                    "{{queryid}}",
                )
            ],
            kind="table",
            instant=True,
        ),
        panel(
            "Connections by state",
            "Server connections by state (pg_stat_activity_count from the exporter's "
            "defaults). Many 'idle in transaction' hold locks and pool slots.",
            "short",
            [(f"sum by (state) (pg_stat_activity_count{{{inst}}})", "{{state}}")],
        ),
        panel(
            "Transactions",
            "Commits and rollbacks per second across databases (pg_stat_database).",
            "ops",
            [
                (f"sum(rate(pg_stat_database_xact_commit{{{inst}}}[$__rate_interval]))", "commit"),
                (
                    f"sum(rate(pg_stat_database_xact_rollback{{{inst}}}[$__rate_interval]))",
                    "rollback",
                ),
            ],
        ),
    ]
    return dashboard(
        "chat-storage-postgres",
        "Chat storage / PostgreSQL",
        "Size, scans, vacuum and top statements of the conversations and messages tables.",
        panels,
        [variable_query("instance", 'label_values(pg_up{job="postgres"}, instance)')],
        ["chat-storage", "postgres"],
    )


def rendered() -> dict[str, str]:
    """Each dashboard's file name and the exact text this script writes for it."""
    return {
        f"{name}.json": json.dumps(build(), indent=2) + "\n"
        for name, build in (
            ("chat-storage-overview", overview),
            ("chat-storage-postgres", postgres),
            ("chat-storage-loadtest", loadtest),
        )
    }


def main() -> None:
    for name, text in rendered().items():
        path = HERE / name
        path.write_text(text)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

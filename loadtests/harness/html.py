"""``report.html``: one self-contained page per run, capacity run or comparison.

Charts are embedded (base64 PNG), so the file can be mailed or attached to a
release ticket alone; Locust's own ``locust.html`` and the CSVs stay beside it
and are linked.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child, th:nth-child(2), td:nth-child(2) { text-align: left; }
.pass, .better, .same { color: #176b2c; font-weight: bold; }
.fail, .worse, .refused { color: #b00020; font-weight: bold; }
.verdict { font-size: 1.6em; }
img { max-width: 100%; border: 1px solid #eee; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
"""


_VERDICTS = ("pass", "fail", "better", "same", "worse")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "PASS" if value else "FAIL"
    if isinstance(value, float):
        return f"{value:g}"
    return html.escape(str(value))


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """An HTML table of ``rows`` (dicts) over ``columns``."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cells = []
        for c in columns:
            value = row.get(c)
            cls = ""
            if isinstance(value, str) and value.lower() in _VERDICTS:
                cls = f' class="{value.lower()}"'
            elif isinstance(value, bool):
                cls = f' class="{"pass" if value else "fail"}"'
            cells.append(f"<td{cls}>{_cell(value)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def image(path: Path) -> str:
    """``path`` as an embedded image (nothing when it is missing)."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<p><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"></p>'


def page(title: str, verdict: str, sections: Sequence[str]) -> str:
    """A whole page: the verdict first, then the sections."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="verdict {html.escape(verdict.lower())}">{html.escape(verdict.upper())}</p>'
        + "".join(sections)
        + "</body></html>\n"
    )


def context_section(summary: Mapping[str, Any]) -> str:
    """Settings, database, machine, version and commit, as tables."""
    env = dict(summary.get("environment", {}))
    machine = env.pop("machine", {})
    settings = summary.get("settings", {})
    flat = [{"setting": k, "value": json.dumps(v)} for k, v in settings.items()]
    where = [
        {"what": "database", "value": summary.get("database")},
        {"what": "started at", "value": summary.get("started_at")},
        {"what": "run id", "value": summary.get("run_id")},
    ]
    where += [{"what": k, "value": json.dumps(v)} for k, v in env.items()]
    where += [{"what": f"machine {k}", "value": v} for k, v in machine.items()]
    return (
        "<h2>Settings</h2>"
        + table(flat, ["setting", "value"])
        + "<h2>Where it ran</h2>"
        + table(where, ["what", "value"])
    )


def write_run_report(out: Path, summary: Mapping[str, Any], charts: Sequence[str]) -> Path:
    """``out/report.html`` for a ``run``."""
    columns = ["driver", "name", "count", "failures", "p50_ms", "p95_ms", "p99_ms"]
    columns += ["target_p95_ms", "pass"]
    rows = [dict(op) for op in summary["operations"]]
    facts = (
        f"<p>{summary['users']} users, mode {html.escape(str(summary['mode']))}, "
        f"{summary.get('throughput_ops_s')} operations/s over {summary['duration_s']} s "
        f"measured (after {summary['warmup_s']} s warm-up); {summary.get('task_errors', 0)} "
        "task errors. Percentiles: nearest rank over every request of the window.</p>"
    )
    workers = summary.get("workers")
    worker_html = ""
    if workers:
        worker_rows = [{"worker": k, **v} for k, v in workers.items()]
        worker_html = "<h2>Workers</h2>" + table(
            worker_rows, ["worker", "requests", "seeded_users"]
        )
    files = (
        '<h2>Files</h2><p><a href="locust.html">locust.html</a> (Locust\'s own report), '
        '<a href="summary.json">summary.json</a>, <a href="locust_stats.csv">locust_stats.csv'
        '</a>, <a href="locust_stats_history.csv">locust_stats_history.csv</a>, '
        '<a href="samples.csv.gz">samples.csv.gz</a> (every request; <code>python -m '
        "loadtests compare</code> reads it)</p>"
    )
    sections = [facts, "<h2>Operations (p95 judged)</h2>", table(rows, columns), worker_html]
    sections += ["<h2>Latency over time</h2>"] + [image(out / c) for c in charts]
    sections += [context_section(summary), files]
    path = out / "report.html"
    title = f"Load test {summary.get('started_at', '')}"
    path.write_text(page(title, summary["verdict"], sections))
    return path

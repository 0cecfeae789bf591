"""Percentiles, the verdict, the printed table, summary.json and the latency chart.

Every number comes from the raw samples the locustfile writes (one line per
request: wall-clock time, request type, name, milliseconds, failed), cut to the
measured window (after the warm-up reset, before the stop). Percentiles are
nearest-rank over all samples, not Locust's rounded buckets.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loadtests.core.stats import percentile
from loadtests.core.workload import OPERATIONS, RAW, REQUIRED, STORE

PASS, FAIL, NO_SAMPLES = "pass", "fail", "no samples"
#: Every request of the measured window, kept in the report directory so that
#: ``compare`` can resample them.
SAMPLES_FILE = "samples.csv.gz"


@dataclass(frozen=True, slots=True)
class Sample:
    """One request: when it ended (epoch s), path, operation, duration, failure."""

    t: float
    kind: str
    name: str
    ms: float
    failed: bool
    source: str = ""  # which process: "local", or "w<index>" for a Locust worker


@dataclass(frozen=True, slots=True)
class OperationStats:
    """One row of the report."""

    name: str
    driver: str
    count: int
    failures: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    target_p95_ms: float | None

    @property
    def status(self) -> str:
        """``pass`` (samples, no failure, p95 within any target), ``fail``, or
        ``no samples``: nothing measured is never a pass, and fails the run
        for a required operation."""
        if self.failures:
            return FAIL
        if self.count == 0 or self.p95_ms is None:
            return FAIL if self.name in REQUIRED else NO_SAMPLES
        if self.target_p95_ms is not None and self.p95_ms > self.target_p95_ms:
            return FAIL
        return PASS

    @property
    def passed(self) -> bool:
        """True only for a row that was measured and met its target."""
        return self.status == PASS

    def as_json(self) -> dict[str, Any]:
        """The summary.json form."""
        return {
            "name": self.name,
            "driver": self.driver,
            "count": self.count,
            "failures": self.failures,
            "p50_ms": _round(self.p50_ms),
            "p95_ms": _round(self.p95_ms),
            "p99_ms": _round(self.p99_ms),
            "target_p95_ms": self.target_p95_ms,
            "pass": None if self.status == NO_SAMPLES else self.passed,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summarize(
    samples: Iterable[Sample],
    targets: Mapping[str, float | None],
    drivers: Sequence[str] = (STORE,),
) -> list[OperationStats]:
    """One row per driver and operation (in OPERATIONS order), zero-count rows included."""
    durations: dict[tuple[str, str], list[float]] = {}
    failures: dict[tuple[str, str], int] = {}
    for s in samples:
        key = (s.kind, s.name)
        durations.setdefault(key, []).append(s.ms)
        if s.failed:
            failures[key] = failures.get(key, 0) + 1
    rows = []
    for driver in drivers:
        for name in OPERATIONS:
            values = sorted(durations.get((driver, name), []))
            rows.append(
                OperationStats(
                    name=name,
                    driver=driver,
                    count=len(values),
                    failures=failures.get((driver, name), 0),
                    p50_ms=percentile(values, 50),
                    p95_ms=percentile(values, 95),
                    p99_ms=percentile(values, 99),
                    target_p95_ms=targets.get(name),
                )
            )
    return rows


def verdict(rows: Iterable[OperationStats]) -> str:
    """``fail`` when a row fails (a required operation without samples does),
    else ``pass``; a row without samples is not judged."""
    return FAIL if any(row.status == FAIL for row in rows) else PASS


def format_table(rows: Sequence[OperationStats]) -> str:
    """The table printed at the end of a run."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    header = ("driver", "operation", "count", "fail", "p50 ms", "p95 ms", "p99 ms", "target", "")
    lines = [header]
    for r in rows:
        target = "-" if r.target_p95_ms is None else f"<{r.target_p95_ms:g}"
        lines.append(
            (
                r.driver,
                r.name,
                str(r.count),
                str(r.failures),
                ms(r.p50_ms),
                ms(r.p95_ms),
                ms(r.p99_ms),
                target,
                r.status.upper(),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            cell.ljust(w) if i < 2 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


# -- samples ---------------------------------------------------------------------------


def read_samples(directory: Path, start: float, end: float | None) -> list[Sample]:
    """Every sample in ``directory``'s samples-*.csv that ended within [start, end]."""
    samples = []
    for path in sorted(directory.glob("samples-*.csv")):
        source = path.stem.removeprefix("samples-")
        with path.open(newline="") as f:
            for t, kind, name, ms, failed in csv.reader(f):
                when = float(t)
                if when < start or (end is not None and when > end):
                    continue
                samples.append(Sample(when, kind, name, float(ms), failed == "1", source))
    samples.sort(key=lambda s: s.t)
    return samples


def write_samples(samples: Sequence[Sample], start: float, path: Path) -> None:
    """The measured window's samples, gzipped CSV: seconds after the window's start,
    driver, operation, ms, failed (0/1), source process."""
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(("t_s", "driver", "operation", "ms", "failed", "source"))
        for s in samples:
            w.writerow(
                (f"{s.t - start:.4f}", s.kind, s.name, f"{s.ms:.4f}", int(s.failed), s.source)
            )


def load_samples(path: Path) -> list[Sample]:
    """The samples :func:`write_samples` wrote (times relative to the window's start)."""
    with gzip.open(path, "rt", newline="") as f:
        reader = csv.reader(f)
        next(reader, None)
        return [
            Sample(float(t), kind, name, float(ms), failed == "1", source)
            for t, kind, name, ms, failed, source in reader
        ]


def terminal_summary(rows: Sequence[OperationStats], summary: Mapping[str, Any], out: Path) -> str:
    """What a run prints at the end: the table, the context in a few lines, the verdict.

    Fits one screen (under 25 lines for one driver).
    """
    env = summary.get("environment", {})
    rtt = env.get("rtt_ms", {})
    lines = [format_table(rows), ""]
    lines.append(
        f"{summary['users']} users, {summary['mode']}, {summary['throughput_ops_s']} ops/s "
        f"over {summary['duration_s']}s; round trip p50 {rtt.get('p50', '-')} ms; "
        f"commit {str(env.get('commit', '?'))[:12]}"
    )
    if summary.get("workers"):
        parts = [f"w{k}: {v['requests']} req" for k, v in summary["workers"].items()]
        lines.append(
            f"workers: {', '.join(parts)}; seeded users shared: "
            f"{summary.get('seeded_users_shared_by_workers', 0)}"
        )
    if summary.get("task_errors"):
        lines.append(f"{summary['task_errors']} exception(s) inside Locust tasks: see locust.html")
    unmeasured = [r.name for r in rows if r.status == NO_SAMPLES]
    if unmeasured:
        lines.append(f"no samples (not judged): {', '.join(unmeasured)}")
    lines.append(f"verdict: {summary['verdict'].upper()}   (report: {out / 'report.html'})")
    return "\n".join(lines)


def series(
    samples: Sequence[Sample], start: float, interval: float = 2.0
) -> dict[tuple[str, str], list[tuple[float, float, float, float]]]:
    """Per (driver, operation): (seconds since start, p50, p95, p99) for each interval."""
    buckets: dict[tuple[str, str], dict[int, list[float]]] = {}
    for s in samples:
        slot = int((s.t - start) // interval)
        buckets.setdefault((s.kind, s.name), {}).setdefault(slot, []).append(s.ms)
    out: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for key, slots in buckets.items():
        points = []
        for slot in sorted(slots):
            values = sorted(slots[slot])
            p50, p95, p99 = (percentile(values, q) for q in (50, 95, 99))
            assert p50 is not None and p95 is not None and p99 is not None
            points.append(((slot + 1) * interval, p50, p95, p99))
        out[key] = points
    return out


def chart(
    samples: Sequence[Sample],
    start: float,
    targets: Mapping[str, float | None],
    path: Path,
    drivers: Sequence[str] = (STORE,),
    interval: float = 2.0,
    title: str = "",
) -> Path:
    """A PNG of p50/p95/p99 over time, one panel per operation, target lines drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = series(samples, start, interval)
    fig, axes = plt.subplots(len(OPERATIONS), 1, figsize=(10, 2.6 * len(OPERATIONS)), sharex=True)
    styles = {STORE: "-", RAW: ":"}
    colors = {"p50": "tab:green", "p95": "tab:orange", "p99": "tab:red"}
    for ax, name in zip(axes, OPERATIONS, strict=True):
        for driver in drivers:
            points = data.get((driver, name), [])
            if not points:
                continue
            xs = [p[0] for p in points]
            for i, label in enumerate(("p50", "p95", "p99"), start=1):
                ax.plot(
                    xs,
                    [p[i] for p in points],
                    styles.get(driver, "-"),
                    color=colors[label],
                    label=f"{label} ({driver})" if len(drivers) > 1 else label,
                    linewidth=1.2,
                )
        target = targets.get(name)
        if target is not None:
            ax.axhline(
                target, color="black", linestyle="--", linewidth=1, label=f"target {target:g} ms"
            )
        ax.set_title(name, fontsize=10)
        log_scale(ax)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1].set_xlabel(f"seconds after warm-up ({interval:g} s intervals)")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_scale(ax: Any) -> None:
    """A log latency axis with plain millisecond labels: a 2 ms p95 and a 100 ms
    target are both readable on it (a linear axis squashes the one under the other)."""
    from matplotlib.ticker import FuncFormatter, LogLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_ylabel("ms (log)")
    ax.grid(True, which="both", alpha=0.3)

"""``python -m loadtests compare A B``: run B (this release) against run A (the last).

For each driver and operation: p50/p95/p99 of both runs and B - A with a 95 %
confidence interval from a percentile bootstrap over the per-request samples
each run keeps (``samples.csv.gz``): each run is resampled with replacement
(``--resamples`` times, fixed seed), the percentile taken (nearest rank, as the
run reports it) and the differences' 2.5th and 97.5th percentiles are the
interval. The p95 decides the verdict:

* **worse**: the whole interval lies above the threshold, max(``--threshold-pct``
  of A's p95, ``--threshold-ms``); or B has failed requests where A had none;
* **better**: the whole interval lies below minus the threshold;
* **same**: otherwise (no change beyond the threshold shown at 95 %).

An operation with fewer than ``MIN_SAMPLES`` requests in either run is not
judged. Throughput and errors are shown beside it.

Capacity reports (``python -m loadtests capacity``) compare knee against knee:
worse when B's knee serves fewer operations per second than A's beyond the
percentage threshold, better when more.

Runs whose settings differ (users, mode, rate, weights, driver, pool, seed
size, targets, database kind) are refused, exit 2, unless ``--force``.

Exit status: 0 no operation worse, 1 at least one worse, 2 not compared.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.core.options import at_least, positive
from loadtests.core.workload import OPERATIONS
from loadtests.harness import html, report

ROOT = Path(__file__).resolve().parents[2]
MIN_SAMPLES = 20
QUANTILES = (50, 95, 99)
WORSE, SAME, BETTER, NOT_JUDGED = "worse", "same", "better", "not judged"


class CompareError(RuntimeError):
    """The two reports cannot be compared (exit status 2)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``compare``'s options."""
    parser.add_argument("baseline", type=Path, help="report directory of the last release (A)")
    parser.add_argument("candidate", type=Path, help="report directory of this release (B)")
    parser.add_argument(
        "--threshold-pct",
        type=at_least(0.0),
        default=10.0,
        help="p95 change that counts, percent of A's p95 (10)",
    )
    parser.add_argument(
        "--threshold-ms",
        type=at_least(0.0),
        default=1.0,
        help="and at least this many ms: below it is noise at low latency (1)",
    )
    parser.add_argument(
        "--resamples", type=at_least(100), default=1000, help="bootstrap resamples (1000)"
    )
    parser.add_argument(
        "--force", action="store_true", help="compare even when the runs' settings differ"
    )
    parser.add_argument(
        "--out", type=Path, help="where to write compare.json, .png, report.html "
        "(default reports/compare-<UTC time>)"
    )  # fmt: skip
    parser.add_argument("--confidence", type=positive, default=95.0, help="interval, percent (95)")


def load_summary(directory: Path) -> dict[str, Any]:
    """A report directory's summary.json.

    Raises:
        CompareError: there is none, or it is not JSON.
    """
    path = directory / "summary.json"
    try:
        summary: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise CompareError(f"{directory}: no summary.json (not a report directory)") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{path}: not JSON ({exc})") from None
    return summary


def settings_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The settings that differ, one ``name: A vs B`` line each.

    Raises:
        CompareError: a report predates the recorded settings.
    """
    sa, sb = a.get("settings"), b.get("settings")
    if sa is None or sb is None:
        raise CompareError(
            "a report has no settings (made before compare existed): re-run it, or --force"
        )
    keys = sorted(set(sa) | set(sb))
    return [
        f"{k}: {json.dumps(sa.get(k))} vs {json.dumps(sb.get(k))}"
        for k in keys
        if sa.get(k) != sb.get(k)
    ]


def nearest_rank(sorted_values: np.ndarray[Any, Any], q: float) -> float:
    """Nearest-rank percentile of already sorted values (as the run reports it)."""
    n = sorted_values.shape[-1]
    return float(sorted_values[..., max(0, math.ceil(q / 100 * n) - 1)])


def bootstrap_differences(
    a: np.ndarray[Any, Any],
    b: np.ndarray[Any, Any],
    resamples: int,
    rng: np.random.Generator,
) -> dict[int, np.ndarray[Any, Any]]:
    """Per quantile: ``resamples`` bootstrap values of percentile(B) - percentile(A)."""

    def draws(values: np.ndarray[Any, Any]) -> dict[int, np.ndarray[Any, Any]]:
        n = values.size
        ranks = [max(0, math.ceil(q / 100 * n) - 1) for q in QUANTILES]
        out: dict[int, list[np.ndarray[Any, Any]]] = {q: [] for q in QUANTILES}
        chunk = max(1, 2_000_000 // n)
        done = 0
        while done < resamples:
            size = min(chunk, resamples - done)
            picked = values[rng.integers(0, n, size=(size, n))]
            picked.partition(ranks, axis=1)
            for q, k in zip(QUANTILES, ranks, strict=True):
                out[q].append(picked[:, k])
            done += size
        return {q: np.concatenate(v) for q, v in out.items()}

    da, db = draws(a), draws(b)
    return {q: db[q] - da[q] for q in QUANTILES}


@dataclass
class Row:
    """One operation of the comparison."""

    driver: str
    name: str
    count_a: int
    count_b: int
    failures_a: int
    failures_b: int
    a: dict[int, float | None]
    b: dict[int, float | None]
    diff: dict[int, float | None]
    ci: dict[int, tuple[float, float] | None]
    threshold_ms: float | None
    verdict: str

    def as_json(self) -> dict[str, Any]:
        """The compare.json form."""

        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        out: dict[str, Any] = {
            "driver": self.driver,
            "name": self.name,
            "count": [self.count_a, self.count_b],
            "failures": [self.failures_a, self.failures_b],
        }
        for q in QUANTILES:
            ci = self.ci[q]
            out[f"p{q}_ms"] = [r(self.a[q]), r(self.b[q])]
            out[f"p{q}_diff_ms"] = r(self.diff[q])
            out[f"p{q}_diff_ci_ms"] = None if ci is None else [r(ci[0]), r(ci[1])]
        out["threshold_ms"] = r(self.threshold_ms)
        out["verdict"] = self.verdict
        return out


def compare_samples(
    a: list[report.Sample],
    b: list[report.Sample],
    *,
    threshold_pct: float,
    threshold_ms: float,
    resamples: int,
    confidence: float = 95.0,
    seed: int = 0,
) -> list[Row]:
    """One row per driver and operation present in either run."""
    rng = np.random.default_rng(seed)
    tail = (100 - confidence) / 2

    def group(samples: list[report.Sample]) -> dict[tuple[str, str], list[report.Sample]]:
        out: dict[tuple[str, str], list[report.Sample]] = {}
        for s in samples:
            out.setdefault((s.kind, s.name), []).append(s)
        return out

    ga, gb = group(a), group(b)
    drivers = sorted({k[0] for k in ga} | {k[0] for k in gb})
    rows = []
    for driver in drivers:
        for name in OPERATIONS:
            sa, sb = ga.get((driver, name), []), gb.get((driver, name), [])
            if not sa and not sb:
                continue
            va = np.sort(np.array([s.ms for s in sa], dtype=float))
            vb = np.sort(np.array([s.ms for s in sb], dtype=float))
            pa = {q: nearest_rank(va, q) if va.size else None for q in QUANTILES}
            pb = {q: nearest_rank(vb, q) if vb.size else None for q in QUANTILES}
            diff: dict[int, float | None] = {
                q: None if pa[q] is None or pb[q] is None else pb[q] - pa[q]  # type: ignore[operator]
                for q in QUANTILES
            }
            ci: dict[int, tuple[float, float] | None] = dict.fromkeys(QUANTILES)
            fa, fb = sum(s.failed for s in sa), sum(s.failed for s in sb)
            threshold = None
            verdict = NOT_JUDGED
            if va.size >= MIN_SAMPLES and vb.size >= MIN_SAMPLES:
                boot = bootstrap_differences(va, vb, resamples, rng)
                for q in QUANTILES:
                    low, high = np.percentile(boot[q], [tail, 100 - tail])
                    ci[q] = (float(low), float(high))
                p95a = pa[95]
                assert p95a is not None
                threshold = max(threshold_pct / 100 * p95a, threshold_ms)
                low, high = ci[95]  # type: ignore[misc]
                if low > threshold or (fb > 0 and fa == 0):
                    verdict = WORSE
                elif high < -threshold:
                    verdict = BETTER
                else:
                    verdict = SAME
            elif fb > 0 and fa == 0:
                verdict = WORSE
            rows.append(
                Row(driver, name, int(va.size), int(vb.size), fa, fb, pa, pb, diff, ci,
                    threshold, verdict)
            )  # fmt: skip
    return rows


def format_rows(rows: list[Row]) -> str:
    """The terminal table: p50/p95/p99 of A and B, p95 difference and its interval."""

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    header = ("driver", "operation", "n A", "n B", "err A/B", "p50 A>B", "p95 A", "p95 B",
              "p95 B-A [95% CI]", "p99 A>B", "thr", "verdict")  # fmt: skip
    lines = [header]
    for r in rows:
        ci = r.ci[95]
        diff = (
            "-"
            if r.diff[95] is None
            else f"{r.diff[95]:+.2f}" + ("" if ci is None else f" [{ci[0]:+.2f}, {ci[1]:+.2f}]")
        )
        lines.append(
            (r.driver, r.name, str(r.count_a), str(r.count_b), f"{r.failures_a}/{r.failures_b}",
             f"{ms(r.a[50])}>{ms(r.b[50])}", ms(r.a[95]), ms(r.b[95]), diff,
             f"{ms(r.a[99])}>{ms(r.b[99])}", ms(r.threshold_ms), r.verdict.upper())
        )  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for n, line in enumerate(lines):
        cells = [
            c.ljust(w) if i < 2 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def chart(
    a: list[report.Sample], b: list[report.Sample], rows: list[Row], labels: tuple[str, str],
    path: Path,
) -> Path:  # fmt: skip
    """Both runs' latency distributions overlaid, one panel per operation (log ms)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.4 * len(rows)), squeeze=False)
    for ax, row in zip(axes[:, 0], rows, strict=True):
        for samples, label, color in ((a, labels[0], "tab:blue"), (b, labels[1], "tab:red")):
            values = np.sort([s.ms for s in samples if s.kind == row.driver and s.name == row.name])
            if values.size == 0:
                continue
            ys = np.arange(1, values.size + 1) / values.size * 100
            ax.step(values, ys, where="post", color=color, label=label, linewidth=1.2)
            ax.axvline(nearest_rank(values, 95), color=color, linestyle=":", linewidth=1)
        ax.axhline(95, color="grey", linewidth=0.6)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.set_ylabel("% of requests")
        ax.set_title(f"{row.name} ({row.driver}): {row.verdict}", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[-1, 0].set_xlabel("latency, ms (log); dotted: each run's p95")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def compare_capacity(
    a: dict[str, Any], b: dict[str, Any], threshold_pct: float
) -> tuple[str, list[str]]:
    """Knee against knee: (verdict, printed lines)."""
    ka, kb = a.get("knee"), b.get("knee")
    lines = []
    for label, knee in (("A", ka), ("B", kb)):
        lines.append(
            f"{label}: knee "
            + (
                "none (the first step already missed)"
                if knee is None
                else f"{knee['users']} users, {knee['ops_s']} ops/s"
            )
        )
    oa = ka["ops_s"] if ka else 0.0
    ob = kb["ops_s"] if kb else 0.0
    if ob < oa * (1 - threshold_pct / 100):
        verdict = WORSE
    elif ob > oa * (1 + threshold_pct / 100) and oa > 0:
        verdict = BETTER
    else:
        verdict = SAME
    lines.append(f"knee ops/s B vs A: {ob} vs {oa}: {verdict.upper()}")
    return verdict, lines


def main(args: argparse.Namespace) -> int:
    """The ``compare`` command; its exit status (0 none worse, 1 worse, 2 not compared)."""
    try:
        return _compare(args)
    except CompareError as exc:
        print(f"compare: {exc}")
        return 2


def _compare(args: argparse.Namespace) -> int:
    a, b = load_summary(args.baseline), load_summary(args.candidate)
    kinds = (a.get("kind", "run"), b.get("kind", "run"))
    if kinds[0] != kinds[1]:
        raise CompareError(f"a {kinds[0]} report cannot be compared with a {kinds[1]} report")
    differences = settings_differences(a, b)
    if differences and not args.force:
        raise CompareError(
            "refused: the runs' settings differ (--force to compare anyway):\n  "
            + "\n  ".join(differences)
        )
    labels = (
        f"A {args.baseline.name} ({str(a.get('environment', {}).get('commit', '?'))[:10]})",
        f"B {args.candidate.name} ({str(b.get('environment', {}).get('commit', '?'))[:10]})",
    )
    print(labels[0])
    print(labels[1])
    if differences:
        print("settings differ (--force):\n  " + "\n  ".join(differences))
    out = args.out or ROOT / "reports" / ("compare-" + datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))
    out.mkdir(parents=True, exist_ok=True)
    if kinds[0] == "capacity":
        verdict, lines = compare_capacity(a, b, args.threshold_pct)
        print("\n".join(lines))
        result = {"kind": "capacity", "a": str(args.baseline), "b": str(args.candidate),
                  "knee": [a.get("knee"), b.get("knee")], "verdict": verdict}  # fmt: skip
        (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
        sections = ["<pre>" + "\n".join(lines) + "</pre>"]
        (out / "report.html").write_text(html.page("Capacity: B against A", verdict, sections))
        print(f"verdict: {verdict.upper()}   (report in {out})")
        return 1 if verdict == WORSE else 0
    samples = []
    for directory in (args.baseline, args.candidate):
        path = directory / report.SAMPLES_FILE
        if not path.exists():
            raise CompareError(f"{directory}: no {report.SAMPLES_FILE} (per-request samples)")
        samples.append(report.load_samples(path))
    rows = compare_samples(
        samples[0], samples[1], threshold_pct=args.threshold_pct,
        threshold_ms=args.threshold_ms, resamples=args.resamples, confidence=args.confidence,
    )  # fmt: skip
    verdict = WORSE if any(r.verdict == WORSE for r in rows) else SAME
    if verdict == SAME and any(r.verdict == BETTER for r in rows):
        verdict = BETTER
    table = format_rows(rows)
    throughput = (
        f"throughput ops/s: A {a.get('throughput_ops_s')}, B {b.get('throughput_ops_s')}; "
        f"task errors: A {a.get('task_errors', 0)}, B {b.get('task_errors', 0)}"
    )
    print()
    print(table)
    print(throughput)
    method = (
        f"p95 verdict: worse/better when the {args.confidence:g}% bootstrap interval of B-A "
        f"({args.resamples} resamples of each run's requests) lies wholly beyond "
        f"max({args.threshold_pct:g}% of A's p95, {args.threshold_ms:g} ms); "
        "worse also on new failed requests"
    )
    print(method)
    result = {
        "kind": "run", "a": str(args.baseline), "b": str(args.candidate),
        "method": method, "operations": [r.as_json() for r in rows],
        "throughput_ops_s": [a.get("throughput_ops_s"), b.get("throughput_ops_s")],
        "task_errors": [a.get("task_errors", 0), b.get("task_errors", 0)],
        "settings_differ": differences, "verdict": verdict,
    }  # fmt: skip
    (out / "compare.json").write_text(json.dumps(result, indent=2) + "\n")
    chart(samples[0], samples[1], rows, labels, out / "compare.png")
    columns = ["driver", "name", "count", "failures", "p50_ms", "p95_ms", "p95_diff_ms",
               "p95_diff_ci_ms", "p99_ms", "threshold_ms", "verdict"]  # fmt: skip
    sections = [
        f"<p>{escape(labels[0])}<br>{escape(labels[1])}</p>",
        html.table([r.as_json() for r in rows], columns),
        f"<p>{escape(throughput)}</p><p>{escape(method)}</p>",
        html.image(out / "compare.png"),
    ]
    (out / "report.html").write_text(
        html.page("Release comparison: B against A", verdict, sections)
    )
    print(f"verdict: {verdict.upper()}   (report in {out})")
    return 1 if verdict == WORSE else 0

"""``python -m loadtests compare``: verdicts, refusal of different settings, files.

Report directories are built here from drawn samples (no server, no Locust):
what is tested is the comparison, not a load run.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from loadtests.cli import main
from loadtests.harness.report import SAMPLES_FILE, Sample, write_samples
from loadtests.release.compare import BETTER, SAME, WORSE, compare_samples

SETTINGS: dict[str, Any] = {
    "users": 100, "mode": "paced", "rate": 1.0, "weights": "20,3,2,1", "driver": "store",
    "pool": [10, 20], "seed": {"messages": 20000}, "targets_p95_ms": {"add_message": 50.0},
    "database_kind": "scratch, PostgreSQL 18",
}  # fmt: skip


def _samples(seed: int, n: int = 2000, add_ms: float = 0.0) -> list[Sample]:
    """Lognormal latencies around 2 ms for two operations; ``add_ms`` slows add_message."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append(Sample(i * 0.01, "store", "get_history", rng.lognormvariate(0.7, 0.4), False))
        ms = rng.lognormvariate(0.7, 0.4) + add_ms
        out.append(Sample(i * 0.01, "store", "add_message", ms, False))
    return out


def _report(directory: Path, samples: list[Sample], **settings: Any) -> Path:
    directory.mkdir()
    summary = {"kind": "run", "settings": {**SETTINGS, **settings}, "throughput_ops_s": 200.0}
    (directory / "summary.json").write_text(json.dumps(summary))
    write_samples(samples, 0.0, directory / SAMPLES_FILE)
    return directory


def _verdicts(a: list[Sample], b: list[Sample]) -> dict[str, str]:
    rows = compare_samples(a, b, threshold_pct=10, threshold_ms=1.0, resamples=300)
    return {r.name: r.verdict for r in rows}


def test_two_draws_of_one_distribution_are_the_same() -> None:
    """Independent samples of the same latencies: every operation is "same"."""
    assert _verdicts(_samples(1), _samples(2)) == {"get_history": SAME, "add_message": SAME}


def test_a_slower_operation_is_worse_and_only_it() -> None:
    """add_message 3 ms slower on every request: worse there, same elsewhere."""
    verdicts = _verdicts(_samples(1), _samples(2, add_ms=3.0))
    assert verdicts == {"get_history": SAME, "add_message": WORSE}


def test_a_faster_operation_is_better() -> None:
    """The slowed run as baseline: the normal one is better on add_message."""
    assert _verdicts(_samples(1, add_ms=3.0), _samples(2))["add_message"] == BETTER


def test_the_interval_holds_the_difference() -> None:
    """The p95 difference lies inside its bootstrap interval."""
    (row,) = [
        r
        for r in compare_samples(
            _samples(1),
            _samples(2, add_ms=3.0),
            threshold_pct=10,
            threshold_ms=1,
            resamples=300,
        )
        if r.name == "add_message"
    ]
    low, high = row.ci[95]  # type: ignore[misc]
    assert row.diff[95] is not None and low <= row.diff[95] <= high
    assert 2.0 < low and high < 4.5


def test_new_failures_are_worse() -> None:
    """Failed requests in B where A had none make the operation worse."""
    b = [
        Sample(s.t, s.kind, s.name, s.ms, s.name == "get_history" and i < 10)
        for i, s in enumerate(_samples(2))
    ]
    assert _verdicts(_samples(1), b)["get_history"] == WORSE


def test_cli_exit_status_and_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """compare exits 0 on "same", 1 on "worse", and writes json, chart and report.html."""
    a = _report(tmp_path / "a", _samples(1))
    same = _report(tmp_path / "same", _samples(2))
    slow = _report(tmp_path / "slow", _samples(3, add_ms=3.0))
    assert main(["compare", str(a), str(same), "--out", str(tmp_path / "c1")]) == 0
    assert main(["compare", str(a), str(slow), "--out", str(tmp_path / "c2")]) == 1
    result = json.loads((tmp_path / "c2" / "compare.json").read_text())
    assert result["verdict"] == WORSE
    assert {op["name"]: op["verdict"] for op in result["operations"]}["add_message"] == WORSE
    assert (tmp_path / "c2" / "compare.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "c2" / "report.html").read_text()
    assert "verdict: WORSE" in capsys.readouterr().out


def test_different_settings_are_refused_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs at different users are not compared (exit 2, the setting named); --force does."""
    a = _report(tmp_path / "a", _samples(1))
    b = _report(tmp_path / "b", _samples(2), users=200)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "c")]) == 2
    assert "users: 100 vs 200" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--force", "--out", str(tmp_path / "c")]) == 0


def test_capacity_reports_compare_knee_against_knee(tmp_path: Path) -> None:
    """Two capacity reports: a lower knee is worse."""
    for name, ops in (("a", 400.0), ("b", 200.0)):
        (tmp_path / name).mkdir()
        summary = {"kind": "capacity", "settings": {"steps": [1, 2]},
                   "knee": {"users": 1, "ops_s": ops}}  # fmt: skip
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
    args = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "c")]
    assert main(args) == 1
    assert (
        main(["compare", str(tmp_path / "b"), str(tmp_path / "a"), "--out", str(tmp_path / "d")])
        == 0
    )

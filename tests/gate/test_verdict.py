"""The deterministic guards' verdict: what regressed, where, by how much, and
the baseline's date, in one screen."""

from __future__ import annotations

import pytest

from loadtests.gate.verdict import Finding, report

RECORDED = {"date": "2026-12-04 18:00 UTC", "platform": "Linux", "python": "3.11.7",
            "postgresql": "18.1"}  # fmt: skip


def test_failure_names_operation_measure_change_and_baseline_date(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A figure over its limit is printed with its operation, measure and change."""
    findings = [
        Finding("get_history", "client instructions/call", 800_000, 1_200_000, 824_000, "here"),
        Finding("add_message", "client instructions/call", 200_000, 201_000, 206_000, "here"),
    ]
    assert report("client cost", findings, RECORDED) == 1
    out = capsys.readouterr().out
    assert "2026-12-04 18:00 UTC" in out
    assert "get_history" in out and "+50.0%" in out and "add_message" not in out
    assert len(out.splitlines()) <= 24


def test_new_trigger_fails_whatever_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """A note (a new trigger, plan node or index) fails without a number."""
    findings = [Finding("add_message", "new trigger", 0, 0, 0, "here", "slow on messages")]
    assert report("server work", findings, RECORDED) == 1
    assert "add_message" in capsys.readouterr().out


def test_within_limits_passes_and_shows_the_largest_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """All within limits: PASS and the largest change seen."""
    findings = [Finding("get_history", "shared buffers", 7, 8, 12, "here")]
    assert report("server work", findings, RECORDED) == 0
    assert "largest change +14.29%" in capsys.readouterr().out

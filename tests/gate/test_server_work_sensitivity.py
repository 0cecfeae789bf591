"""The server-work guard (loadtests/gate/server_work.py) passes unchanged code
and fails each server-side regression of loadtests/gate/regressions.py, naming
the operation and the measure. Each run is a process of its own: the
regressions patch asyncpg's classes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devdb import ServerInfo

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _check(server: ServerInfo, regression: str | None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "loadtests", "gate", "server-work", "check"]
    if regression:
        command += ["--regression", regression]
    return subprocess.run(
        command,
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": server.url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_unchanged_code_passes_the_server_work_budget(pg_server: ServerInfo) -> None:
    """No regression: every figure within the committed budget."""
    done = _check(pg_server, None)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "PASS" in done.stdout and "baseline of" in done.stdout


@pytest.mark.parametrize(
    ("regression", "expected"),
    [
        ("server-trigger", "add_message                      new trigger"),
        ("over-fetch", "get_history                      rows returned"),
        ("index-dropped", "get_history                      new index"),
        ("round-trip", "statements                 sends ['SELECT 1'"),
        ("lock-held-longer", "add_message                      statements"),
    ],
)
def test_server_regression_fails_the_server_work_budget(
    pg_server: ServerInfo, regression: str, expected: str
) -> None:
    """Each server-side regression fails, naming the operation and the measure."""
    done = _check(pg_server, regression)
    assert done.returncode == 1, done.stdout + done.stderr[-2000:]
    assert expected in done.stdout, done.stdout

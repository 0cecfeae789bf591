"""No test can hang: with the pool's order broken (newest waiter first) the
pool tests used to wait forever; the per-test timeout (pyproject.toml) turns
that into a failure naming the test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loadtests.gate.regressions import ENV

ROOT = Path(__file__).resolve().parents[2]


def test_a_hung_pool_test_fails_by_name_within_its_timeout() -> None:
    """The newest-waiter-first pool makes test_pool.py fail, named, not hang."""
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-p", "loadtests.gate.regressions", "tests/unit/test_pool.py", "--timeout=3"],
        cwd=ROOT,
        env={**os.environ, ENV: "pool-newest-first"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout[-2000:]
    assert "Timeout (>3.0s) from pytest-timeout" in done.stdout
    assert (
        "FAILED tests/unit/test_pool.py::"
        "test_returned_item_goes_to_the_oldest_waiter_not_to_a_barging_caller" in done.stdout
    )

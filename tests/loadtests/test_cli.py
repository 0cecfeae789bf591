"""``python -m loadtests``'s option values are checked before anything runs (no database)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from loadtests.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["run", "--users", "0"], "--users"),
        (["run", "--duration", "-1"], "--duration"),
        (["run", "--duration", "0"], "--duration"),
        (["run", "--warmup", "-1"], "--warmup"),
        (["run", "--spawn-rate", "0"], "--spawn-rate"),
        (["run", "--rate", "0"], "--rate"),
        (["run", "--processes", "0"], "--processes"),
        (["run", "--pool-size", "0"], "--pool-size"),
        (["run", "--messages", "-5"], "--messages"),
        (["run", "--weights", "1,2"], "--weights"),
        (["run", "--metrics-port", "70000"], "--metrics-port"),
        (["run", "--users", "ten"], "--users"),
        (["honesty", "--duration", "-1"], "--duration"),
        (["gate", "check", "--duration", "0"], "--duration"),
        (["gate", "check", "--users", "1"], "--users"),
    ],
)
def test_bad_option_value_is_one_error_line_and_exit_2(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A value the run cannot use stops it at once: exit 2, one line naming the option."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(argv)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("python -m loadtests ") and f"argument {option}" in lines[0]


def test_good_values_parse() -> None:
    """The documented defaults and the values make loadtest and the gate use parse."""
    args = build_parser().parse_args(["run", "--duration", "10", "--warmup", "0"])
    assert (args.users, args.duration, args.warmup) == (100, 10.0, 0.0)
    gate = build_parser().parse_args(["gate", "prove", "slow-query", "--delay-from-latest"])
    assert gate.prove_command == "slow-query" and gate.duration == 60.0


def test_users_zero_exits_2_from_the_command_line() -> None:
    """``python -m loadtests run --users 0`` exits 2 at once (it used to run, then FAIL)."""
    proc = subprocess.run(
        [sys.executable, "-m", "loadtests", "run", "--users", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "python -m loadtests run: error: argument --users: must be at least 1, got 0"
    )

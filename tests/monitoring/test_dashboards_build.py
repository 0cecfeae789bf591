"""The committed dashboard JSON is exactly what dashboards/build.py generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

DASHBOARDS = Path(__file__).resolve().parents[2] / "dashboards"


def _load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboards_build", DASHBOARDS / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_dashboards_match_the_generator() -> None:
    """Every dashboard file equals build.py's output: edit the script, not the JSON."""
    expected = _load_build().rendered()
    committed = {path.name for path in DASHBOARDS.glob("*.json")}
    assert committed == set(expected), "a dashboard file without a generator, or the reverse"
    stale = [name for name, text in expected.items() if (DASHBOARDS / name).read_text() != text]
    assert not stale, f"regenerate with `python dashboards/build.py`: {stale} differ"

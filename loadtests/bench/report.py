"""Plain tables and the report directory (``reports/bench-<name>-<timestamp>/``)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPORTS = Path(__file__).resolve().parents[2] / "reports"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table that also reads as plain text (columns padded)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [
        "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + " |")
    return "\n".join(lines)


def verdict_cell(ok: bool) -> str:
    """A target's cell: "yes", or "NO" in capitals so a miss stands out."""
    return "yes" if ok else "NO"


def report_dir(name: str, base: Path | None = None) -> Path:
    """A new, empty ``bench-<name>-<UTC timestamp>`` directory under ``base``."""
    base = REPORTS if base is None else base
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = base / f"bench-{name}-{stamp}"
    n = 1
    while path.exists():  # two runs in one second (tests)
        n += 1
        path = base / f"bench-{name}-{stamp}-{n}"
    path.mkdir(parents=True)
    return path


def write_report(directory: Path, results: dict[str, Any], text: str) -> None:
    """``results.json`` and ``table.md`` in ``directory``."""
    (directory / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (directory / "table.md").write_text(text + "\n")


def publish(directory: Path, results: dict[str, Any], text: str) -> int:
    """Write the report, print its table and where it went; the command's exit status."""
    write_report(directory, results, text)
    print(text)
    print(f"\nreport: {directory}")
    return 0

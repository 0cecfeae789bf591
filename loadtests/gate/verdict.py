"""What a deterministic guard prints: one line per figure over its limit
(operation, measure, baseline, measured, change, where to look), the
baseline's date and machine, and the verdict; all in one screen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: Lines of passing figures shown below the failures (the largest changes).
QUIET_SHOWN = 5


@dataclass(frozen=True)
class Finding:
    """One operation's figure for one measure, and its limit."""

    operation: str
    measure: str
    baseline: float
    measured: float
    limit: float
    where: str
    #: Set for a change that is not a number (a new trigger, a new plan node).
    note: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.note) or self.measured > self.limit

    @property
    def change(self) -> float:
        if self.baseline == 0:
            return 0.0 if self.measured == 0 else float("inf")
        return self.measured / self.baseline - 1

    def line(self) -> str:
        if self.note:
            return f"{self.operation:32} {self.measure:26} {self.note}"
        change = "new" if self.change == float("inf") else f"{self.change:+.1%}"
        return (
            f"{self.operation:32} {self.measure:26} {self.baseline:>12,.0f} -> "
            f"{self.measured:>12,.0f} {change:>8} (limit {self.limit:,.0f})"
        )


def report(guard: str, findings: list[Finding], recorded: dict[str, Any]) -> int:
    """Print the verdict of ``guard``; exit status 0 (pass) or 1 (fail)."""
    failed = [f for f in findings if f.failed]
    print(
        f"== {guard}: baseline of {recorded.get('date', '?')} on "
        f"{recorded.get('platform', '?')}, Python {recorded.get('python', '?')}, "
        f"PostgreSQL {recorded.get('postgresql', '?')}"
    )
    if failed:
        print(f"FAIL: {len(failed)} figure(s) over the limit")
        for f in failed[:15]:
            print("  " + f.line())
        if len(failed) > 15:
            print(f"  ... and {len(failed) - 15} more")
        print("where to look: " + "; ".join(sorted({f.where for f in failed})))
        return 1
    quiet = sorted(findings, key=lambda f: f.change, reverse=True)[:QUIET_SHOWN]
    largest = quiet[0].change if quiet else 0.0
    print(f"PASS: {len(findings)} figures within their limits; largest change {largest:+.2%}")
    for f in quiet:
        print("  " + f.line())
    return 0

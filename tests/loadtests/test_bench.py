"""``python -m loadtests bench``: each benchmark, tiny, on the test server.

Each run is a second or two (a handful of sessions, sub-second rounds, a few
hundred seeded messages). The checks are about structure (counts, ratios,
files), never about speed: timings on a shared machine prove nothing.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest

from chat_storage import Settings
from devdb import ServerInfo
from loadtests.bench.pool import sample_in_use
from loadtests.bench.sessions import OPS_PER_TURN
from loadtests.cli import main
from loadtests.core.backends import Handoff, StoreBackend

TINY = ["--seconds", "0.4", "--warmup", "0.1"]


def run_bench(pg_server: ServerInfo, tmp_path: Path, name: str, *options: str) -> dict[str, Any]:
    """Run one benchmark; its results.json (after checking both files exist)."""
    status = main(
        ["bench", name, *options, "--server-url", pg_server.url, "--reports-dir", str(tmp_path)]
    )
    assert status == 0
    (directory,) = tmp_path.glob(f"bench-{name}-*")
    assert "|--" in (directory / "table.md").read_text()
    results: dict[str, Any] = json.loads((directory / "results.json").read_text())
    assert results["benchmark"] == name
    return results


def finite_positive(value: Any) -> bool:
    return isinstance(value, float | int) and math.isfinite(value) and value > 0


def check_comparison(results: dict[str, Any], names: tuple[str, str]) -> None:
    assert [level["sessions"] for level in results["levels"]] == [2, 3]
    for level in results["levels"]:
        assert set(level["variants"]) == set(names)
        for variant in level["variants"].values():
            assert variant["ops"] > 0
            assert finite_positive(variant["cpu_us_per_op"])
            assert variant["latency_ms"]["get_history"]["count"] > 0
            assert variant["latency_ms"]["add_message"]["count"] > 0
        assert finite_positive(level["ratios"]["ops_per_second"])
        assert finite_positive(level["ratios"]["cpu_per_op"])
        assert {"ops", "cpu", "target"} <= set(level["targets_met"])
        assert all(isinstance(met, bool) for met in level["targets_met"].values())


def test_driver_compares_store_with_raw(pg_server: ServerInfo, tmp_path: Path) -> None:
    """driver: both variants measured at each level, ratios and a profile written."""
    results = run_bench(
        pg_server, tmp_path, "driver",
        "--sessions", "2,3", "--rounds", "2", "--messages", "300", "--profile", *TINY,
        "--lead-in", "0.1",
    )  # fmt: skip
    check_comparison(results, ("store", "raw"))
    assert all(level["cpu_judged"] == "closed_loop" for level in results["levels"])
    profile = results["profile_cpu_us_per_op"]
    assert set(profile) == {"store", "raw", "layers_us_per_call"}
    assert "sqlalchemy pool" in profile["store"]
    assert "pool lend + give back (ChatStore, no listeners)" in profile["layers_us_per_call"]
    assert (next(tmp_path.glob("bench-driver-*")) / "profile.txt").stat().st_size > 0


def test_instrumentation_records_every_operation(pg_server: ServerInfo, tmp_path: Path) -> None:
    """instrumentation: on/off ratios in a closed loop and at equal load, and "on"
    made one span and one sample per operation."""
    results = run_bench(
        pg_server, tmp_path, "instrumentation",
        "--sessions", "2,3", "--rounds", "1", "--messages", "300", *TINY,
        "--sample-ratio", "1", "--processor", "simple", "--equal-load", "0.5", "--lead-in", "0.1",
    )  # fmt: skip
    check_comparison(results, ("on", "off"))
    for level in results["levels"]:
        equal = level["equal_load"]
        # Paced at half the slower variant's closed-loop rate: both serve that load.
        slower = min(v["ops_per_second"] for v in level["variants"].values())
        expected = 0.5 * slower / level["sessions"] / OPS_PER_TURN
        assert equal["pace_turns_per_session"] == pytest.approx(expected, abs=0.1)
        for variant in equal["variants"].values():
            assert variant["ops"] > 0
        assert finite_positive(equal["cpu_per_op"])
        assert finite_positive(equal["served"])
        assert "cpu_equal_load" in level["targets_met"]
        assert level["cpu_judged"] == "equal_load"
    assert results["spans_exported"] > 0
    assert results["spans_exported"] == results["operations_observed"]


def test_instrumentation_duet_runs_both_variants_in_their_own_processes(
    pg_server: ServerInfo, tmp_path: Path
) -> None:
    """--duet: both variants at once, each in a spawned process on half of the
    conversations; "on" there still made one span and one sample per operation,
    and reported them back."""
    results = run_bench(
        pg_server, tmp_path, "instrumentation", "--duet",
        "--sessions", "2,3", "--rounds", "2", "--messages", "300", *TINY,
        "--sample-ratio", "1", "--processor", "simple", "--equal-load", "0.5", "--lead-in", "0.1",
    )  # fmt: skip
    assert results["duet"] is True
    check_comparison(results, ("on", "off"))
    for level in results["levels"]:
        for variant in level["equal_load"]["variants"].values():
            assert variant["ops"] > 0
        assert len(level["ratios"]["cpu_per_op_by_round"]) == 2
    assert results["spans_exported"] > 0
    assert results["spans_exported"] == results["operations_observed"]


def test_instrumentation_calibrates_with_known_busy_work(
    pg_server: ServerInfo, tmp_path: Path
) -> None:
    """--busy-us: the plain store plus a known cost per operation, against the plain store."""
    results = run_bench(
        pg_server, tmp_path, "instrumentation",
        "--sessions", "2,3", "--rounds", "1", "--messages", "300", *TINY,
        "--busy-us", "5", "--pace", "50", "--lead-in", "0.1",
    )  # fmt: skip
    check_comparison(results, ("busy 5 us", "off"))
    assert results["operations_observed"] == 0  # neither variant has metrics


def test_network_counts_round_trips(pg_server: ServerInfo, tmp_path: Path) -> None:
    """network: each operation's p50 with and without the proxy, in round trips."""
    results = run_bench(
        pg_server, tmp_path, "network",
        "--sessions", "2", "--rate", "10", "--rounds", "1", "--seconds", "0.5",
        "--messages", "300", "--delay-ms", "2",
    )  # fmt: skip
    assert finite_positive(results["select1_p50_ms"]["proxied"])
    for op in ("get_history", "add_message"):
        figures = results["operations"][op]
        assert figures["count"] > 0
        assert figures["expected_ms"] == pytest.approx(figures["p50_direct_ms"] + 4, abs=0.002)
        assert figures["round_trips"] is not None


def test_pool_reports_wait_and_sizing(pg_server: ServerInfo, tmp_path: Path) -> None:
    """pool: p95, pool wait from the histogram and connections in use, per pool and level."""
    results = run_bench(
        pg_server, tmp_path, "pool",
        "--sessions", "3,5", "--pools", "1+1,3+2", "--rate", "5", "--messages", "300",
        "--seconds", "0.5", "--warmup", "0.2",
    )  # fmt: skip
    runs = results["runs"]
    assert [(r["sessions"], r["pool"]) for r in runs] == [
        (3, "1+1"), (3, "3+2"), (5, "1+1"), (5, "3+2"),
    ]  # fmt: skip
    for run in runs:
        assert run["ops"] > 0
        assert run["pool_wait"]["count"] > 0
        # Sampled every 5 ms: a half-second run at this load can miss every
        # checkout, so only the bounds are certain here (the sampler itself is
        # tested below); Little's law's figure is computed, not sampled.
        capacity = sum(int(n) for n in run["pool"].split("+"))
        in_use = run["connections_in_use"]
        assert 0 <= in_use["p95"] <= in_use["max"] <= capacity
        assert run["busy_connections"] > 0
        assert isinstance(run["connects"], int) and run["connects"] >= 0
    assert results["max_connections"] > 0
    table = next(tmp_path.glob("bench-pool-*")).joinpath("table.md").read_text()
    assert "3 sessions: " in table and "5 sessions: " in table  # a verdict per level


async def test_in_use_sampler_counts_held_connections(database_url: str) -> None:
    """The pool benchmark's sampler sees a held connection in every sample, and
    none once it is back."""
    backend = StoreBackend(database_url, name="sampled", pool_size=2, max_overflow=1)
    await backend.open()
    try:
        held = await backend.store.engine.connect()
        samples: list[int] = []
        sampler = asyncio.create_task(sample_in_use(backend, samples))
        await asyncio.sleep(0.03)
        sampler.cancel()
        assert samples and min(samples) == max(samples) == 1
        await held.close()
        after: list[int] = []
        sampler = asyncio.create_task(sample_in_use(backend, after))
        await asyncio.sleep(0.01)
        sampler.cancel()
        assert after and max(after) == 0
    finally:
        await backend.close()


@pytest.mark.parametrize("idle", [None, 0.0, 5.0])
async def test_store_backend_passes_the_overflow_idle_timeout(
    database_url: str, idle: float | None
) -> None:
    """``pool --overflow-idle-timeout`` reaches the engine's pool (None: the default)."""
    backend = StoreBackend(
        database_url, name="idle", pool_size=1, max_overflow=1, overflow_idle_timeout=idle
    )
    await backend.open()
    try:
        pool: Any = backend.store.engine.sync_engine.pool
        expected = Settings(database_url=database_url).pool_overflow_idle_timeout
        assert pool.overflow_idle_timeout == (expected if idle is None else idle)
    finally:
        await backend.close()


def test_scale_grows_the_table(pg_server: ServerInfo, tmp_path: Path) -> None:
    """scale: p95 and the history query's buffers at each size; the ratio is computed."""
    results = run_bench(
        pg_server, tmp_path, "scale",
        "--sizes", "300,900", "--sessions", "3", "--rate", "5", "--seconds", "0.5",
        "--warmup", "0.2",
    )  # fmt: skip
    first, second = results["levels"]
    assert 300 <= first["messages"] < second["messages"]
    for level in (first, second):
        assert level["workload"]["latency_ms"]["get_history"]["count"] > 0
        for explained in level["explain_history"].values():
            assert explained["shared_hit"] + explained["shared_read"] > 0
    assert finite_positive(results["p95_ratio_largest_to_smallest"]["get_history"])


async def test_handoff_serves_waiters_in_arrival_order() -> None:
    """The raw reference's connection queue is first come, first served."""
    handoff: Handoff[str] = Handoff()
    waiters = [asyncio.ensure_future(handoff.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    for item in ("a", "b", "c"):
        handoff.release(item)
    late = asyncio.ensure_future(handoff.acquire())  # arrives after the hand-offs
    handoff.release("d")
    assert [await w for w in waiters] == ["a", "b", "c"]
    assert await late == "d"

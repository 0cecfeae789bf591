"""Where a run ran: the machine, the package and commit, the database server, the
round trip to it, and the CPU the server and the load generator used.

The round trip is measured once at the start of a run (a prepared ``SELECT 1``
on one connection, many times): against a database across a network, latency
that the round trip explains is the network's, the rest is the server's. The
server's CPU can be read only when the server runs on this machine (its
processes are visible in ``/proc``): it is then the postmaster's own time, its
finished children's (``cutime``/``cstime``) and its live children's, so
backends that close during a step are still counted.
"""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import asyncpg

from loadtests.core.stats import percentile

ROOT = Path(__file__).resolve().parents[2]
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def machine() -> dict[str, Any]:
    """This machine: OS, CPU model and count, Python."""
    model = ""
    with_cpuinfo = Path("/proc/cpuinfo")
    if with_cpuinfo.exists():
        for line in with_cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "os": platform.platform(),
        "cpu": model or platform.processor(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def package_version() -> str:
    """The installed chat-storage version (``unknown`` when not installed)."""
    try:
        return metadata.version("chat-storage")
    except metadata.PackageNotFoundError:
        return "unknown"


def commit() -> str:
    """The checkout's commit, ``+dirty`` when the tree has changes; ``unknown`` outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


async def _probe(url: str, n: int) -> dict[str, Any]:
    conn = await asyncpg.connect(url)
    try:
        stmt = await conn.prepare("SELECT 1")
        await stmt.fetchval()  # the first execution may still plan
        times = []
        for _ in range(n):
            started = time.perf_counter()
            await stmt.fetchval()
            times.append(1000 * (time.perf_counter() - started))
        times.sort()
        version = await conn.fetchval("SHOW server_version")
        max_connections = int(await conn.fetchval("SHOW max_connections"))
        reserved = int(await conn.fetchval("SHOW superuser_reserved_connections"))
        pid = int(await conn.fetchval("SELECT pg_backend_pid()"))
        database = await conn.fetchval("SELECT current_database()")
        postmaster = local_postmaster(pid)  # while the backend is alive
    finally:
        await conn.close()
    return {
        "rtt_ms": {
            "p50": round(percentile(times, 50) or 0.0, 3),
            "min": round(times[0], 3),
            "p95": round(percentile(times, 95) or 0.0, 3),
            "samples": n,
        },
        "server_version": str(version).split()[0],
        "max_connections": max_connections,
        "usable_connections": max_connections - reserved,
        "postmaster_pid": postmaster,
        "database_name": database,
    }


def probe_server(url: str, n: int = 50) -> dict[str, Any]:
    """The round trip to the server (``SELECT 1`` ``n`` times), its version and limits.

    Raises:
        OSError: the server cannot be reached (asyncpg's errors derive from it or
            from ``asyncpg.PostgresError``, which propagates as well).
    """
    return asyncio.run(_probe(url, n))


def _stat_ticks(pid: int, children: bool) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # After the command: state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def local_postmaster(backend_pid: int) -> int | None:
    """The postmaster's pid when the backend ``backend_pid`` runs on this machine."""
    try:
        command = Path(f"/proc/{backend_pid}/cmdline").read_bytes()
    except OSError:
        return None
    if b"postgres" not in command:  # the same pid on another machine: not ours
        return None
    return _parent(backend_pid)


class ServerCpu:
    """CPU seconds of a local PostgreSQL server (``postmaster`` None: not local).

    ``seconds()`` is None when the server is not on this machine.
    """

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster

    def seconds(self) -> float | None:
        """The server's CPU seconds so far (postmaster, finished and live children)."""
        if self.postmaster is None:
            return None
        total = _stat_ticks(self.postmaster, True)
        if total is None:
            return None
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _parent(int(entry.name)) == self.postmaster:
                total += _stat_ticks(int(entry.name), False) or 0
        return total / _CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of this process's finished children (the Locust processes)."""
    times = os.times()
    return times.children_user + times.children_system
